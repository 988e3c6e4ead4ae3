"""The planner and the calendar: properties over many seeds, dates and zones, and DST days."""

from __future__ import annotations

import math
import random
from collections import Counter
from datetime import date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from warmupd import calendar as cal
from warmupd.config import Account, ConfigError, build_config
from warmupd.planner import PlannedSend, Pool, plan_day, plan_stats, remaining_target

ZONES = ["America/New_York", "Europe/London", "Australia/Lord_Howe", "America/Santiago",
         "Asia/Kathmandu", "Asia/Kolkata", "Pacific/Chatham"]
HOUR = 3600.0

# Schedules the properties run over (the values of [defaults]; all feasible).
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "per-hour": {"max_per_hour": 10, "min_gap": "2m"},
    "tight": {"min_gap": "10m", "jitter": "5m", "ramp": {"start": 5, "step": 5, "max": 30}},
    # Night windows cross every zone's DST transition (which all happen 00:00-04:00).
    "night": {
        "min_gap": "5m",
        "periods": {
            "night": {"windows": ["00:00-01:30", "01:30-04:00"], "weight": 0.5},
            "early": {"windows": ["04:00-06:00"], "weight": 0.2},
            "late": {"windows": ["22:00-24:00"], "weight": 0.3},
        },
        "ramp": {"start": 4, "step": 3, "max": 24},
    },
}


def config(n: int = 2, *, defaults: dict[str, Any] | None = None,
           account: dict[str, Any] | None = None) -> tuple[Account, ...]:
    """``n`` accounts a0..a(n-1)@example.com sharing [defaults]; ``account`` goes on the first."""
    accounts = []
    for i in range(n):
        acc: dict[str, Any] = {"email": f"a{i}@example.com", "start_date": date(2026, 1, 1),
                               "smtp": {"host": "mail.example.com", "password": "x"}}
        if i == 0 and account:
            acc.update(account)
        accounts.append(acc)
    data = {"defaults": defaults or {}, "accounts": accounts}
    return build_config(data, Path("/nonexistent/config.toml"), {}).accounts


@cache
def variant(name: str, tz: str, holidays: str = "") -> Account:
    return config(defaults={**VARIANTS[name], "timezone": tz, "holidays": holidays})[0]


POOL = Pool(["a0@example.com", "a1@example.com"])


def target_of(acc: Account, warmup_day: int) -> int:
    r = acc.schedule.ramp
    return min(r.max, r.start + r.step * (warmup_day - 1))


def local_minute(tz: str, at: float) -> tuple[date, float]:
    d = datetime.fromtimestamp(at, ZoneInfo(tz))
    return d.date(), d.hour * 60 + d.minute + (d.second + d.microsecond / 1e6) / 60


def check_plan(acc: Account, day: date, plan: list[PlannedSend]) -> None:
    """The rules every plan keeps, whatever the zone and the day."""
    sched = acc.schedule
    tz = sched.timezone
    periods = {p.name: p for p in sched.periods}
    allowed = cal.window_spans(sched, day)
    times = [s.at for s in plan]
    assert times == sorted(times), "sends must come in time order"
    for s in plan:
        # Inside a window of its own period, by the local wall clock ...
        local_day, minute = local_minute(tz, s.at)
        assert local_day == day, (cal.iso_local(tz, s.at), day)
        assert any(a <= minute < b for a, b in periods[s.period].windows), \
            (s.period, cal.iso_local(tz, s.at), periods[s.period].windows)
        # ... and in real time (a repeated hour is not used twice).
        assert any(a <= s.at < b for a, b in allowed), cal.iso_local(tz, s.at)
        assert s.at % 60 != 0, f"send on a whole minute: {cal.iso_local(tz, s.at)}"
        assert math.isclose(round(s.at * 1000), s.at * 1000, abs_tol=1e-3), s.at
        assert s.recipient != acc.email
        assert s.message_id.startswith("<") and s.message_id.endswith(f"@{acc.domain}>")
    gap = sched.effective_gap
    for a, b in zip(times, times[1:], strict=False):
        assert b - a >= gap - 1e-6, f"gap {b - a:.3f}s < {gap}s at {cal.iso_local(tz, b)}"
    if sched.max_per_hour:
        for i, t in enumerate(times):
            in_hour = sum(1 for u in times[i:] if u < t + HOUR)
            assert in_hour <= sched.max_per_hour
    if len(times) >= 3:
        gaps = {round(b - a, 3) for a, b in zip(times, times[1:], strict=False)}
        assert len(gaps) > 1, "evenly spaced sends look like a robot"
    assert len(set(s.message_id for s in plan)) == len(plan)


