"""Sending days, warmup days, holidays and local windows -> UTC spans.

All the DST logic lives here. Instants are float seconds since the epoch (UTC).
Local wall-clock times are mapped to instants with two rules:

* a wall time that does not exist (clocks jump forward) maps to the first
  instant after the gap, so a window across the gap is just shorter and one
  inside it is empty;
* a wall time that exists twice (clocks go back) uses its first occurrence,
  and the repeated stretch is cut out of every window, so the repeated hour is
  never counted twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from .config import Account, Period, Schedule, parse_holiday_region
from .geometry import layout_spans

Span = tuple[float, float]


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _offset(tz: ZoneInfo, ts: float) -> float:
    off = datetime.fromtimestamp(ts, tz).utcoffset()
    assert off is not None
    return off.total_seconds()


def _transition(tz: ZoneInfo, lo: float, hi: float) -> float:
    """The first instant in (lo, hi] whose UTC offset differs from lo's (to 1 s)."""
    off_lo = _offset(tz, lo)
    while hi - lo > 1.0:
        mid = (lo + hi) / 2
        if _offset(tz, mid) == off_lo:
            lo = mid
        else:
            hi = mid
    # lo < T <= hi < lo + 1 and transitions fall on whole seconds: floor(hi) is T.
    # (round() could give T + 1, where the offset no longer changes.)
    return float(math.floor(hi))


def local_to_utc(tz: ZoneInfo, local: datetime) -> float:
    """A naive local wall time -> instant, by the module's two rules (fold=0 for repeats)."""
    aware = local.replace(tzinfo=tz, fold=0)
    ts = aware.timestamp()
    back = datetime.fromtimestamp(ts, tz).replace(tzinfo=None)
    if back == local:
        return ts
    # Non-existent: zoneinfo mapped it with the pre-gap offset, i.e. somewhere
    # past the gap. The gap started at the transition just before ``ts``.
    return _transition(tz, ts - 2 * 3600 - 1, ts)


@lru_cache(maxsize=4096)
def day_bounds(tzname: str, day: date) -> Span:
    """[first instant of the local day, first instant of the next)."""
    tz = zone(tzname)
    start = local_to_utc(tz, datetime.combine(day, time()))
    end = local_to_utc(tz, datetime.combine(day + timedelta(days=1), time()))
    return start, end


@lru_cache(maxsize=4096)
def repeated_spans(tzname: str, day: date) -> tuple[Span, ...]:
    """The second occurrences of wall times repeated on ``day`` (clocks going back)."""
    tz = zone(tzname)
    start, end = day_bounds(tzname, day)
    if _offset(tz, start) == _offset(tz, end - 1):
        return ()
    t = _transition(tz, start, end - 1)
    delta = _offset(tz, t - 1) - _offset(tz, t)
    if delta <= 0:
        return ()  # forward jump: nothing repeats
    return ((t, t + delta),)


def _subtract(spans: Iterable[Span], cuts: tuple[Span, ...]) -> list[Span]:
    out: list[Span] = []
    for s, e in spans:
        pieces = [(s, e)]
        for cs, ce in cuts:
            nxt = []
            for ps, pe in pieces:
                if ce <= ps or cs >= pe:
                    nxt.append((ps, pe))
                    continue
                if ps < cs:
                    nxt.append((ps, cs))
                if ce < pe:
                    nxt.append((ce, pe))
            pieces = nxt
        out.extend(p for p in pieces if p[1] > p[0])
    return out


def local_span_to_utc(tzname: str, day: date, start_s: float, end_s: float) -> list[Span]:
    """Seconds-of-local-day [start_s, end_s) on ``day`` -> instant spans."""
    tz = zone(tzname)
    midnight = datetime.combine(day, time())
    a = local_to_utc(tz, midnight + timedelta(seconds=start_s))
    b = local_to_utc(tz, midnight + timedelta(seconds=end_s))
    if b <= a:
        return []
    return _subtract([(a, b)], repeated_spans(tzname, day))


