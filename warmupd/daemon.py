"""The daemon's life cycle: recovery, planning, rollover, firing and state transitions.

Start-up (``Daemon.start``): lock the state folder, bind the control socket,
open and migrate the store, settle rows a crash left in ``sending``, skip what
was missed by more than the grace, plan every account-day not yet planned
(only the remaining share of a day under way), arm the timers, READY=1.

Firing: one heap of ints (timers.py) and one armed loop timer. The timer is
armed for the earliest entry minus the preparation lead (at most about a
second ahead) and re-armed whenever an earlier entry arrives; there is no
polling loop. Each due send runs as its own task: pending -> sending is
committed before the connection opens, the session is set up during the
lead, and MAIL FROM goes out at the planned instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import os
import random
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from . import __version__
from .calendar import (
    day_bounds,
    iso_local,
    iso_utc,
    local_date,
    next_sending_day,
    projected_warmup_day,
    window_spans,
)
from .config import EX_CONFIG, Account, Config, ConfigError, load_config
from .logs import configure_logging, get_logger, register_secret
from .planner import Pool, day_target, new_send_target, plan_day
from .smtp import Outcome, Result, build_message, deliver
from .store import AccountState, SendRow, Store, StoreError
from .timers import SEND, TimerHeap

EX_CANTCREAT = 73
EX_TEMPFAIL = 75
PREPARE_LEAD = 1.0  # seconds before the instant at which a send starts its session
MAX_SLEEP = 1.0  # one armed sleep at most; the kernel's slack on long sleeps is ~0.1 %


class Clock(Protocol):
    def now(self) -> float: ...


class RealClock:
    """Wall time in UTC seconds; the loop's timers are mapped onto it."""

    def now(self) -> float:
        return time.time()


@dataclass
class Metrics:
    started: float
    transitions: dict[tuple[str, str], int]
    lateness_buckets: tuple[float, ...] = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0)
    lateness_counts: list[int] | None = None
    lateness_sum: float = 0.0
    lateness_n: int = 0
    reloads: int = 0
    reload_failures: int = 0
    loop_lag: float = 0.0

    def observe_lateness(self, seconds: float) -> None:
        if self.lateness_counts is None:
            self.lateness_counts = [0] * len(self.lateness_buckets)
        for i, b in enumerate(self.lateness_buckets):
            if seconds <= b:
                self.lateness_counts[i] += 1
        self.lateness_sum += seconds
        self.lateness_n += 1