def capacity_ok(acc: Account, day: date) -> bool:
    """False when DST shortened the day's windows below what ramp.max needs."""
    spans = cal.period_spans(acc.schedule, day)
    full = cal.period_spans(acc.schedule, date(2026, 1, 14))  # an ordinary Wednesday
    return all(
        sum(e - s for s, e in spans[p.name]) >= sum(e - s for s, e in full[p.name]) - 1
        for p in acc.schedule.periods)


# ---------------------------------------------------------------- properties


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), tz=st.sampled_from(ZONES),
       day=st.dates(date(2026, 1, 1), date(2027, 12, 31)),
       name=st.sampled_from(sorted(VARIANTS)), warmup_day=st.integers(1, 40))
def test_plan_rules_hold(seed: int, tz: str, day: date, name: str, warmup_day: int) -> None:
    acc = variant(name, tz)
    plan = plan_day(acc, day, warmup_day, random.Random(seed), POOL)
    if day.weekday() >= 5:
        assert plan == []
        return
    check_plan(acc, day, plan)
    target = target_of(acc, warmup_day)
    if capacity_ok(acc, day):
        assert len(plan) == target
        per = Counter(s.period for s in plan)
        for p in acc.schedule.periods:  # largest remainder: floor or ceil of the quota
            assert math.floor(target * p.weight - 1e-9) <= per[p.name] <= math.ceil(target * p.weight + 1e-9)
    else:
        assert len(plan) <= target
    assert all(s.recipient == "a1@example.com" for s in plan)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), tz=st.sampled_from(ZONES),
       day=st.dates(date(2026, 1, 1), date(2027, 12, 31)).filter(lambda d: d.weekday() < 5))
def test_same_seed_same_plan_other_seed_other_plan(seed: int, tz: str, day: date) -> None:
    acc = variant("default", tz)
    a = plan_day(acc, day, 10, random.Random(seed), POOL)
    b = plan_day(acc, day, 10, random.Random(seed), POOL)
    c = plan_day(acc, day, 10, random.Random(seed + 1), POOL)
    assert a == b
    assert len(a) == len(c) == 20
    assert [s.at for s in a] != [s.at for s in c]
    assert {s.message_id for s in a}.isdisjoint({s.message_id for s in c})


def test_full_ramp_splits_60_30_10() -> None:
    acc = variant("default", "Europe/London")
    plan = plan_day(acc, date(2026, 3, 4), 25, random.Random(7), POOL)
    assert len(plan) == 40
    assert Counter(s.period for s in plan) == {"peak": 24, "normal": 12, "low": 4}
    stats = plan_stats(plan)
    assert stats["per_period"] == {"peak": 24, "normal": 12, "low": 4}


def test_ramp_targets() -> None:
    acc = variant("default", "UTC")
    day = date(2026, 3, 4)
    for wd, want in [(1, 2), (2, 4), (5, 10), (19, 38), (20, 40), (21, 40), (100, 40)]:
        assert len(plan_day(acc, day, wd, random.Random(wd), POOL)) == want, wd
    assert plan_day(acc, day, 0, random.Random(1), POOL) == []


@pytest.mark.parametrize("day, why", [
    (date(2026, 12, 25), "Christmas Day (Friday)"),
    (date(2026, 7, 3), "Independence Day observed (Friday)"),
    (date(2026, 11, 26), "Thanksgiving"),
])
def test_no_sends_on_holidays(day: date, why: str) -> None:
    acc = variant("default", "America/New_York", "US")
    assert day.weekday() < 5
    assert plan_day(acc, day, 30, random.Random(1), POOL) == [], why
    assert cal.why_not_sending(acc, day) and "holiday" in cal.why_not_sending(acc, day)  # type: ignore[operator]
    # The same day without a holidays region is a normal sending day.
    assert len(plan_day(variant("default", "America/New_York"), day, 30, random.Random(1), POOL)) == 40
    # And the next working day is one for the holiday account.
    assert len(plan_day(acc, day + timedelta(days=3 if day.weekday() == 4 else 1), 30,
                        random.Random(1), POOL)) == 40