@lru_cache(maxsize=4096)
def period_spans(sched: Schedule, day: date) -> dict[str, tuple[Span, ...]]:
    """Each period's instant spans on ``day``, laid out as the planner places sends:
    shrunk where two periods touch so that the gap holds across them."""
    local = layout_spans(sched.periods, sched.effective_gap)
    out: dict[str, tuple[Span, ...]] = {}
    for name, spans in local.items():
        acc: list[Span] = []
        for s, e in spans:
            acc.extend(local_span_to_utc(sched.timezone, day, s, e))
        out[name] = tuple(acc)
    return out


def window_spans(sched: Schedule, day: date) -> list[Span]:
    """All of the account's windows (any period) on ``day``, unshrunk: where a retry may land."""
    out: list[Span] = []
    for p in sched.periods:
        out.extend(_period_raw_spans(sched.timezone, day, p))
    return sorted(out)


@lru_cache(maxsize=4096)
def _period_raw_spans(tzname: str, day: date, period: Period) -> tuple[Span, ...]:
    acc: list[Span] = []
    for s, e in period.windows:
        acc.extend(local_span_to_utc(tzname, day, s * 60.0, e * 60.0))
    return tuple(acc)


# ---------------------------------------------------------------- sending days


@lru_cache(maxsize=256)
def _holiday_set(region: str, year: int) -> frozenset[date]:
    import holidays

    country, subdiv = parse_holiday_region(region)
    return frozenset(holidays.country_holidays(country, subdiv=subdiv, years=[year]).keys())


def holiday_name(region: str, day: date) -> str | None:
    if not region:
        return None
    import holidays

    if day not in _holiday_set(region, day.year):
        return None
    country, subdiv = parse_holiday_region(region)
    return str(holidays.country_holidays(country, subdiv=subdiv, years=[day.year]).get(day))


def is_sending_day(sched: Schedule, day: date) -> bool:
    if day.weekday() not in sched.weekdays:
        return False
    return not (sched.holidays and day in _holiday_set(sched.holidays, day.year))


def why_not_sending(account: Account, day: date) -> str | None:
    """None on a sending day, else a short reason (weekend, holiday, before start_date)."""
    if day < account.start_date:
        return f"before start_date {account.start_date.isoformat()}"
    sched = account.schedule
    if day.weekday() not in sched.weekdays:
        return f"{day.strftime('%A')} is not one of the account's weekdays"
    name = holiday_name(sched.holidays, day)
    if name:
        return f"public holiday in {sched.holidays}: {name}"
    return None


def next_sending_day(account: Account, day: date, limit: int = 800) -> date | None:
    d = max(day, account.start_date)
    for _ in range(limit):
        if is_sending_day(account.schedule, d):
            return d
        d += timedelta(days=1)
    return None


def projected_warmup_day(account: Account, day: date) -> int:
    """Without history: the N of ``day`` as the Nth sending day since start_date
    (0 when ``day`` is not a sending day or comes before start_date)."""
    if day < account.start_date or not is_sending_day(account.schedule, day):
        return 0
    return _sending_days(account.schedule, account.start_date, day)


@lru_cache(maxsize=4096)
def _sending_days(sched: Schedule, start: date, day: date) -> int:
    """Sending days in [start, day]: counted once per (schedule, start, day), which a
    pool's accounts share (100,000 accounts counted 60 days each took 1.5 s)."""
    n = 0
    d = start
    one = timedelta(days=1)
    while d <= day:
        if is_sending_day(sched, d):
            n += 1
        d += one
    return n


def local_date(tzname: str, ts: float) -> date:
    return datetime.fromtimestamp(ts, zone(tzname)).date()


def to_local(tzname: str, ts: float) -> datetime:
    return datetime.fromtimestamp(ts, zone(tzname))


def iso_local(tzname: str, ts: float) -> str:
    return to_local(tzname, ts).isoformat(timespec="milliseconds")


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
