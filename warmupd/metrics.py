"""The daemon's counters, kept in memory since start (rendered by commands.py)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0)


@dataclass
class Metrics:
    started: float
    transitions: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    lateness_counts: list[int] = field(default_factory=lambda: [0] * len(LATENESS_BUCKETS))
    lateness_sum: float = 0.0
    lateness_n: int = 0
    reloads: int = 0
    reload_failures: int = 0
    lost_races: int = 0  # state changes dropped because another change got there first
    loop_lag: float = 0.0

    def observe_lateness(self, seconds: float) -> None:
        for i, b in enumerate(LATENESS_BUCKETS):
            if seconds <= b:
                self.lateness_counts[i] += 1
        self.lateness_sum += seconds
        self.lateness_n += 1

    def sent_since_start(self) -> int:
        return sum(v for (_, s), v in self.transitions.items() if s == "sent")


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def family(name: str, kind: str, help_text: str,
           samples: Iterable[tuple[Mapping[str, object], object]]) -> Iterator[str]:
    """One metric family in Prometheus's text format: HELP, TYPE, a line per sample
    (``({label: value}, sample value)``, label values escaped), made as they are read
    (the caller paces a large family)."""
    yield f"# HELP {name} {help_text}"
    yield f"# TYPE {name} {kind}"
    for labels, value in samples:
        text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        yield f"{name}{{{text}}} {value}" if text else f"{name} {value}"