def test_no_sends_on_weekends_or_before_start() -> None:
    acc = variant("default", "Asia/Kolkata")
    for d in (date(2026, 3, 7), date(2026, 3, 8)):  # Saturday, Sunday
        assert plan_day(acc, d, 5, random.Random(1), POOL) == []
    assert plan_day(acc, date(2025, 12, 31), 5, random.Random(1), POOL) == []  # before start_date
    assert len(plan_day(acc, date(2026, 1, 1), 1, random.Random(1), POOL)) == 2
    weekend_acc = config(defaults={"weekdays": ["sat", "sun"]})[0]
    assert len(plan_day(weekend_acc, date(2026, 3, 7), 5, random.Random(1), POOL)) == 10
    assert plan_day(weekend_acc, date(2026, 3, 9), 5, random.Random(1), POOL) == []


# ---------------------------------------------------------------- recipients


@settings(max_examples=100, deadline=None)
@given(n=st.integers(3, 14), warmup_day=st.integers(1, 8), seed=st.integers(0, 2**32),
       day=st.dates(date(2026, 1, 1), date(2027, 12, 31)).filter(lambda d: d.weekday() < 5))
def test_pool_balance_and_no_repeated_pairs(n: int, warmup_day: int, seed: int, day: date) -> None:
    accounts = pool_accounts(n)
    pool = Pool([a.email for a in accounts])
    rng = random.Random(seed)
    plans = {a.email: plan_day(a, day, warmup_day, rng, pool) for a in accounts}
    count = target_of(accounts[0], warmup_day)
    received: Counter[str] = Counter()
    for sender, plan in plans.items():
        assert len(plan) == count
        recips = [s.recipient for s in plan]
        assert sender not in recips
        assert set(recips) <= set(pool.emails)
        if count < n:
            assert len(set(recips)) == len(recips), f"{sender} repeats a recipient: {recips}"
        received.update(recips)
    for email in pool.emails:
        assert received[email] == count, (email, received)


@cache
def pool_accounts(n: int) -> tuple[Account, ...]:
    return config(n)


def test_extra_recipients_and_sender_outside_pool() -> None:
    extras = ["seed1@other.net", "seed2@other.net"]
    acc = config(3, account={"extra_recipients": extras})[0]
    pool = Pool(["a0@example.com", "a1@example.com", "a2@example.com"])
    plan = plan_day(acc, date(2026, 3, 4), 3, random.Random(3), pool)  # 6 sends
    recips = Counter(s.recipient for s in plan)
    assert set(recips) <= {"a1@example.com", "a2@example.com", *extras}
    assert set(extras) <= set(recips), "extra recipients are used"
    assert "a0@example.com" not in recips
    # A sender the pool does not list still never mails itself.
    outsider = Pool(["a1@example.com", "a2@example.com"])
    plan = plan_day(acc, date(2026, 3, 4), 3, random.Random(3), outsider)
    assert plan and all(s.recipient != acc.email for s in plan)


# ---------------------------------------------------------------- DST, directly on the calendar


def span_len(spans: list[tuple[float, float]]) -> float:
    return sum(e - s for s, e in spans)


def hm(h: float, m: float = 0) -> float:
    return h * HOUR + m * 60


DST_CASES = [
    # zone, day, day length (h), [(window start, end in local seconds, real seconds)]
    ("America/New_York", date(2026, 3, 8), 23, [(hm(2), hm(4), HOUR), (hm(2), hm(3), 0.0),
                                                (hm(1), hm(3), HOUR), (hm(9), hm(17), 8 * HOUR)]),
    ("America/New_York", date(2026, 11, 1), 25, [(hm(1), hm(2), HOUR), (hm(0), hm(3), 3 * HOUR),
                                                 (hm(1, 30), hm(2), 1800.0)]),
    ("Europe/London", date(2026, 3, 29), 23, [(hm(1), hm(2), 0.0), (hm(0), hm(3), 2 * HOUR)]),
    ("Europe/London", date(2026, 10, 25), 25, [(hm(1), hm(2), HOUR), (hm(0), hm(3), 3 * HOUR)]),
    ("Australia/Lord_Howe", date(2026, 4, 5), 24.5, [(hm(1), hm(2), HOUR), (hm(1, 30), hm(2), 1800.0),
                                                     (hm(0), hm(3), 3 * HOUR)]),
    ("Australia/Lord_Howe", date(2026, 10, 4), 23.5, [(hm(2), hm(3), 1800.0), (hm(2), hm(2, 30), 0.0),
                                                      (hm(0), hm(3), 2.5 * HOUR)]),
    ("Pacific/Chatham", date(2026, 4, 5), 25, [(hm(2, 45), hm(3, 45), HOUR), (hm(2), hm(4), 2 * HOUR)]),
    ("Pacific/Chatham", date(2026, 9, 27), 23, [(hm(2, 45), hm(3, 45), 0.0), (hm(2), hm(4), HOUR)]),
    ("Asia/Kathmandu", date(2026, 3, 8), 24, [(hm(9), hm(17), 8 * HOUR)]),
    ("Asia/Kolkata", date(2026, 11, 1), 24, [(hm(0), hm(24), 24 * HOUR), (hm(2), hm(3), HOUR)]),
]


