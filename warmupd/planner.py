"""The pure planning core: settings + local date + warmup day + rng -> the day's sends.

No I/O and no clock: the caller passes the random generator and, for a day
already under way, the instant from which to plan. Instants are float seconds
since the epoch (UTC), kept to the millisecond.

How a day is laid out (see ``plan_day``):

1. target = min(max, start + step * (day - 1)); for an account that replies
   over IMAP, part of it is left for replies.
2. The target is split across periods by weight (largest remainder).
3. Each period's sends are drawn uniformly inside its windows with at least
   the gap between them (the "stars and bars" trick: draw in a line shortened
   by (n-1) gaps, sort, then spread the gaps back in). Windows of different
   periods are shrunk where they touch (``config.layout_spans``) so the gap
   also holds across periods.
4. Jitter and micro jitter move each send, but only where the move keeps it in
   its window and min_gap from both neighbours: constraints are never traded
   for noise. Nothing lands on a whole second's grid or evenly spaced.
5. Recipients come from the pool (``recipients_for``).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TypedDict

from .calendar import is_sending_day, period_spans
from .config import Account
from .geometry import split_by_weight

Span = tuple[float, float]


@dataclass(frozen=True, slots=True)
class PlannedSend:
    at: float  # instant, epoch seconds UTC, millisecond precision
    period: str
    recipient: str
    message_id: str

    @property
    def at_utc(self) -> datetime:
        return datetime.fromtimestamp(self.at, UTC)


# Bulk construction for plan_day: the object PlannedSend(...) makes, slots set directly.
_new_send = object.__new__
_set_at = vars(PlannedSend)["at"].__set__
_set_period = vars(PlannedSend)["period"].__set__
_set_recipient = vars(PlannedSend)["recipient"].__set__
_set_message_id = vars(PlannedSend)["message_id"].__set__


def day_target(account: Account, warmup_day: int, graduated: bool = False) -> int:
    """The ramp's sends (new sends plus replies) for a warmup day; once the account has
    graduated (health.py), its ``maintenance_per_day`` (when set) instead."""
    maintenance = account.reputation.maintenance_per_day
    if graduated and maintenance > 0:
        return maintenance
    return account.schedule.ramp.target(warmup_day)


def new_send_target(account: Account, target: int) -> int:
    """The share of the target planned as new sends; the rest is left for
    replies when the account engages over IMAP."""
    if account.imap is None:
        return target
    return round(target / (1.0 + account.engagement.reply_rate))


def _clip(spans: Sequence[Span], not_before: float | None) -> list[Span]:
    if not_before is None:
        return list(spans)
    return [(max(s, not_before), e) for s, e in spans if e > not_before]


def _length(spans: Sequence[Span]) -> float:
    return sum(e - s for s, e in spans)


def remaining_fraction(account: Account, day: date, not_before: float) -> float:
    """Sum over periods of weight x (share of the period's window time still ahead)."""
    spans = period_spans(account.schedule, day)
    frac = 0.0
    for p in account.schedule.periods:
        full = _length(spans[p.name])
        if full > 0:
            frac += p.weight * _length(_clip(spans[p.name], not_before)) / full
    return frac


def remaining_target(account: Account, day: date, target: int, not_before: float | None,
                     already_sent: int = 0) -> int:
    """What is still to plan for a day: the whole target at its start, else the
    share of window time still ahead (pro rata) minus sends already made."""
    share = target if not_before is None else round(target * remaining_fraction(account, day, not_before))
    return max(0, share - already_sent)


def _place(rng: random.Random, spans: list[Span], n: int, gap: float) -> list[tuple[float, float, float]]:
    """``n`` instants drawn uniformly in ``spans`` at least ``gap`` apart, each with its span."""
    if n <= 0 or not spans:
        return []
    step = gap + 0.001  # room for the rounding to milliseconds
    total = _length(spans)
    # How many fit: per span, floor(len/step)+1; more than that is not placeable.
    cap = sum(int((e - s) // step) + 1 for s, e in spans)
    n = min(n, cap)
    free = total - (n - 1) * step
    while free < 0 and n > 0:
        n -= 1
        free = total - (n - 1) * step
    rnd = rng.random
    draws = sorted([rnd() * free for _ in range(n)])
    out: list[tuple[float, float, float]] = []
    idx = 0
    s, e = spans[0]
    offset = 0.0  # concatenated length before the current span
    for i, u in enumerate(draws):
        pos = u + i * step
        while pos - offset >= e - s and idx + 1 < len(spans):
            offset += e - s
            idx += 1
            s, e = spans[idx]
        t = s + min(pos - offset, e - s - 0.001)
        out.append((t, s, e))
    return out


def plan_times(account: Account, day: date, count: int, rng: random.Random,
               not_before: float | None = None) -> list[tuple[float, str]]:
    """``count`` instants for ``day`` with their periods, in time order."""
    sched = account.schedule
    spans = period_spans(sched, day)
    periods = sched.periods
    clipped = [_clip(spans[p.name], not_before) for p in periods]
    if not_before is None:
        weights = [p.weight for p in periods]
    else:
        weights = [p.weight * (_length(c) / full if (full := _length(spans[p.name])) else 0.0)
                   for p, c in zip(periods, clipped, strict=True)]
    counts = split_by_weight(count, weights)
    gap = sched.effective_gap
    placed: list[tuple[float, float, float, str]] = []
    for p, c, n in zip(periods, clipped, counts, strict=True):
        placed.extend((t, s, e, p.name) for t, s, e in _place(rng, c, n, gap))
    placed.sort()
    # Jitter, kept only where it leaves every constraint intact.
    jit, micro = sched.jitter, sched.micro_jitter
    rnd = rng.random
    out: list[tuple[float, str]] = []
    append = out.append
    prev = float("-inf")
    # Each send's right-hand neighbour is the next placed (unjittered) instant.
    nexts = [p[0] for p in placed]
    nexts.append(float("inf"))
    for (t, s, e, name), nxt in zip(placed, nexts[1:], strict=True):
        # Full jitter first, then micro jitter alone (the same draws a loop over
        # (jit, 0.0) makes), else the instant as placed.
        prop = round(t + (2 * rnd() - 1) * jit + (2 * rnd() - 1) * micro, 3)
        if s <= prop < e and prop - prev >= gap and nxt - prop >= gap:
            t = prop
        else:
            prop = round(t + (2 * rnd() - 1) * 0.0 + (2 * rnd() - 1) * micro, 3)
            if s <= prop < e and prop - prev >= gap and nxt - prop >= gap:
                t = prop
            else:
                t = round(t, 3)
                if t - prev < gap:  # rounding ate the spare millisecond
                    t = round(prev + gap + 0.0005, 3)
        if t % 60.0 == 0.0:  # never on a whole minute, but not at a constraint's cost
            for d in (0.137, -0.137, 0.001, -0.001):
                u = round(t + d, 3)
                if max(s, prev + gap) <= u < e and u <= nxt - gap:
                    t = u
                    break
        append((t, name))
        prev = t
    return out


def message_id(rng: random.Random, at: float, domain: str) -> str:
    return f"<{int(at * 1000):x}.{rng.getrandbits(64):016x}@{domain}>"


class Pool:
    """The accounts of the pool (sorted) and the day's walking order.

    Every sender uses the same order of offsets, so on a day when all send
    alike each member receives exactly as many as it sends, and a pair repeats
    only once a sender has gone round the whole pool."""

    def __init__(self, emails: Sequence[str]) -> None:
        self.emails = sorted(emails)
        self.index = {e: i for i, e in enumerate(self.emails)}
        self._offsets: dict[date, list[int]] = {}

    def __len__(self) -> int:
        return len(self.emails)

    def offsets(self, day: date) -> list[int]:
        offs = self._offsets.get(day)
        if offs is None:
            offs = list(range(1, len(self.emails)))
            random.Random(f"warmupd-pool-{day.isoformat()}-{len(self.emails)}").shuffle(offs)
            if len(self._offsets) > 8:
                self._offsets.clear()
            self._offsets[day] = offs
        return offs


def recipients_for(sender_index: int, count: int, pool: Sequence[str], extras: Sequence[str],
                   offsets: Sequence[int], start: int = 0) -> list[str]:
    """The recipients of a sender's sends number ``start`` .. ``start+count-1`` of the day.

    The cycle walks the pool by the day's offsets; the sender's own extra
    recipients are spread evenly through it."""
    n = len(pool)
    base = len(offsets)
    m = base + len(extras)
    if m == 0:
        return []
    if not extras:  # the common case: the walk alone (rank == position in the cycle)
        return [pool[(sender_index + offsets[(start + k) % base]) % n] for k in range(count)]
    # Extras sit at even intervals of the cycle so they are not all at its end.
    extra_at: dict[int, str] = {}
    if extras:
        step = max(1, m // len(extras))
        for k, x in enumerate(extras):
            extra_at[min(m - 1, k * step + step - 1)] = x
    out: list[str] = []
    for k in range(count):
        c = (start + k) % m
        extra = extra_at.get(c)
        if extra is not None:
            out.append(extra)
        else:
            rank = c - sum(1 for pos in extra_at if pos < c)
            out.append(pool[(sender_index + offsets[rank % base]) % n] if base else extras[k % len(extras)])
    return out


def plan_day(account: Account, day: date, warmup_day: int, rng: random.Random,
             pool: Pool, *, not_before: float | None = None, already_sent: int = 0,
             target: int | None = None, ids: random.Random | None = None) -> list[PlannedSend]:
    """The day's planned sends for ``account``, in time order.

    ``pool`` is every account of the pool; ``not_before`` plans only
    the rest of a day under way, counting ``already_sent`` against the target.
    ``ids`` draws the Message-IDs (``rng`` when None): a seeded plan drawn again
    for the same account-day must not hand out the same Message-IDs twice.
    """
    if day < account.start_date or warmup_day < 1 or not is_sending_day(account.schedule, day):
        return []
    if target is None:
        target = new_send_target(account, day_target(account, warmup_day))
    count = remaining_target(account, day, target, not_before, already_sent)
    if count <= 0:
        return []
    times = plan_times(account, day, count, rng, not_before)
    if account.email not in pool.index:  # a sender outside the pool sends to all of it
        pool = Pool([*pool.emails, account.email])
    recips = recipients_for(pool.index[account.email], len(times), pool.emails,
                            account.extra_recipients, pool.offsets(day), start=already_sent)
    if not recips:
        return []
    # Recipients in a random order across the day, so pairs don't follow the clock.
    rng.shuffle(recips)
    domain = account.domain
    getrandbits = (ids or rng).getrandbits
    out: list[PlannedSend] = []
    append = out.append
    for (t, name), r in zip(times, recips, strict=True):
        # PlannedSend(t, name, r, message_id(rng, t, domain)) with its slots set
        # directly: the frozen dataclass's __init__ costs twice as much.
        ps = _new_send(PlannedSend)
        _set_at(ps, t)
        _set_period(ps, name)
        _set_recipient(ps, r)
        _set_message_id(ps, f"<{int(t * 1000):x}.{getrandbits(64):016x}@{domain}>")
        append(ps)
    return out


class PlanStats(TypedDict):
    count: int
    per_period: dict[str, int]
    first: float | None
    last: float | None
    min_gap: float | None
    median_gap: float | None


def plan_stats(sends: Sequence[PlannedSend]) -> PlanStats:
    """Counts per period, first and last send, smallest and median gap (seconds)."""
    per: dict[str, int] = {}
    for s in sends:
        per[s.period] = per.get(s.period, 0) + 1
    times = sorted(s.at for s in sends)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    return {
        "count": len(sends),
        "per_period": per,
        "first": times[0] if times else None,
        "last": times[-1] if times else None,
        "min_gap": min(gaps) if gaps else None,
        "median_gap": statistics.median(gaps) if gaps else None,
    }