def backoff(attempt: int, base: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter around the doubling: base*2^(n-1) x [0.5, 1.5)."""
    return base * (2 ** (attempt - 1)) * (0.5 + rng.random())


async def plan_and_persist(store: Store, items: Sequence[tuple[Account, date, int, float | None, int]],
                           rng: random.Random, pool: Pool, *, chunk: int = 2000,
                           on_keys: Callable[[list[tuple[int, int, str]]], None] | None = None,
                           hold_cut: Callable[[Account, date], float] | None = None) -> int:
    """Plan (account, day, warmup_day, not_before, already_sent) items and persist them.

    Planning runs in chunks on the loop's thread while the previous chunk is
    written by the store's thread (sqlite releases the GIL while it works),
    and yields to the loop between chunks so firing is never held up. A chunk
    is also prepared for writing (rows, JSON) before waiting for the previous
    one, so that the store's thread only ever waits for SQLite.

    The cyclic garbage collector is paused meanwhile: planning allocates millions
    of acyclic objects, and each of its passes would walk every live object again
    (a fifth of the time at 4 M sends)."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return await _plan_and_persist(store, items, rng, pool, chunk, on_keys, hold_cut)
    finally:
        if gc_was_enabled:
            gc.enable()


async def _plan_and_persist(store: Store, items: Sequence[tuple[Account, date, int, float | None, int]],
                            rng: random.Random, pool: Pool, chunk: int,
                            on_keys: Callable[[list[tuple[int, int, str]]], None] | None,
                            hold_cut: Callable[[Account, date], float] | None) -> int:
    total = 0
    writer: asyncio.Task[list[tuple[int, int, str]]] | None = None
    for i in range(0, len(items), chunk):
        days = []
        for account, day, wday, not_before, already in items[i:i + chunk]:
            target = new_send_target(account, day_target(account, wday))
            if hold_cut is not None:
                target = round(target * hold_cut(account, day))
            sends = plan_day(account, day, wday, rng, pool, not_before=not_before,
                             already_sent=already, target=target)
            days.append((account.email, day.isoformat(), wday, target, sends))
            total += len(sends)
        prepared = store.prepare_plan(days)
        if writer is not None:
            keys = await writer
            if on_keys:
                on_keys(keys)
        writer = asyncio.create_task(store.insert_prepared(prepared))
        await asyncio.sleep(0)
    if writer is not None:
        keys = await writer
        if on_keys:
            on_keys(keys)
    return total


class Daemon:
    def __init__(self, config: Config, *, clock: Clock | None = None, rng: random.Random | None = None,
                 notifier: Any = None, retry_base: float = 60.0) -> None:
        self.config = config
        self.clock = clock or RealClock()
        self.rng = rng or random.Random()
        self.notifier = notifier
        self.retry_base = float(os.environ.get("WARMUPD_RETRY_BASE", retry_base))
        self.log = get_logger("warmupd")
        self.store: Store | None = None
        self.heap = TimerHeap()
        self.states: dict[str, AccountState] = {}
        self.pool = Pool([a.email for a in config.accounts])
        self.metrics = Metrics(started=time.time(), transitions=defaultdict(int))
        self.config_loaded_at = time.time()
        self.last_reload_error: str | None = None
        self.control: Any = None
        self._armed: asyncio.TimerHandle | None = None
        self._armed_at = 0.0
        self._rollovers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._account_locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._sem = asyncio.Semaphore(config.daemon.max_concurrent_sends)
        self._stopping = False
        self._stopped = asyncio.Event()
        self._last_cleanup = 0.0
        self._lock_fd: int | None = None
        self._reload_lock = asyncio.Lock()
        self._background: list[asyncio.Task[Any]] = []  # lag monitor, watchdog: cancelled at stop
        self.engagement: Any = None  # imap.Engagement when any account has imap
        self.ready = False
        self._reload_after_start = False

    # ------------------------------------------------------------ helpers

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def now(self) -> float:
        return self.clock.now()

    def today(self, account: Account) -> date:
        return local_date(account.timezone, self.now())

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.log.error("task failed", error=repr(exc), exc_info=exc)

    # ------------------------------------------------------------ start-up

    def _lock_state(self) -> None:
        """One daemon per state folder: a second one refuses to start."""
        d = self.config.daemon.state_dir
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / "warmupd.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DaemonError(EX_TEMPFAIL, f"{d} is in use by another running warmupd: stop it first "
                                           "(or give this one its own state_dir)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    async def start(self) -> None:
        self._lock_state()
        await self._start_control()
        try:
            self.store = await Store.open(self.config.daemon.database)
        except StoreError as e:
            raise DaemonError(EX_CANTCREAT, str(e)) from None
        self.states = await self.store.account_states()
        await self._recover()
        await self._plan_missing()
        if any(a.imap is not None for a in self.config.accounts):
            from .imap import Engagement  # IMAP engagement: watch, place, act

            self.engagement = Engagement(self)
            await self.engagement.start()
        for tz in {a.timezone for a in self.config.accounts}:
            self._arm_rollover(tz)
        self._arm()
        self._background.append(self._spawn(self._lag_monitor()))
        if self.notifier is not None:
            from .notify import watchdog_loop

            interval = self.notifier.watchdog_interval()
            if interval:
                self._background.append(self._spawn(
                    watchdog_loop(self.notifier, lambda: self.metrics.loop_lag < interval / 2)))
            self.notifier.ready(self.status_line())
        self.ready = True
        if self._reload_after_start:  # a SIGHUP came while starting
            self._spawn(self.reload())
        nxt = self._next_send_info()
        self.log.info("ready", pending_timers=len(self.heap), accounts=len(self.config.accounts),
                      next_send=nxt, database=str(self.config.daemon.database),
                      socket=str(self.config.daemon.socket))

    async def _start_control(self) -> None:
        from .control import ControlServer, ControlSocketError, SocketInUse

        self.control = ControlServer(self.config.daemon.socket, self)
        try:
            await self.control.start()
        except SocketInUse as e:
            self.control = None
            raise DaemonError(EX_TEMPFAIL, str(e)) from None
        except (ControlSocketError, OSError) as e:
            self.control = None
            raise DaemonError(EX_CANTCREAT, f"cannot open the control socket "
                                            f"{self.config.daemon.socket}: {e}") from None

    async def _recover(self) -> None:
        """Settle what a crash or a stop left behind."""
        store = self.store
        assert store is not None
        now = self.now()
        utc_today = datetime.fromtimestamp(now, UTC).date()
        dates = [(utc_today + timedelta(days=d)).isoformat() for d in range(-2, 3)]
        stale = await store.skip_stale(dates[0], "missed")
        if stale:
            self.log.info("skipped stale sends", count=stale, reason="missed")
        for row in await store.rows_on_dates(dates, ["sending"]):
            if row.data_mark:
                await self._transition(row, "uncertain", last_error="crashed after the DATA mark; not resent")
            else:
                await self._transition(row, "pending", detail="crashed before the DATA mark; retrying")
        grace = self.config.daemon.grace
        backlog: dict[str, list[SendRow]] = defaultdict(list)
        for row in await store.rows_on_dates(dates, ["pending"]):
            account = self.config.account(row.account)
            if account is None:
                await self._transition(row, "skipped", reason="removed: account no longer in config")
                continue
            if self.states.get(row.account) and self.states[row.account].paused_reason:
                await self._transition(row, "skipped", reason=f"paused: {self.states[row.account].paused_reason}")
                continue
            due = row.due_ms / 1000
            if due < now - grace:
                await self._transition(row, "skipped", reason="missed")
            elif due < now:
                backlog[row.account].append(row)
            else:
                self.heap.push(row.due_ms, row.id)
        # A backlog goes out at once, one send at a time per account, min_gap apart;
        # a send whose turn would come later than the grace after its instant is missed.
        # (A backlog send can come closer than min_gap to the account's next planned
        # send: "at once" wins, as the recovery rule says; planned instants don't move.)
        for email, rows in backlog.items():
            account = self.config.account(email)
            assert account is not None
            turn = now
            for row in sorted(rows, key=lambda r: r.due_ms):
                if turn > row.due_ms / 1000 + grace:
                    await self._transition(row, "skipped", reason="missed")
                    continue
                self.heap.push(int(turn * 1000), row.id)
                turn += account.schedule.min_gap

    # ------------------------------------------------------------ warmup days and planning

    def _init_state(self, account: Account, today: date) -> AccountState:
        first = next_sending_day(account, today) or today
        wday = max(1, projected_warmup_day(account, first))
        return AccountState(account.email, wday, (today - timedelta(days=1)).isoformat(),
                            None, None, None, None)

    async def _advance(self, account: Account, today: date,
                       changed: list[AccountState] | None = None) -> AccountState:
        """Count the days before ``today``: +1 for each on which the account sent
        (a day paused, held, or with the daemon down does not count).

        The new state is stored at once, or appended to ``changed`` for the caller
        to store many in one transaction (one fsync for a whole pool, not one each)."""
        assert self.store is not None
        st = self.states.get(account.email)
        if st is None:
            st = self._init_state(account, today)
            self.states[account.email] = st
            await self._save_states([st], changed)
            return st
        until = (today - timedelta(days=1)).isoformat()
        if st.advanced_through >= until:
            return st
        sent = await self.store.sent_dates(account.email, st.advanced_through, until)
        for d in sent:
            if st.hold_until and d < st.hold_until:
                continue
            st.warmup_day += 1
        if sent:
            self.log.info("warmup day advanced", account=account.email, warmup_day=st.warmup_day,
                          days_counted=len(sent))
        st.advanced_through = until
        await self._save_states([st], changed)
        return st

    async def _save_states(self, states: list[AccountState], changed: list[AccountState] | None) -> None:
        assert self.store is not None
        if changed is not None:
            changed.extend(states)
        else:
            await self.store.upsert_accounts(states)

    def _hold_cut(self, account: Account, day: date) -> float:
        st = self.states.get(account.email)
        if st and st.hold_until and day.isoformat() < st.hold_until:
            return 0.75
        return 1.0

    async def _plan_missing(self, accounts: Sequence[Account] | None = None) -> None:
        """Plan today for every account whose today has no plan yet."""
        assert self.store is not None
        accounts = list(accounts if accounts is not None else self.config.accounts)
        now = self.now()
        todays = {a.email: self.today(a) for a in accounts}
        planned = await self.store.planned_days(d.isoformat() for d in todays.values())
        items = []
        changed: list[AccountState] = []
        for a in accounts:
            day = todays[a.email]
            st = await self._advance(a, day, changed)
            if (a.email, day.isoformat()) in planned or st.paused_reason:
                continue
            start, _ = day_bounds(a.timezone, day)
            not_before = now if now > start else None
            already = await self.store.count_sent(a.email, day.isoformat()) if not_before else 0
            items.append((a, day, st.warmup_day, not_before, already))
        await self.store.upsert_accounts(changed)
        if not items:
            return
        await self._plan_items(items)

    async def _plan_items(self, items: Sequence[tuple[Account, date, int, float | None, int]]) -> None:
        assert self.store is not None
        n = await plan_and_persist(self.store, items, self.rng, self.pool, on_keys=self._push_keys,
                                   hold_cut=self._hold_cut)
        for a, day, wday, not_before, already in items:
            self.log.info("planned", account=a.email, date=day.isoformat(), warmup_day=wday,
                          target=day_target(a, wday), already_sent=already,
                          remaining_only=not_before is not None)
        self.log.info("plan stored", account_days=len(items), sends=n, pending_timers=len(self.heap))
        self._arm()

    def _push_keys(self, keys: list[tuple[int, int, str]]) -> None:
        for due_ms, ident, _ in keys:
            self.heap.push(due_ms, ident)

    # ------------------------------------------------------------ rollover

    def _arm_rollover(self, tz: str) -> None:
        now = self.now()
        today = local_date(tz, now)
        _, end = day_bounds(tz, today)  # first instant of tomorrow (DST-safe)
        old = self._rollovers.pop(tz, None)
        if old:
            old.cancel()
        delay = max(0.0, end - now) + 0.001
        self._rollovers[tz] = self.loop.call_later(min(delay, 3600.0), self._rollover_due, tz, end)

    def _rollover_due(self, tz: str, at: float) -> None:
        if self._stopping:
            return
        if self.now() < at:  # capped sleep: not there yet
            self._arm_rollover(tz)
            return
        self._spawn(self.rollover(tz))

    async def rollover(self, tz: str) -> None:
        """A new local day in ``tz``: advance warmup days, plan the day, tidy up."""
        accounts = [a for a in self.config.accounts if a.timezone == tz]
        self.log.info("rollover", timezone=tz, date=local_date(tz, self.now()).isoformat(),
                      accounts=len(accounts))
        await self._plan_missing(accounts)
        self._arm_rollover(tz)
        if self.now() - self._last_cleanup > 20 * 3600:
            await self.daily_maintenance()

    async def daily_maintenance(self) -> None:
        assert self.store is not None
        self._last_cleanup = self.now()
        cutoff = self.now() - self.config.daemon.retention
        deleted = await self.store.cleanup(datetime.fromtimestamp(cutoff, UTC).date().isoformat(),
                                           int(cutoff * 1000))
        self.log.info("cleanup", deleted=deleted, older_than=iso_utc(cutoff))
        summary = await self.timezone_counts()
        self.log.info("status summary", timezones=summary, pending_timers=len(self.heap))

    # ------------------------------------------------------------ the timer

    def _arm(self) -> None:
        """Arm the one loop timer for the earliest entry (minus the lead), at most MAX_SLEEP out."""
        if self._stopping:
            return
        due = self.heap.next_due_ms()
        if due is None:
            if self._armed:
                self._armed.cancel()
                self._armed = None
            return
        now = self.now()
        fire_at = due / 1000 - PREPARE_LEAD
        delay = min(max(0.0, fire_at - now), MAX_SLEEP)
        target = self.loop.time() + delay
        if self._armed is not None and not self._armed.cancelled() and self._armed_at <= target:
            return  # already armed early enough
        if self._armed is not None:
            self._armed.cancel()
        self._armed_at = target
        self._armed = self.loop.call_at(target, self._on_timer)

    def _on_timer(self) -> None:
        self._armed = None
        if self._stopping:
            return
        now_ms = int((self.now() + PREPARE_LEAD) * 1000)
        sends: list[tuple[int, int]] = []
        for due_ms, kind, ident in self.heap.pop_due(now_ms):
            if kind == SEND:
                sends.append((ident, due_ms))
            else:
                self._spawn(self._fire_action(ident, due_ms))
        if sends:
            self._spawn(self._fire_many(sends))
        self._arm()

    async def _fire_many(self, due: list[tuple[int, int]]) -> None:
        """Read the rows of all sends that came due together in one query, then
        run each on its own."""
        assert self.store is not None
        rows = await self.store.get_sends([ident for ident, _ in due])
        for ident, due_ms in due:
            row = rows.get(ident)
            if row is not None:
                self._spawn(self._fire_row(row, due_ms))

    async def _fire_action(self, ident: int, due_ms: int) -> None:  # engagement (imap.py)
        if self.engagement is not None:
            await self.engagement.fire(ident, due_ms)

    # ------------------------------------------------------------ sending

    async def _transition(self, row: SendRow, status: str, *, detail: str | None = None, **changes: Any) -> None:
        """Commit a state change (durably, before returning) and log it as one event."""
        assert self.store is not None
        before = row.status
        row.status = status
        for k, v in changes.items():
            setattr(row, k, v)
        await self.store.commit_send(row, before, detail or changes.get("reason") or changes.get("last_error"))
        self.metrics.transitions[(row.account, status)] += 1
        fields: dict[str, Any] = {"account": row.account, "send_id": row.id, "message_id": row.message_id,
                                  "from_status": before, "status": status}
        for k in ("reason", "last_error", "attempts", "smtp_reply"):
            if changes.get(k) is not None:
                fields[k] = changes[k]
        if changes.get("retry_at_ms"):
            fields["retry_at"] = iso_utc(changes["retry_at_ms"] / 1000)
        if detail:
            fields["detail"] = detail
        level = "warning" if status in ("failed", "uncertain") else "info"
        getattr(self.log, level)("send " + status, **fields)

    async def _fire(self, ident: int, due_ms: int) -> None:
        assert self.store is not None
        row = await self.store.get_send(ident)
        if row is not None:
            await self._fire_row(row, due_ms)

    async def _fire_row(self, row: SendRow, due_ms: int) -> None:
        if row.status != "pending":
            return
        account = self.config.account(row.account)
        if account is None:
            await self._transition(row, "skipped", reason="removed: account no longer in config")
            return
        st = self.states.get(account.email)
        if st and st.paused_reason:
            await self._transition(row, "skipped", reason=f"paused: {st.paused_reason}")
            return
        grace = self.config.daemon.grace
        async with self._account_locks[account.email]:
            # An account's sends go one at a time; if this one waited past the grace it is missed.
            instant = max(due_ms / 1000, self.now())
            if instant > row.at_ms / 1000 + grace and instant > due_ms / 1000 + grace:
                await self._transition(row, "skipped", reason="missed")
                return
            if self._stopping:
                return
            await self._send(account, row, instant)

    async def _send(self, account: Account, row: SendRow, instant: float) -> None:
        assert account.smtp is not None
        await self._transition(row, "sending", attempts=row.attempts + 1)
        if row.kind == "reply" and self.engagement is not None:
            message = await self.engagement.build_reply(account, row, instant)
        else:
            message = build_message(account, row.recipient, row.message_id, row.id, instant, self.rng)

        async def data_mark() -> None:
            row.data_mark = 1
            await self.store.commit_send(row, "sending", "DATA mark")  # type: ignore[union-attr]

        # The bound on concurrency covers the SMTP session only: the commits before
        # and after it need no connection slot.
        async with self._sem:
            result = await deliver(account.smtp, account.email, row.recipient, message, at=instant,
                                   on_data_mark=data_mark, now=self.now)
        if result.mail_from_at is not None:
            self.metrics.observe_lateness(max(0.0, result.mail_from_at - instant))
        await self._settle(account, row, result)

    async def _settle(self, account: Account, row: SendRow, result: Result) -> None:
        now = self.now()
        if result.outcome is Outcome.SENT:
            # retry_at_ms stays: the row shows when its last retry was due.
            await self._transition(row, "sent", smtp_reply=result.reply, sent_at_ms=int(now * 1000),
                                   last_error=None)
        elif result.outcome is Outcome.UNCERTAIN:
            await self._transition(row, "uncertain", last_error=result.reply)
        elif result.outcome is Outcome.FAILED:
            await self._transition(row, "failed", last_error=result.reply)
            if result.auth_failed:
                await self.pause(account.email, f"SMTP authentication failed: {result.reply}")
        else:
            await self._retry_or_skip(account, row, result.reply, now)

    async def _retry_or_skip(self, account: Account, row: SendRow, error: str, now: float) -> None:
        if row.attempts >= account.max_attempts:
            await self._transition(row, "skipped", last_error=error,
                                   reason=f"gave up after {row.attempts} attempts: {error}")
            return
        retry_at = now + backoff(row.attempts, self.retry_base, self.rng)
        day = date.fromisoformat(row.local_date)
        if not any(s <= retry_at < e for s, e in window_spans(account.schedule, day)):
            await self._transition(row, "skipped", last_error=error,
                                   reason=f"retry would fall outside the account's windows today: {error}")
            return
        retry_ms = int(retry_at * 1000)
        # The DATA mark is cleared only here, where we know the server never got DATA.
        await self._transition(row, "pending", retry_at_ms=retry_ms, last_error=error, data_mark=0)
        self.heap.push(retry_ms, row.id)
        self._arm()

    # ------------------------------------------------------------ pause / resume

    async def pause(self, email: str, reason: str | None) -> dict[str, Any]:
        assert self.store is not None
        account = self.config.account(email)
        if account is None:
            raise KeyError(email)
        reason = reason or "paused by operator"
        st = self.states.get(email) or self._init_state(account, self.today(account))
        st.paused_reason, st.paused_ms = reason, int(self.now() * 1000)
        self.states[email] = st
        await self.store.upsert_account(st)
        today = self.today(account)
        dates = [today.isoformat(), (today + timedelta(days=1)).isoformat()]
        ids = await self.store.skip_pending(email, f"paused: {reason}", dates)
        for i in ids:
            self.heap.cancel(i)
        self.log.warning("account paused", account=email, reason=reason, skipped=len(ids))
        return {"account": email, "paused": reason, "skipped": len(ids)}

    async def resume(self, email: str) -> dict[str, Any]:
        assert self.store is not None
        account = self.config.account(email)
        if account is None:
            raise KeyError(email)
        st = self.states.get(email)
        was = st.paused_reason if st else None
        if st is not None:
            st.paused_reason = st.paused_ms = None
            await self.store.upsert_account(st)
        before = len(self.heap)
        if was:
            await self._replan_rest_of_today(account)
        self.log.info("account resumed", account=email, was_paused=was)
        return {"account": email, "resumed": bool(was), "planned": len(self.heap) - before}

    async def _replan_rest_of_today(self, account: Account) -> None:
        """Plan what remains of today's target (sends already made count against it)."""
        assert self.store is not None
        today = self.today(account)
        st = await self._advance(account, today)
        already = await self.store.count_sent(account.email, today.isoformat())
        await self._plan_items([(account, today, st.warmup_day, self.now(), already)])

    # ------------------------------------------------------------ status

    def _next_send_info(self) -> dict[str, Any] | None:
        due = self.heap.next_due_ms()
        if due is None:
            return None
        return {"at_utc": iso_utc(due / 1000)}

    def status_line(self) -> str:
        nxt = self.heap.next_due_ms()
        sent = sum(v for (a, s), v in self.metrics.transitions.items() if s == "sent")
        when = iso_utc(nxt / 1000)[11:19] + " UTC" if nxt else "none"
        return f"{len(self.heap)} pending, next {when}, {sent} sent since start"

    async def timezone_counts(self) -> dict[str, dict[str, int]]:
        assert self.store is not None
        counts = await self.store.day_counts((a.email, self.today(a).isoformat()) for a in self.config.accounts)
        out: dict[str, dict[str, int]] = {}
        for a in self.config.accounts:
            tzc = out.setdefault(a.timezone, {s: 0 for s in ("pending", "sending", "sent", "failed",
                                                              "skipped", "uncertain")})
            for s, n in counts.get(a.email, {}).items():
                tzc[s] = tzc.get(s, 0) + n
        return out

    # ------------------------------------------------------------ reload (SIGHUP)

    def on_sighup(self) -> None:
        if self._stopping:
            return
        if not self.ready:
            self.log.info("reload requested while starting; it runs once start-up is done")
            self._reload_after_start = True
            return
        self._spawn(self.reload())

    async def reload(self) -> dict[str, Any]:
        """Re-read the config; apply the difference, or keep running on the old one."""
        async with self._reload_lock:
            if self.notifier is not None:
                self.notifier.reloading("reloading config")
            self.metrics.reloads += 1
            try:
                new = load_config(self.config.path)
            except ConfigError as e:
                self.metrics.reload_failures += 1
                self.last_reload_error = f"{len(e.problems)} problem(s): " + "; ".join(e.problems)
                for p in e.problems:
                    self.log.error("reload rejected", problem=p, config=str(self.config.path))
                self.log.error("reload failed; still running on the previous config",
                               problems=len(e.problems))
                if self.notifier is not None:
                    self.notifier.ready(f"reload failed ({len(e.problems)} problems); "
                                        f"running on the previous config; {self.status_line()}")
                return {"ok": False, "errors": e.problems, "changes": []}
            try:
                changes = await self._apply(new)
            except Exception as e:  # unexpected: record it and stay ready on what was applied
                self.metrics.reload_failures += 1
                self.last_reload_error = f"reload failed while applying: {type(e).__name__}: {e}"
                self.log.exception("reload failed while applying")
                if self.notifier is not None:
                    self.notifier.ready(f"reload failed; {self.status_line()}")
                return {"ok": False, "errors": [self.last_reload_error], "changes": []}
            self.last_reload_error = None
            self.config_loaded_at = time.time()
            if self.notifier is not None:
                self.notifier.ready(self.status_line())
            self.log.info("reloaded", changes=changes, config=str(new.path))
            return {"ok": True, "errors": [], "changes": changes}

    async def _apply(self, new: Config) -> list[str]:
        old = self.config
        changes: list[str] = []
        for key in ("state_dir", "socket"):
            if getattr(old.daemon, key) != getattr(new.daemon, key):
                msg = f"daemon.{key} changed: needs a restart to take effect"
                changes.append(msg)
                self.log.warning("restart needed", setting=f"daemon.{key}")
        # Settings that cannot change while running keep their old values.
        from dataclasses import replace

        daemon_settings = replace(new.daemon, state_dir=old.daemon.state_dir, socket=old.daemon.socket)
        new = replace(new, daemon=daemon_settings)
        for secret in new.secrets():
            register_secret(secret)
        if (old.daemon.log_format, old.daemon.log_level) != (new.daemon.log_format, new.daemon.log_level):
            configure_logging(new.daemon.log_format, new.daemon.log_level)
            changes.append(f"logging: {new.daemon.log_format}/{new.daemon.log_level}")
        old_by = {a.email: a for a in old.accounts}
        new_by = {a.email: a for a in new.accounts}
        self.config = new
        self.pool = Pool(list(new_by))
        if new.daemon.max_concurrent_sends != old.daemon.max_concurrent_sends:
            self._sem = asyncio.Semaphore(new.daemon.max_concurrent_sends)
        assert self.store is not None
        for email in old_by.keys() - new_by.keys():
            a = old_by[email]
            today = local_date(a.timezone, self.now())
            ids = await self.store.skip_pending(email, "removed: account no longer in config",
                                                [today.isoformat(), (today + timedelta(days=1)).isoformat()])
            for i in ids:
                self.heap.cancel(i)
            changes.append(f"removed {email} ({len(ids)} pending sends skipped)")
        added = [new_by[e] for e in sorted(new_by.keys() - old_by.keys())]
        if added:
            await self._plan_missing(added)
            changes.extend(f"added {a.email}" for a in added)
        for email in sorted(new_by.keys() & old_by.keys()):
            a, b = old_by[email], new_by[email]
            if (a.schedule, a.start_date, a.engagement, a.imap is None) != \
                    (b.schedule, b.start_date, b.engagement, b.imap is None):
                st = self.states.get(email)
                if st and st.paused_reason:
                    changes.append(f"{email}: schedule changed (paused: plans on resume)")
                    continue
                today = local_date(b.timezone, self.now())
                ids = await self.store.skip_pending(email, "replanned after a config change", [today.isoformat()])
                for i in ids:
                    self.heap.cancel(i)
                await self._replan_rest_of_today(b)
                changes.append(f"{email}: schedule changed, rest of today re-planned")
            elif a != b:
                changes.append(f"{email}: settings changed, apply from the next send")
        for tz in {a.timezone for a in new.accounts} - set(self._rollovers):
            self._arm_rollover(tz)
        if self.engagement is not None:  # IMAP connections follow the new accounts (imap.py)
            self.engagement.sync_accounts()
        self._arm()
        return changes

    # ------------------------------------------------------------ the control socket

    def _require_ready(self) -> None:
        if not self.ready:
            from .control import ControlError

            raise ControlError("warmupd is still starting (recovery and planning); try again in a moment")

    def _account_or_error(self, email: str) -> Account:
        self._require_ready()
        account = self.config.account(email)
        if account is None:
            from .control import ControlError

            raise ControlError(f"no account {email!r}; warmupctl accounts lists them")
        return account

    async def cmd_version(self) -> dict[str, Any]:
        import platform

        return {"version": __version__, "python": platform.python_version(),
                "loop": type(self.loop).__module__.split(".")[0],
                "schema_version": await self.store.schema_version() if self.store else None,
                "ready": self.ready}

    async def cmd_status(self) -> dict[str, Any]:
        self._require_ready()
        tzc = await self.timezone_counts()
        today: dict[str, int] = {s: 0 for s in ("pending", "sending", "sent", "failed", "skipped", "uncertain")}
        for counts in tzc.values():
            for k, v in counts.items():
                today[k] = today.get(k, 0) + v
        paused = [{"email": e, "reason": st.paused_reason} for e, st in sorted(self.states.items())
                  if st.paused_reason and self.config.account(e)]
        holds = [{"email": e, "until": st.hold_until, "reason": st.hold_reason}
                 for e, st in sorted(self.states.items())
                 if st.hold_until and self.config.account(e)
                 and st.hold_until > local_date(self.config.account(e).timezone, self.now()).isoformat()]  # type: ignore[union-attr]
        out: dict[str, Any] = {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.metrics.started, 3),
            "config_path": str(self.config.path),
            "config_loaded_at": iso_utc(self.config_loaded_at),
            "last_reload_error": self.last_reload_error,
            "accounts": {"active": len(self.config.accounts) - len(paused), "paused": len(paused),
                         "paused_list": paused},
            "today": today,
            "pending_timers": len(self.heap),
            "next_send": await self._next_send(),
            "timezones": tzc,
            "loop_lag_ms": round(self.metrics.loop_lag * 1000, 3),
            "holds": holds,
        }
        if self.engagement is not None and hasattr(self.engagement, "totals_today"):
            out["engagement_today"] = self.engagement.totals_today()
        return out

    async def _next_send(self) -> dict[str, Any] | None:
        assert self.store is not None
        for due_ms, kind, ident in self.heap.peek(8):
            if kind != SEND:
                continue
            row = await self.store.get_send(ident)
            if row is None:
                continue
            account = self.config.account(row.account)
            tz = account.timezone if account else "UTC"
            return {"account": row.account, "send_id": ident, "at": iso_local(tz, due_ms / 1000),
                    "at_utc": iso_utc(due_ms / 1000), "timezone": tz}
        return None

    async def cmd_accounts(self) -> list[dict[str, Any]]:
        self._require_ready()
        assert self.store is not None
        out = []
        for a in self.config.accounts:
            day = self.today(a)
            st = self.states.get(a.email)
            wday = st.warmup_day if st else projected_warmup_day(a, day)
            counts = (await self.store.day_counts([(a.email, day.isoformat())])).get(a.email, {})
            from .calendar import why_not_sending

            item: dict[str, Any] = {
                "email": a.email, "timezone": a.timezone, "warmup_day": wday,
                "target_today": day_target(a, wday) if why_not_sending(a, day) is None else 0,
                "sent_today": counts.get("sent", 0), "pending_today": counts.get("pending", 0),
                "paused": st.paused_reason if st else None,
                "hold": ({"until": st.hold_until, "reason": st.hold_reason}
                         if st and st.hold_until and st.hold_until > day.isoformat() else None),
                "imap": a.imap is not None,
            }
            if self.engagement is not None and a.imap is not None:
                item["engagement_today"] = self.engagement.today(a.email)
            out.append(item)
        return out

    async def cmd_schedule(self, account: str, date_: str | None = None, **kw: Any) -> list[dict[str, Any]]:
        assert self.store is not None
        from .control import ControlError

        a = self._account_or_error(account)
        date_ = date_ or kw.get("date")
        if date_:
            try:
                day = date.fromisoformat(date_)
            except ValueError:
                raise ControlError(f"date must be YYYY-MM-DD, got {date_!r}") from None
        else:
            day = self.today(a)
        rows = await self.store.day_rows(a.email, day.isoformat())
        return [{"id": r.id, "at": iso_local(a.timezone, r.at_ms / 1000), "at_utc": iso_utc(r.at_ms / 1000),
                 "period": r.period, "recipient": r.recipient, "message_id": r.message_id,
                 "kind": r.kind, "status": r.status, "attempts": r.attempts,
                 "reason": r.reason if r.status == "skipped" else (r.last_error if r.status in ("failed", "uncertain") else None),
                 "last_error": r.last_error,
                 "retry_at": iso_utc(r.retry_at_ms / 1000) if r.retry_at_ms else None,
                 "sent_at": iso_utc(r.sent_at_ms / 1000) if r.sent_at_ms else None} for r in rows]

    async def cmd_pause(self, account: str, reason: str | None = None) -> dict[str, Any]:
        self._account_or_error(account)
        return await self.pause(account, reason)

    async def cmd_resume(self, account: str) -> dict[str, Any]:
        self._account_or_error(account)
        return await self.resume(account)

    async def cmd_reload(self) -> dict[str, Any]:
        self._require_ready()
        return await self.reload()

    async def cmd_metrics(self) -> str:
        self._require_ready()
        m = self.metrics
        lines = [
            "# HELP warmupd_sends_total Send state changes since start, by account and new status.",
            "# TYPE warmupd_sends_total counter",
        ]
        for (account, status), n in sorted(m.transitions.items()):
            lines.append(f'warmupd_sends_total{{account="{account}",status="{status}"}} {n}')
        lines += ["# HELP warmupd_send_lateness_seconds MAIL FROM time minus the planned instant.",
                  "# TYPE warmupd_send_lateness_seconds histogram"]
        counts = m.lateness_counts or [0] * len(m.lateness_buckets)
        for b, c in zip(m.lateness_buckets, counts, strict=True):
            lines.append(f'warmupd_send_lateness_seconds_bucket{{le="{b}"}} {c}')
        lines += [f'warmupd_send_lateness_seconds_bucket{{le="+Inf"}} {m.lateness_n}',
                  f"warmupd_send_lateness_seconds_sum {m.lateness_sum:.6f}",
                  f"warmupd_send_lateness_seconds_count {m.lateness_n}",
                  "# HELP warmupd_pending_timers Timers held in memory.",
                  "# TYPE warmupd_pending_timers gauge",
                  f"warmupd_pending_timers {len(self.heap)}",
                  "# HELP warmupd_loop_lag_seconds Event loop lag, last sample.",
                  "# TYPE warmupd_loop_lag_seconds gauge",
                  f"warmupd_loop_lag_seconds {m.loop_lag:.6f}",
                  "# HELP warmupd_reloads_total Config reloads attempted.",
                  "# TYPE warmupd_reloads_total counter",
                  f"warmupd_reloads_total {m.reloads}",
                  "# HELP warmupd_reload_failures_total Config reloads rejected.",
                  "# TYPE warmupd_reload_failures_total counter",
                  f"warmupd_reload_failures_total {m.reload_failures}",
                  "# HELP warmupd_accounts_paused Accounts paused now.",
                  "# TYPE warmupd_accounts_paused gauge",
                  f"warmupd_accounts_paused {sum(1 for st in self.states.values() if st.paused_reason)}"]
        if self.engagement is not None and hasattr(self.engagement, "metrics_lines"):
            lines += self.engagement.metrics_lines()
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------ loop health

    async def _lag_monitor(self) -> None:
        interval = 0.5
        loop = self.loop
        ticks = 0
        while not self._stopping:
            t0 = loop.time()
            await asyncio.sleep(interval)
            self.metrics.loop_lag = max(0.0, loop.time() - t0 - interval)
            ticks += 1
            if ticks % 10 == 0 and self.notifier is not None and not self._reload_lock.locked():
                self.notifier.status(self.status_line())

    # ------------------------------------------------------------ stop

    def request_stop(self) -> None:
        if not self._stopping:
            self._stopping = True
            self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def shutdown(self) -> None:
        """Stop firing, let sends in flight finish (bounded), commit, close."""
        self._stopping = True
        if self.notifier is not None:
            self.notifier.stopping()
        if self._armed:
            self._armed.cancel()
        for h in self._rollovers.values():
            h.cancel()
        current = asyncio.current_task()
        # Background loops never finish by themselves: waiting for them would hold the stop
        # for shutdown_timeout (and keep pinging WATCHDOG=1 after STOPPING=1).
        for t in self._background:
            t.cancel()
        inflight = [t for t in self._tasks if t is not current and t not in self._background]
        self.log.info("stopping", in_flight=len(inflight))
        if inflight:
            done, pending = await asyncio.wait(inflight, timeout=self.config.daemon.shutdown_timeout)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self.engagement is not None:
            await self.engagement.stop()
        if self.control is not None:
            await self.control.close()
        if self.store is not None:
            await self.store.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        self.log.info("stopped")


class DaemonError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _install_loop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _amain(config: Config) -> int:
    from .notify import Notifier

    notifier = Notifier.from_env()
    daemon = Daemon(config, notifier=notifier)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, daemon.request_stop)
    loop.add_signal_handler(signal.SIGINT, daemon.request_stop)
    reload_handler = getattr(daemon, "on_sighup", None)
    if reload_handler is not None:
        loop.add_signal_handler(signal.SIGHUP, reload_handler)
    try:
        await daemon.start()
    except DaemonError as e:
        daemon.log.error("cannot start", error=str(e))
        print(f"warmupd: {e}", file=sys.stderr)
        with contextlib.suppress(Exception):
            await daemon.shutdown()
        return e.code
    await daemon.wait_stopped()
    await daemon.shutdown()
    return 0


def main(config_path: str | Path) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as e:
        print(f"warmupd: {e.path or config_path}: invalid config, {len(e.problems)} problem(s):", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        return EX_CONFIG
    for secret in config.secrets():
        register_secret(secret)
    configure_logging(config.daemon.log_format, config.daemon.log_level)
    _install_loop()
    return asyncio.run(_amain(config))


__all__ = ["Daemon", "DaemonError", "main", "plan_and_persist"]