@pytest.mark.parametrize("tz, day, hours, windows", DST_CASES, ids=[f"{c[0]}-{c[1]}" for c in DST_CASES])
def test_dst_day_and_window_lengths(tz: str, day: date, hours: float, windows: list) -> None:
    start, end = cal.day_bounds(tz, day)
    assert end - start == hours * HOUR
    assert cal.local_date(tz, start) == day and cal.local_date(tz, end) == day + timedelta(days=1)
    for a, b, real in windows:
        spans = cal.local_span_to_utc(tz, day, a, b)
        assert span_len(spans) == real, (a / HOUR, b / HOUR, spans)
        for s, e in spans:
            assert start <= s < e <= end


def santiago_transitions(year: int) -> list[tuple[date, float]]:
    """(local date, new offset - old offset in hours) of each change, found with zoneinfo."""
    tz = ZoneInfo("America/Santiago")
    out = []
    t = datetime(year, 1, 1, tzinfo=ZoneInfo("UTC"))
    prev = t.astimezone(tz).utcoffset()
    while t.year == year:
        t += timedelta(minutes=30)
        off = t.astimezone(tz).utcoffset()
        if off != prev:
            out.append((t.astimezone(tz).date(), (off - prev).total_seconds() / HOUR))  # type: ignore[operator]
            prev = off
    return out


def test_santiago_midnight_that_does_not_exist() -> None:
    trans = santiago_transitions(2026)
    assert [d for d, _ in trans] == [date(2026, 4, 4), date(2026, 9, 6)]
    fwd = next(d for d, delta in trans if delta > 0)  # 2026-09-06: 00:00 -> 01:00
    tz = ZoneInfo("America/Santiago")
    start, end = cal.day_bounds("America/Santiago", fwd)
    first = datetime.fromtimestamp(start, tz)
    assert (first.date(), first.hour, first.minute) == (fwd, 1, 0)  # the day starts at 01:00
    assert datetime.fromtimestamp(start - 1, tz).date() == fwd - timedelta(days=1)
    assert end - start == 23 * HOUR
    assert cal.local_span_to_utc("America/Santiago", fwd, 0, hm(1)) == []
    assert span_len(cal.local_span_to_utc("America/Santiago", fwd, 0, hm(2))) == HOUR
    # Clocks back at midnight: the evening of 2026-04-04 repeats 23:00-24:00.
    back = date(2026, 4, 4)
    start, end = cal.day_bounds("America/Santiago", back)
    assert end - start == 25 * HOUR
    assert span_len(cal.local_span_to_utc("America/Santiago", back, hm(22), hm(24))) == 2 * HOUR
    assert cal.day_bounds("America/Santiago", back + timedelta(days=1))[0] == end


DST_DAYS = [(tz, day) for tz, day, *_ in DST_CASES] + [
    ("America/Santiago", date(2026, 9, 7)),  # a Monday after the missing midnight
    ("America/Santiago", date(2026, 4, 3)),
    ("Europe/London", date(2026, 3, 30)),
]


@pytest.mark.parametrize("tz, day", DST_DAYS, ids=[f"{t}-{d}" for t, d in DST_DAYS])
def test_plans_on_dst_days_keep_the_rules(tz: str, day: date) -> None:
    # Weekends are sending days here so that the Sunday transitions are planned too.
    for name in ("default", "night"):
        acc = config(defaults={**VARIANTS[name], "timezone": tz,
                               "weekdays": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]})[0]
        for seed in range(25):
            plan = plan_day(acc, day, 30, random.Random(seed), POOL)
            check_plan(acc, day, plan)
            assert len(plan) >= 0.8 * acc.schedule.ramp.max, (len(plan), name)
            if capacity_ok(acc, day):
                assert len(plan) == acc.schedule.ramp.max


