"""Where a send is planned: plan and persist, warmup-day advance, each zone's midnight.

At start and at each account timezone's local midnight (DST-safe: the first
instant of the new local day) the accounts of that zone get their warmup day
advanced (one more for each past day on which they actually sent) and the new
day planned by the pure planner (planner.py), persisted in chunks (store.py)
and handed to the timers (firing.py). The accounts' own state (warmup day,
pause, hold) lives here too, with pause and resume.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol, TypeVar

from . import faults
from .calendar import day_bounds, iso_utc, local_date, next_sending_day, projected_warmup_day
from .config import Account, Config
from .firing import Clock, Spawn
from .logs import get_logger
from .planner import PlannedSend, Pool, day_target, new_send_target, plan_day
from .store import AccountState, PlanBuilder, Store

T = TypeVar("T")
PlanItem = tuple[Account, date, int, float | None, int]  # account, day, warmup day, not_before, already sent
ROLLOVER_ATTEMPTS = 6
SLICE = 0.0005  # seconds of planning on the loop's thread between two looks at the timers (2 ms: rollover sends 12 ms late at p99)
PLAN_LEAD = 10.0  # seconds: no send is placed sooner after its account-day is planned (chunk written, timers held)
BACKGROUND_AT = 2000  # account-days: a larger start-up plan runs while the daemon answers
ROLLOVER_BACKOFF = (1.0, 60.0)


# ---------------------------------------------------------------- the pure rules
# The daemon and the simulator (simulate.py) both plan through these: what
# `warmupd simulate` shows is what the daemon plans for the same config and seed.


def plan_rng(seed: int, email: str, day: date) -> random.Random:
    """The random draws of one account-day's plan. Seeded by (seed, account, date), so
    a plan does not depend on what else the daemon drew before it (sends, engagement)
    nor on the order in which a pool is planned."""
    return random.Random(f"warmupd-plan-{seed}-{email}-{day.isoformat()}")


def hold_factor(hold_until: str | None, hold_cut: float, day: date) -> float:
    """The share of the target planned on ``day``: ``hold_cut`` while the ramp is held
    (until ``hold_until``, exclusive; thresholds.py's junk bands set the cut), else all."""
    return hold_cut if hold_until and day.isoformat() < hold_until else 1.0


def plan_account_day(account: Account, day: date, wday: int, rng: random.Random, pool: Pool, *,
                     not_before: float | None = None, already_sent: int = 0, cut: float = 1.0,
                     ids: random.Random | None = None, graduated: bool = False) -> tuple[int, list[PlannedSend]]:
    """One account-day's target (new sends; replies come on top) and planned sends."""
    target = new_send_target(account, day_target(account, wday, graduated))
    if cut != 1.0:
        target = round(target * cut)
    return target, plan_day(account, day, wday, rng, pool, not_before=not_before,
                            already_sent=already_sent, target=target, ids=ids)


def initial_warmup_day(account: Account, today: date) -> int:
    """An account first seen on ``today``: the Nth sending day since start_date (at least 1)."""
    first = next_sending_day(account, today) or today
    return max(1, projected_warmup_day(account, first))


def advance(warmup_day: int, advanced_through: str, until: str, sent_dates: Iterable[str],
            hold_until: str | None) -> tuple[int, int]:
    """The warmup day once the days in (advanced_through, until] are counted: +1 for each
    on which the account sent, except days before ``hold_until`` (a held ramp does not
    grow). Returns (warmup day, days counted)."""
    counted = [d for d in sent_dates if advanced_through < d <= until
               and not (hold_until and d < hold_until)]
    return warmup_day + len(counted), len(counted)


class Timers(Protocol):
    """What planning needs of the timers (firing.Firing)."""

    def schedule_keys(self, keys: list[tuple[int, int, str]]) -> None: ...
    def cancel(self, ident: int, kind: int = ...) -> None: ...


async def plan_and_persist(store: Store, items: Sequence[PlanItem], rng: random.Random, pool: Pool, *,
                           chunk: int = 250, on_keys: Callable[[list[tuple[int, int, str]]], None] | None = None,
                           hold_cut: Callable[[Account, date], float] | None = None,
                           progress: Callable[[int], None] | None = None, slice_s: float = SLICE,
                           clock: Callable[[], float] | None = None, lead: float = 0.0,
                           graduated: Callable[[Account], bool] | None = None,
                           seed: int | None = None, stopping: Callable[[], bool] | None = None) -> int:
    """Plan (account, day, warmup_day, not_before, already_sent) items and persist them.

    Planning runs on the loop's thread in slices of ``slice_s`` (a few account-days
    each; the loop runs its timers between slices, so a send due meanwhile is at
    most about a slice late), while the store's writer thread commits the previous
    chunk of ``chunk`` account-days (SQLite releases the GIL while it works). A chunk
    is small (10,000 rows, ~0.1 s to write) because a send's `sending` mark waits for
    the chunk being written: 1,000 account-days made rollover sends up to 0.7 s late.
    (A worker thread for planning was tried: the loop then waits for the GIL at
    every step of a send, which made sends due during a rollover 20 ms late.)

    With ``clock`` and ``lead``, no send is placed earlier than ``lead`` seconds after
    the moment its account-day is planned: by then its chunk is written and its
    timers held, so a large plan never makes its own first sends late.

    With ``seed``, each account-day draws from ``plan_rng(seed, account, day)`` (and
    its Message-IDs from ``rng``); without, every draw comes from ``rng`` in turn.

    Once ``stopping()`` is true no further chunk is begun: the daemon's stop does not
    wait for a large plan (each chunk is its own transaction; the account-days not
    written are planned at the next start).

    The cyclic garbage collector is paused meanwhile: planning allocates millions
    of acyclic objects, and each of its passes would walk every live object again
    (a fifth of the time at 4 M sends)."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return await _plan_and_persist(store, items, rng, pool, chunk, on_keys, hold_cut, progress, slice_s,
                                       clock, lead, graduated, seed, stopping)
    finally:
        if gc_was_enabled:
            gc.enable()


async def _plan_and_persist(store: Store, items: Sequence[PlanItem], rng: random.Random, pool: Pool, chunk: int,
                            on_keys: Callable[[list[tuple[int, int, str]]], None] | None,
                            hold_cut: Callable[[Account, date], float] | None,
                            progress: Callable[[int], None] | None, slice_s: float,
                            now: Callable[[], float] | None, lead: float,
                            graduated: Callable[[Account], bool] | None, seed: int | None,
                            stopping: Callable[[], bool] | None = None) -> int:
    total = 0
    done = 0
    writer: asyncio.Task[list[tuple[int, int, str]]] | None = None
    clock = time.perf_counter

    def fault() -> None:
        faults.point("store.plan_chunk")

    async def drain() -> None:
        """Wait for the chunk being written and hand its keys to the timers."""
        nonlocal writer
        if writer is not None:
            keys = await writer
            writer = None
            if on_keys:
                on_keys(keys)
            if progress:
                progress(done)

    async def submit(builder: PlanBuilder) -> None:
        nonlocal writer
        await drain()
        writer = asyncio.create_task(store.insert_prepared(builder.finish(), on_commit=fault))

    try:
        builder = store.plan_builder()
        slice_end = clock() + slice_s
        for account, day, wday, not_before, already in items:
            if now is not None:
                earliest = now() + lead
                if not_before is not None or earliest > day_bounds(account.timezone, day)[0]:
                    not_before = max(not_before or earliest, earliest)
            day_rng = rng if seed is None else plan_rng(seed, account.email, day)
            target, sends = plan_account_day(
                account, day, wday, day_rng, pool, not_before=not_before, already_sent=already,
                cut=1.0 if hold_cut is None else hold_cut(account, day), ids=rng,
                graduated=graduated is not None and graduated(account))
            builder.add_day(account.email, day.isoformat(), wday, target, sends)
            total += len(sends)
            if builder.days >= chunk:
                await submit(builder)
                done += builder.days
                builder = store.plan_builder()
                slice_end = clock() + slice_s
                if stopping is not None and stopping():
                    break
            elif clock() > slice_end:
                await asyncio.sleep(0)
                slice_end = clock() + slice_s
        if builder.days:
            await submit(builder)
            done += builder.days
        await drain()
    finally:
        if writer is not None:  # an error above: let the chunk in flight finish, then raise
            await asyncio.wait([writer])
    return total


async def _paced(items: Iterable[T], every: int = 500) -> AsyncIterator[T]:
    """``items``, with a yield to the event loop every ``every`` of them, so that a
    loop over a whole pool never holds the timers up for more than a few ms."""
    for k, item in enumerate(items, 1):
        yield item
        if k % every == 0:
            await asyncio.sleep(0)


class Planning:
    """Account state, planning, rollover, pause and resume. Wired by daemon.py."""

    def __init__(self, *, config: Callable[[], Config], store: Store, clock: Clock, rng: random.Random,
                 timers: Timers, spawn: Spawn) -> None:
        self._config = config
        self.store = store
        self.clock = clock
        self.rng = rng
        self._start_seed = rng.getrandbits(63)
        self.timers = timers
        self._spawn = spawn
        self.log = get_logger("warmupd")
        self.states: dict[str, AccountState] = {}
        self.pool = Pool([a.email for a in config().accounts])
        self._rollovers: dict[str, asyncio.TimerHandle] = {}
        self._last_cleanup = 0.0
        self._stopping = False
        self.progress: dict[str, Any] | None = None  # a plan being made in the background

    @property
    def seed(self) -> int:
        """Plans draw from (seed, account, date): ``daemon.seed``, else one drawn at start."""
        seed = self._config().daemon.seed
        return self._start_seed if seed is None else seed

    def now(self) -> float:
        return self.clock.now()

    def today(self, account: Account) -> date:
        return local_date(account.timezone, self.now())

    def paused_reason(self, email: str) -> str | None:
        st = self.states.get(email)
        return st.paused_reason if st is not None else None

    async def load(self) -> None:
        self.states = await self.store.account_states()

    def set_pool(self, emails: Sequence[str]) -> None:
        self.pool = Pool(list(emails))

    def stop(self) -> None:
        self._stopping = True
        for h in self._rollovers.values():
            h.cancel()

    # ------------------------------------------------------------ warmup days

    def _init_state(self, account: Account, today: date) -> AccountState:
        return AccountState(account.email, initial_warmup_day(account, today), (today - timedelta(days=1)).isoformat(),
                            None, None, None, None)

    async def _advance_many(self, todays: dict[str, tuple[Account, date]]) -> list[AccountState]:
        """Count the days before each account's today: +1 for each on which it sent
        (a day paused, held, or with the daemon down does not count). One grouped
        query for all of them; returns the states that changed (not yet stored)."""
        changed: list[AccountState] = []
        behind: dict[str, tuple[AccountState, str]] = {}
        eves: dict[date, str] = {}  # today -> the day before, ISO: a pool has two or three todays
        async for email, (account, today) in _paced(todays.items()):
            st = self.states.get(email)
            if st is None:
                st = self._init_state(account, today)
                self.states[email] = st
                changed.append(st)
                continue
            until = eves.get(today)
            if until is None:
                until = eves[today] = (today - timedelta(days=1)).isoformat()
            if st.advanced_through < until:
                behind[email] = (st, until)
        if behind:
            after = min(st.advanced_through for st, _ in behind.values())
            until_max = max(u for _, u in behind.values())
            sent = await self.store.sent_dates_many(list(behind), after, until_max)
            async for email, (st, until) in _paced(behind.items()):
                st.warmup_day, counted = advance(st.warmup_day, st.advanced_through, until,
                                                 sent.get(email, ()), st.hold_until)
                if counted:
                    self.log.info("warmup day advanced", account=email, warmup_day=st.warmup_day,
                                  days_counted=counted)
                st.advanced_through = until
                changed.append(st)
        return changed

    def hold_cut(self, account: Account, day: date) -> float:
        st = self.states.get(account.email)
        return hold_factor(st.hold_until if st else None, st.hold_cut if st else 1.0, day)

    def graduated(self, account: Account) -> bool:
        st = self.states.get(account.email)
        return bool(st and st.graduated)

    # ------------------------------------------------------------ planning

    async def plan_missing(self, accounts: Sequence[Account] | None = None, *, background: bool = False) -> int:
        """Plan today for every account whose today has no plan yet (only the share
        of window time still ahead when the day is under way). Returns the sends
        planned, or 0 when ``background`` handed a large plan to a task of its own
        (``progress`` shows it) so that the daemon can answer and fire meanwhile.

        Planning a large pool takes a while, so no send is placed sooner than
        ``PLAN_LEAD`` after its own account-day is planned: the plan never puts a
        send where it would already be late when its chunk is written."""
        accounts = list(accounts if accounts is not None else self._config().accounts)
        now = self.now()
        # Per timezone, not per account: a zone's midnight may hold 10,000 accounts, and
        # every loop over them below yields to the event loop now and then (``_paced``).
        by_tz: dict[str, tuple[date, float]] = {}
        todays: dict[str, tuple[Account, date]] = {}
        async for a in _paced(accounts):
            if a.timezone not in by_tz:
                day = local_date(a.timezone, now)
                by_tz[a.timezone] = (day, day_bounds(a.timezone, day)[0])
            todays[a.email] = (a, by_tz[a.timezone][0])
        changed = await self._advance_many(todays)
        await self.store.upsert_accounts(changed)
        iso = {d: d.isoformat() for d, _ in by_tz.values()}
        unplanned = set(await self.store.unplanned([(a.email, iso[day]) async for a, day in _paced(todays.values())]))
        todo = [(a, day) async for a, day in _paced(todays.values())
                if (a.email, iso[day]) in unplanned and not self.states[a.email].paused_reason]
        partial: list[tuple[Account, date, float | None, bool]] = []
        async for a, day in _paced(todo):
            begun = now > by_tz[a.timezone][1]
            partial.append((a, day, now if begun else None, begun))
        already = await self.store.count_sent_many(
            [(a.email, iso[day]) async for a, day, _, begun in _paced(partial) if begun])
        items = [(a, day, self.states[a.email].warmup_day, nb, already.get(a.email, 0) if begun else 0)
                 async for a, day, nb, begun in _paced(partial)]
        if not items:
            return 0
        if background and len(items) > BACKGROUND_AT:
            self.progress = {"account_days": len(items), "done": 0, "started": iso_utc(now)}
            self._spawn(self._plan_in_background(items), critical=True)
            return 0
        return await self.plan_items(items)

    async def _plan_in_background(self, items: Sequence[PlanItem]) -> None:
        t0 = self.now()
        try:
            n = await self.plan_items(items)
        finally:
            self.progress = None
        if not self._stopping:
            self.log.info("background planning done", account_days=len(items), sends=n,
                          seconds=round(self.now() - t0, 3))

    async def plan_items(self, items: Sequence[PlanItem]) -> int:
        stored = 0

        def progress(done: int) -> None:
            nonlocal stored
            stored = done
            if self.progress is not None:
                self.progress["done"] = done

        n = await plan_and_persist(self.store, items, self.rng, self.pool, on_keys=self.timers.schedule_keys,
                                   hold_cut=self.hold_cut, progress=progress, clock=self.now, lead=PLAN_LEAD,
                                   graduated=self.graduated, seed=self.seed, stopping=lambda: self._stopping)
        if len(items) <= 50:
            for a, day, wday, not_before, already in items:
                self.log.info("planned", account=a.email, date=day.isoformat(), warmup_day=wday,
                              target=day_target(a, wday, self.graduated(a)), already_sent=already,
                              remaining_only=not_before is not None)
        if stored < len(items):  # the daemon is stopping: the rest is planned at the next start
            self.log.info("plan stored in part; stopping", account_days=stored, of=len(items), sends=n)
        else:
            self.log.info("plan stored", account_days=len(items), sends=n)
        return n

    async def replan_rest_of_today(self, account: Account) -> int:
        """Plan what remains of today's target (sends already made count against it)."""
        today = self.today(account)
        await self.store.upsert_accounts(await self._advance_many({account.email: (account, today)}))
        already = await self.store.count_sent(account.email, today.isoformat())
        return await self.plan_items([(account, today, self.states[account.email].warmup_day, self.now(),
                                       already)])

    # ------------------------------------------------------------ rollover

    def arm_rollovers(self) -> None:
        for tz in {a.timezone for a in self._config().accounts} - set(self._rollovers):
            self.arm_rollover(tz)

    def arm_rollover(self, tz: str) -> None:
        if self._stopping:
            return
        now = self.now()
        _, end = day_bounds(tz, local_date(tz, now))  # first instant of tomorrow (DST-safe)
        old = self._rollovers.pop(tz, None)
        if old:
            old.cancel()
        delay = max(0.0, end - now) + 0.001
        self._rollovers[tz] = asyncio.get_running_loop().call_later(min(delay, 3600.0), self._rollover_due, tz, end)

    def _rollover_due(self, tz: str, at: float) -> None:
        if self._stopping:
            return
        if self.now() < at:  # capped sleep: not there yet
            self.arm_rollover(tz)
            return
        self._spawn(self.rollover(tz), critical=True)

    async def rollover(self, tz: str) -> None:
        """A new local day in ``tz``: advance warmup days, plan the day, tidy up.

        A step that fails is retried with backoff (nothing is planned twice: an
        account-day already in the store is not planned again); past the last
        attempt the error ends the daemon, for systemd to restart it."""
        for attempt in range(1, ROLLOVER_ATTEMPTS + 1):
            accounts = [a for a in self._config().accounts if a.timezone == tz]
            self.log.info("rollover", timezone=tz, date=local_date(tz, self.now()).isoformat(),
                          accounts=len(accounts), attempt=attempt)
            try:
                faults.point("planning.rollover")
                await self.plan_missing(accounts)
                break
            except Exception as e:
                if attempt == ROLLOVER_ATTEMPTS or self._stopping:
                    raise
                wait = min(ROLLOVER_BACKOFF[1], ROLLOVER_BACKOFF[0] * 2 ** (attempt - 1))
                self.log.error("rollover failed; retrying", timezone=tz, attempt=attempt, error=str(e),
                               retry_in_s=wait, exc_info=e)
                await asyncio.sleep(wait)
        self.arm_rollover(tz)
        if self.now() - self._last_cleanup > 20 * 3600:
            await self.daily_maintenance()

    async def daily_maintenance(self) -> None:
        self._last_cleanup = self.now()
        cutoff = self.now() - self._config().daemon.retention
        deleted = await self.store.cleanup(datetime.fromtimestamp(cutoff, UTC).date().isoformat(),
                                           int(cutoff * 1000))
        self.log.info("cleanup", deleted=deleted, older_than=iso_utc(cutoff))

    # ------------------------------------------------------------ pause / resume

    async def pause(self, email: str, reason: str | None) -> dict[str, Any]:
        account = self._config().account(email)
        if account is None:
            raise KeyError(email)
        reason = reason or "paused by operator"
        today = self.today(account)
        st = self.states.get(email) or self._init_state(account, today)
        st.paused_reason, st.paused_ms = reason, int(self.now() * 1000)
        self.states[email] = st
        await self.store.upsert_account(st)
        ids = await self.store.skip_pending(email, f"paused: {reason}",
                                            [today.isoformat(), (today + timedelta(days=1)).isoformat()])
        for i in ids:
            self.timers.cancel(i)
        self.log.warning("account paused", account=email, reason=reason, skipped=len(ids))
        return {"account": email, "paused": reason, "skipped": len(ids)}

    async def resume(self, email: str) -> dict[str, Any]:
        account = self._config().account(email)
        if account is None:
            raise KeyError(email)
        st = self.states.get(email)
        was = st.paused_reason if st else None
        if st is not None:
            st.paused_reason = st.paused_ms = None
            await self.store.upsert_account(st)
        planned = await self.replan_rest_of_today(account) if was else 0
        self.log.info("account resumed", account=email, was_paused=was)
        return {"account": email, "resumed": bool(was), "planned": planned}

    async def skip_for_change(self, email: str, reason: str, dates: Sequence[str]) -> int:
        """Skip an account's pending sends of these dates (removal, re-plan) and their timers."""
        ids = await self.store.skip_pending(email, reason, dates)
        for i in ids:
            self.timers.cancel(i)
        return len(ids)
