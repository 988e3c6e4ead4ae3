"""warmupd: a self-hosted email warmup daemon."""

__version__ = "0.1.0"