def test_santiago_planning_on_missing_midnight() -> None:
    acc = config(defaults={**VARIANTS["night"], "timezone": "America/Santiago",
                           "weekdays": ["sun"]})[0]
    day = date(2026, 9, 6)
    for seed in range(25):
        plan = plan_day(acc, day, 30, random.Random(seed), POOL)
        check_plan(acc, day, plan)
        for s in plan:
            assert cal.to_local("America/Santiago", s.at).hour >= 1  # 00:00-01:00 does not exist


def test_fall_back_hour_is_used_once() -> None:
    """On 2026-11-01 in New York a 01:00-02:00 window is one hour of real time: a
    max_per_hour cap allows no more sends than one hour holds."""
    acc = config(defaults={
        "timezone": "America/New_York", "weekdays": ["sun"], "max_per_hour": 6, "min_gap": "1m",
        "periods": {"only": {"windows": ["01:00-02:00"], "weight": 1.0}},
        "ramp": {"start": 6, "step": 1, "max": 6},  # as many as one hour holds at 10-minute gaps
    })[0]
    day = date(2026, 11, 1)
    spans = cal.window_spans(acc.schedule, day)
    assert span_len(spans) == HOUR
    for seed in range(20):
        plan = plan_day(acc, day, 1, random.Random(seed), POOL)
        check_plan(acc, day, plan)
        assert len(plan) == 6
        assert plan[-1].at - plan[0].at < HOUR  # not spread over two real hours
        for s in plan:  # all in the first (EDT) occurrence
            assert cal.to_local("America/New_York", s.at).utcoffset() == timedelta(hours=-4)


def test_spring_forward_empty_window_plans_nothing() -> None:
    acc = config(defaults={
        "timezone": "America/New_York", "weekdays": ["sun"], "min_gap": "1m",
        "periods": {"gone": {"windows": ["02:00-03:00"], "weight": 1.0}},
        "ramp": {"start": 5, "step": 1, "max": 5},
    })[0]
    assert plan_day(acc, date(2026, 3, 8), 1, random.Random(1), POOL) == []
    assert len(plan_day(acc, date(2026, 3, 15), 1, random.Random(1), POOL)) == 5


# ---------------------------------------------------------------- a day under way


def at_local(tz: str, day: date, h: int, m: int = 0) -> float:
    return datetime(day.year, day.month, day.day, h, m, tzinfo=ZoneInfo(tz)).timestamp()


def test_remaining_target_mid_day() -> None:
    tz = "Europe/London"
    acc = variant("default", tz)
    day = date(2026, 3, 4)
    # At 12:30: peak (09-11, 14-16) has half ahead, normal (11-12, 16-18) 2/3,
    # low (12-14) 3/4 (give or take the 2 minutes each side gives up where two
    # periods touch): 40 * (0.6*0.5 + 0.3*2/3 + 0.1*0.75) = 40 * 0.575 = 23.
    t = at_local(tz, day, 12, 30)
    assert remaining_target(acc, day, 40, t) == 23
    assert remaining_target(acc, day, 40, t, already_sent=5) == 18
    assert remaining_target(acc, day, 40, t, already_sent=30) == 0  # never below 0
    assert remaining_target(acc, day, 40, None) == 40
    assert remaining_target(acc, day, 40, at_local(tz, day, 7)) == 40  # before the first window
    assert remaining_target(acc, day, 40, at_local(tz, day, 19)) == 0  # after the last
    # At 15:00: peak 1/4 ahead, normal 2/3, low none: 40 * (0.15 + 0.2) = 14.
    assert remaining_target(acc, day, 40, at_local(tz, day, 15)) == 14


def test_plan_for_a_day_under_way() -> None:
    tz = "America/New_York"
    acc = variant("default", tz)
    day = date(2026, 3, 4)
    t = at_local(tz, day, 12, 30)
    for seed in range(20):
        plan = plan_day(acc, day, 30, random.Random(seed), POOL, not_before=t)
        assert len(plan) == 23
        assert all(s.at >= t for s in plan)
        check_plan(acc, day, plan)
        assert len(plan_day(acc, day, 30, random.Random(seed), POOL, not_before=t, already_sent=3)) == 20
        assert plan_day(acc, day, 30, random.Random(seed), POOL, not_before=t, already_sent=40) == []


