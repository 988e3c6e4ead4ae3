"""Shared fixtures (the real mail servers live in tests/rig/) and options.

``--long`` runs the long forms of the torture suite (tests/torture/): many more
kills, fuzz examples and faults, for the figures in the README. Without it (the
README's test command) each runs in its quick form."""

from __future__ import annotations

import os

import pytest

from tests.rig.fixtures import *  # noqa: F401,F403

# The tests query only servers on loopback: a daemon without [daemon] resolver makes no
# DNS or blocklist lookups (reputation.py), instead of asking the system's resolver.
os.environ.setdefault("WARMUPD_SYSTEM_RESOLVER", "off")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", default=False,
                     help="run the long forms of tests/torture (minutes to an hour)")


@pytest.fixture
def long_form(request: pytest.FixtureRequest) -> bool:
    """True under ``pytest --long``: the torture tests scale their counts up."""
    return bool(request.config.getoption("--long"))
