"""Planning geometry: how a day's sends fit into the period windows.

Pure arithmetic on minutes and seconds of the local day, with no time zones,
dates or randomness. Two callers must agree on it exactly: config validation
(``warmupd check`` refuses a ramp.max that cannot fit in the windows at the
gap) and the planner (which lays the sends out). Sharing one implementation
means that whatever the config accepts, the planner can place. It lives in
its own module so that neither of them imports the other for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Period(Protocol):
    """What geometry needs of a period (config.Period has it)."""

    @property
    def name(self) -> str: ...
    @property
    def windows(self) -> Sequence[tuple[int, int]]: ...

__all__ = ["layout_spans", "period_capacity", "split_by_weight"]


def period_capacity(windows_minutes: list[tuple[float, float]], gap: float) -> int:
    """How many sends at least ``gap`` seconds apart the planner places in these [start, end)
    spans (seconds). It lays the spans end to end and keeps gap + 1 ms between draws
    (``planner._place``), so this counts the same way: a send cannot sit on a window's
    end, and a span shorter than the gap adds no room of its own."""
    if gap <= 0:
        return 1 << 30
    total = sum(e - s for s, e in windows_minutes if e > s)
    return int(total // (gap + 0.001)) + 1 if total > 0 else 0


def split_by_weight(total: int, weights: list[float]) -> list[int]:
    """Largest-remainder split of ``total`` by ``weights`` (which need not sum to 1)."""
    wsum = sum(weights)
    if total <= 0 or wsum <= 0:
        return [0] * len(weights)
    quotas = [total * w / wsum for w in weights]
    counts = [int(q) for q in quotas]
    short = total - sum(counts)
    order = sorted(range(len(weights)), key=lambda i: (quotas[i] - counts[i], weights[i]), reverse=True)
    for i in order[:short]:
        counts[i] += 1
    return counts


def layout_spans(periods: Sequence[Period], gap: float) -> dict[str, list[tuple[float, float]]]:
    """Each period's windows in seconds of the local day, shrunk where another period's
    window comes within ``gap``: each side gives up half, so that two sends of
    different periods can never be closer than ``gap``. The planner and the
    feasibility check share this so that what `check` accepts, the planner can place."""
    spans = sorted((w[0] * 60.0, w[1] * 60.0, p.name) for p in periods for w in p.windows)
    out: dict[str, list[tuple[float, float]]] = {p.name: [] for p in periods}
    for i, (s, e, name) in enumerate(spans):
        if i > 0:
            ps, pe, pname = spans[i - 1]
            if pname != name and s - pe < gap:
                s += (gap - (s - pe)) / 2
        if i + 1 < len(spans):
            ns, ne, nname = spans[i + 1]
            if nname != name and ns - e < gap:
                e -= (gap - (ns - e)) / 2
        if e > s:
            out[name].append((s, e))
    return out