# ---------------------------------------------------------------- stats and warmup days


def test_plan_stats() -> None:
    def ps(at: float, period: str) -> PlannedSend:
        return PlannedSend(at, period, "b@example.com", f"<{at}@x>")

    sends = [ps(1000.5, "peak"), ps(1400.5, "peak"), ps(2000.25, "low"), ps(1100.5, "normal")]
    stats = plan_stats(sends)
    assert stats["count"] == 4
    assert stats["per_period"] == {"peak": 2, "normal": 1, "low": 1}
    assert stats["first"] == 1000.5 and stats["last"] == 2000.25
    assert stats["min_gap"] == 100.0  # 1000.5 -> 1100.5
    assert stats["median_gap"] == 300.0  # gaps 100, 300, 599.75
    empty = plan_stats([])
    assert empty["count"] == 0 and empty["first"] is None and empty["min_gap"] is None
    real = plan_stats(plan_day(variant("default", "UTC"), date(2026, 3, 4), 30, random.Random(2), POOL))
    assert real["count"] == 40 and real["min_gap"] >= 240  # type: ignore[operator]


def test_projected_warmup_day() -> None:
    acc = config(account={"start_date": date(2026, 3, 5)})[0]  # a Thursday
    assert cal.projected_warmup_day(acc, date(2026, 3, 4)) == 0  # before start
    assert cal.projected_warmup_day(acc, date(2026, 3, 5)) == 1
    assert cal.projected_warmup_day(acc, date(2026, 3, 6)) == 2
    assert cal.projected_warmup_day(acc, date(2026, 3, 7)) == 0  # Saturday
    assert cal.projected_warmup_day(acc, date(2026, 3, 9)) == 3  # Monday: the weekend is skipped
    assert cal.projected_warmup_day(acc, date(2026, 3, 19)) == 11
    us = config(defaults={"holidays": "US"}, account={"start_date": date(2026, 6, 29)})[0]
    assert cal.projected_warmup_day(us, date(2026, 7, 3)) == 0  # observed Independence Day
    assert cal.projected_warmup_day(us, date(2026, 7, 6)) == 5  # Mon-Thu, then Monday


# ---------------------------------------------------------------- what `check` accepts, the planner places


@st.composite
def schedules(draw: st.DrawFn) -> dict[str, Any]:
    """Random period layouts: sorted distinct minute marks paired into windows."""
    k = draw(st.integers(1, 5))
    marks = sorted(draw(st.sets(st.integers(0, 1440), min_size=2 * k, max_size=2 * k)))
    windows = [(marks[2 * i], marks[2 * i + 1]) for i in range(k)]
    n_periods = draw(st.integers(1, min(3, k)))
    weights = draw(st.sampled_from([[1.0], [0.5, 0.5], [0.6, 0.4], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5]])
                   if n_periods > 1 else st.just([1.0]))
    n_periods = len(weights) if len(weights) <= k else 1
    weights = weights if n_periods > 1 else [1.0]
    periods: dict[str, Any] = {f"p{j}": {"windows": [], "weight": w} for j, w in enumerate(weights)}
    for i, (a, b) in enumerate(windows):
        periods[f"p{i % n_periods}"]["windows"].append(f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}")
    return {
        "timezone": "UTC",
        "periods": periods,
        "min_gap": f"{draw(st.integers(1, 40))}m",
        "max_per_hour": draw(st.sampled_from([0, 0, 3, 6, 12])),
        "jitter": draw(st.sampled_from(["0s", "3m", "20m"])),
        "ramp": {"start": 1, "step": 1, "max": draw(st.integers(1, 60))},
    }


@settings(max_examples=300, deadline=None)
@given(defaults=schedules(), seed=st.integers(0, 2**32))
def test_accepted_config_plans_its_full_ramp(defaults: dict[str, Any], seed: int) -> None:
    try:
        acc = config(defaults=defaults)[0]
    except ConfigError as e:
        assert all("cannot fit" in p for p in e.problems), e.problems
        reject()
    full_ramp_planned(acc, seed)


