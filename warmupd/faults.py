"""Test-only fault points: make the daemon die or fail at one exact step.

``WARMUPD_FAULT`` names steps and what to do there, read once at start::

    WARMUPD_FAULT="firing.after_sending=kill"          # SIGKILL itself right there
    WARMUPD_FAULT="planning.rollover=raise*1"          # raise InjectedFault, once

Without the variable (production) every ``point()`` is one dict lookup that
finds nothing. The steps are named where ``point`` is called; ``STEPS`` lists
them so that a misspelt name fails at start instead of never firing.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "WARMUPD_FAULT"
STEPS = (
    "firing.after_sending",      # the `sending` mark is committed, nothing sent yet
    "firing.after_data_mark",    # the DATA mark is committed, DATA not yet issued
    "firing.after_server_ok",    # the server said 250 to the message; `sent` not committed
    "store.grouped_commit",      # inside a grouped commit's transaction, before COMMIT
    "store.plan_chunk",          # inside a plan chunk's transaction, before COMMIT
    "planning.rollover",         # a rollover has started, before its store work
    "daemon.reload",             # a reload has parsed the new config, before applying it
    "imap.action",               # an engagement action was done on the server, not yet committed
    "oauth.after_rotation",      # a rotated refresh token is committed, its access token not yet used
)


class InjectedFault(Exception):
    """The failure a ``raise`` fault point injects."""


_plan: dict[str, list[int | str]] = {}  # step -> [action, remaining count (-1: always)]
_lock = threading.Lock()


def load(value: str | None = None) -> None:
    """Read the fault plan (from ``WARMUPD_FAULT`` unless given); raise ValueError on a bad one."""
    _plan.clear()
    value = os.environ.get(ENV, "") if value is None else value
    for item in filter(None, (p.strip() for p in value.split(","))):
        step, _, action = item.partition("=")
        action, _, count = (action or "kill").partition("*")
        if step not in STEPS:
            raise ValueError(f"{ENV}: unknown step {step!r}; one of {', '.join(STEPS)}")
        if action not in ("kill", "raise"):
            raise ValueError(f"{ENV}: action must be kill or raise, got {action!r}")
        _plan[step] = [action, int(count) if count else -1]


def point(step: str) -> None:
    """Where ``step`` happens: do what the fault plan says, if anything (any thread)."""
    if not _plan:
        return
    with _lock:
        entry = _plan.get(step)
        if entry is None or entry[1] == 0:
            return
        if isinstance(entry[1], int) and entry[1] > 0:
            entry[1] -= 1
        action = entry[0]
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"injected fault at {step}")