@pytest.mark.parametrize("windows, gap, ramp_max", [
    (["09:00-10:00"], "10m", 7),  # a 7th send would sit on 10:00, outside [09:00, 10:00)
    (["00:00-00:01", "07:48-08:15"], "3m", 11),  # the 1-minute window adds no room
    (["09:00-09:05", "09:10-09:15"], "10m", 2),
])
def test_check_refuses_what_the_planner_cannot_place(windows: list[str], gap: str, ramp_max: int) -> None:
    defaults = {"min_gap": gap, "periods": {"only": {"windows": windows, "weight": 1.0}},
                "ramp": {"start": 1, "step": 1, "max": ramp_max}}
    with pytest.raises(ConfigError, match="cannot fit"):
        config(defaults=defaults)
    # One send fewer is accepted, and then planned in full.
    acc = config(defaults={**defaults, "ramp": {"start": 1, "step": 1, "max": ramp_max - 1}})[0]
    for seed in range(20):
        full_ramp_planned(acc, seed)


def full_ramp_planned(acc: Account, seed: int) -> None:
    day = date(2026, 3, 4)
    plan = plan_day(acc, day, 100, random.Random(seed), POOL)
    check_plan(acc, day, plan)
    assert len(plan) == acc.schedule.ramp.max, "`warmupd check` accepted a ramp the planner cannot place"


class _ConstantRandom(random.Random):
    """A degenerate generator: every draw is the same number."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize("value", [0.0, 0.25, 0.5, 0.999])
@pytest.mark.parametrize("jitter", ["0s", "3m"])
def test_whole_minute_nudge_never_breaks_a_rule(value: float, jitter: str) -> None:
    """Draws that put sends on whole minutes (here: at a window's start, or a
    minimum gap after a neighbour) are nudged off them, but never out of the
    window nor closer than min_gap to a neighbour."""
    acc = config(defaults={"jitter": jitter, "micro_jitter": "0s"})[0]
    day = date(2026, 3, 4)
    plan = plan_day(acc, day, 30, _ConstantRandom(value), POOL)
    assert len(plan) == 40
    sched = acc.schedule
    periods = {p.name: p for p in sched.periods}
    times = [s.at for s in plan]
    for s in plan:
        _, minute = local_minute("UTC", s.at)
        assert any(a <= minute < b for a, b in periods[s.period].windows), cal.iso_utc(s.at)
    for a, b in zip(times, times[1:], strict=False):
        assert b - a >= sched.min_gap - 1e-6, (cal.iso_utc(a), cal.iso_utc(b))


def exact_transitions(tzname: str, years: range) -> list[tuple[int, float]]:
    """(instant, offset change in seconds) of every change, exact to the second."""
    tz = ZoneInfo(tzname)

    def off(ts: float) -> float:
        return datetime.fromtimestamp(ts, tz).utcoffset().total_seconds()  # type: ignore[union-attr]

    out = []
    t = datetime(years.start, 1, 1, tzinfo=ZoneInfo("UTC")).timestamp()
    end = datetime(years.stop, 1, 1, tzinfo=ZoneInfo("UTC")).timestamp()
    while t < end:
        if off(t + 1800) != off(t):
            lo, hi = int(t), int(t + 1800)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if off(mid) == off(t) else (lo, mid)
            out.append((hi, off(hi) - off(lo)))
        t += 1800
    return out


@pytest.mark.parametrize("tz", [z for z in ZONES if z not in ("Asia/Kathmandu", "Asia/Kolkata")])
def test_every_transition_is_found_to_the_second(tz: str) -> None:
    """Clocks back: exactly the repeated stretch is cut from the day. Clocks forward:
    a wall time in the gap maps to the very first instant after it."""
    trans = exact_transitions(tz, range(2026, 2031))
    assert len(trans) == 10
    zi = ZoneInfo(tz)
    for t, change in trans:
        after = datetime.fromtimestamp(t, zi)
        if change < 0:  # repeated wall times on the local day of the change
            assert cal.repeated_spans(tz, after.date()) == ((float(t), t - change),)
            start, end = cal.day_bounds(tz, after.date())
            assert end - start == 24 * HOUR - change
        else:
            before = datetime.fromtimestamp(t - 1, zi).replace(tzinfo=None) + timedelta(seconds=1)
            assert cal.local_to_utc(zi, before) == t  # the first wall time that does not exist
            assert cal.local_to_utc(zi, before + timedelta(seconds=change / 2)) == t
            assert cal.repeated_spans(tz, after.date()) == ()
