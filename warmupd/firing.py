"""Where a send is fired: the one armed loop timer, the send state machine, recovery.

The timer structure (timers.py) holds the due sends and engagement actions as
ints; one loop timer is armed for the earliest entry minus the preparation lead
(at most ``MAX_SLEEP`` ahead) and re-armed whenever an earlier entry arrives.
There is no polling loop. Each due send runs as its own task:

    pending -> sending        committed before the connection opens (the mark)
    sending -> sent           after the server's 250 to the message
            -> uncertain      a timeout or a dropped connection after the DATA mark:
                              never resent, a double send hurts more than a miss
            -> failed         a 5xx (a 535 also pauses the account)
            -> pending        a 4xx or a connection problem before DATA: retried
                              later inside the account's windows, or skipped

Every change is conditional on the status it expects (store.py): a send paused,
removed or re-planned while it waited for its account's turn or for the store
loses that race and never goes out.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from datetime import date
from functools import partial
from typing import Any, Protocol

from . import faults
from .calendar import iso_utc, window_spans
from .config import Account, Config
from .logs import get_logger
from .metrics import Metrics
from .smtp import Outcome, Result, build_message, deliver
from .store import Recovery, SendRow, Store
from .timers import ACTION, SEND, TimerHeap

PREPARE_LEAD = 1.0  # seconds before the instant at which a send starts its session
MAX_SLEEP = 1.0  # one armed sleep at most; the kernel's slack on long sleeps is ~0.1 %
READ_RETRY = (0.05, 5.0)  # backoff of a failing row read on the firing path
HORIZON = 900.0  # seconds of the future held in memory; the rest is paged in (WARMUPD_HORIZON)


class Clock(Protocol):
    def now(self) -> float: ...


class Spawn(Protocol):
    def __call__(self, coro: Coroutine[Any, Any, Any], *, critical: bool = False) -> asyncio.Task[Any]: ...


ReplyBuilder = Callable[[Account, SendRow, float], Awaitable[bytes]]
ActionRunner = Callable[[int, int], Coroutine[Any, Any, None]]


def backoff(attempt: int, base: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter around the doubling: base*2^(n-1) x [0.5, 1.5)."""
    return base * (2.0 ** (attempt - 1)) * (0.5 + rng.random())


class Firing:
    """The timers and the send state machine. The daemon wires it (daemon.py)."""

    def __init__(self, *, config: Callable[[], Config], store: Store, clock: Clock, rng: random.Random,
                 metrics: Metrics, paused: Callable[[str], str | None],
                 pause: Callable[[str, str], Awaitable[Any]], spawn: Spawn, retry_base: float,
                 token: Callable[[str, str | None], Awaitable[str]] | None = None) -> None:
        self._config = config
        self._token = token  # an OAuth account's access token (oauth.Tokens.token)
        self.store = store
        self.clock = clock
        self.rng = rng
        self.metrics = metrics
        self._paused = paused
        self._pause = pause
        self._spawn = spawn
        self.retry_base = retry_base
        self.horizon = float(os.environ.get("WARMUPD_HORIZON", HORIZON))
        self.timers = TimerHeap()
        self.log = get_logger("warmupd")
        self._armed: asyncio.TimerHandle | None = None
        self._armed_at = 0.0
        self._account_locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._sem = asyncio.Semaphore(config().daemon.max_concurrent_sends)
        self._stopping = False
        self.build_reply: ReplyBuilder | None = None  # engagement (imap.py), when configured
        self.run_action: ActionRunner | None = None

    def now(self) -> float:
        return self.clock.now()

    def set_concurrency(self, n: int) -> None:
        self._sem = asyncio.Semaphore(n)

    def stop(self) -> None:
        self._stopping = True
        if self._armed:
            self._armed.cancel()
            self._armed = None

    # ------------------------------------------------------------ the timer structure

    def schedule(self, due_ms: int, ident: int, kind: int = SEND) -> None:
        """Hold a send (or an engagement action) for its due time and arm for it."""
        self.timers.push(due_ms, ident, kind)
        self.arm()

    def schedule_keys(self, keys: list[tuple[int, int, str]]) -> None:
        """Hold many sends (``Store.insert_plan``'s keys), then arm once."""
        for due_ms, ident, _ in keys:
            self.timers.push(due_ms, ident)
        self.arm()

    def cancel(self, ident: int, kind: int = SEND) -> None:
        self.timers.cancel(ident, kind)

    def next_due_ms(self) -> int | None:
        return self.timers.next_due_ms()

    def arm(self) -> None:
        """Arm the one loop timer for the earliest entry (minus the lead), at most MAX_SLEEP out."""
        if self._stopping:
            return
        due = self.timers.next_due_ms()
        if due is None:
            if self._armed:
                self._armed.cancel()
                self._armed = None
            return
        loop = asyncio.get_running_loop()
        delay = min(max(0.0, due / 1000 - PREPARE_LEAD - self.now()), MAX_SLEEP)
        target = loop.time() + delay
        if self._armed is not None and not self._armed.cancelled() and self._armed_at <= target:
            return  # already armed early enough
        if self._armed is not None:
            self._armed.cancel()
        self._armed_at = target
        self._armed = loop.call_at(target, self._on_timer)

    def _on_timer(self) -> None:
        self._armed = None
        if self._stopping:
            return
        now_ms = int((self.now() + PREPARE_LEAD) * 1000)
        sends: list[tuple[int, int]] = []
        for due_ms, kind, ident in self.timers.pop_due(now_ms):
            if kind == SEND:
                sends.append((ident, due_ms))
            elif kind == ACTION and self.run_action is not None:
                self._spawn(self.run_action(ident, due_ms))
        if sends:
            self._spawn(self._fire_many(sends), critical=True)
        self.arm()

    async def _fire_many(self, due: list[tuple[int, int]]) -> None:
        """Read the rows of all sends that came due together in one query, then run
        each on its own. A failing read is retried: these sends are off the timer
        structure now, and must not be dropped."""
        attempt = 0
        while True:
            try:
                rows = await self.store.get_sends([ident for ident, _ in due])
                break
            except Exception as e:
                if self._stopping:
                    return
                attempt += 1
                wait = min(READ_RETRY[1], READ_RETRY[0] * 2 ** attempt)
                self.log.warning("reading due sends failed; retrying", sends=len(due), error=str(e),
                                 retry_in_s=round(wait, 3))
                await asyncio.sleep(wait)
        for ident, due_ms in due:
            row = rows.get(ident)
            if row is not None:
                self._spawn(self._fire_row(row, due_ms))

    # ------------------------------------------------------------ the state machine

    async def transition(self, row: SendRow, status: str, *, detail: str | None = None, **changes: Any) -> bool:
        """Commit a state change (durably, before returning) and log it as one event.

        False when the stored row was no longer in the status ``row`` had: another
        change won, nothing was written, and the caller must let the send go."""
        before = row.status
        row.status = status
        for k, v in changes.items():
            setattr(row, k, v)
        if not await self.store.commit_send(row, before, detail or changes.get("reason") or changes.get("last_error")):
            self.metrics.lost_races += 1
            self.log.info("send change dropped: the row changed meanwhile", account=row.account,
                          send_id=row.id, expected=before, wanted=status)
            return False
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
        return True

    async def _fire_row(self, row: SendRow, due_ms: int) -> None:
        if row.status != "pending":
            return
        account = self._config().account(row.account)
        if account is None:
            await self.transition(row, "skipped", reason="removed: account no longer in config")
            return
        reason = self._paused(account.email)
        if reason:
            await self.transition(row, "skipped", reason=f"paused: {reason}")
            return
        grace = self._config().daemon.grace
        async with self._account_locks[account.email]:
            # An account's sends go one at a time; if this one waited past the grace it is missed.
            instant = max(due_ms / 1000, self.now())
            if self._missed(row, due_ms, instant, grace):
                await self.transition(row, "skipped", reason="missed")
                return
            if self._stopping:
                return
            await self._send(account, row, due_ms, instant)

    @staticmethod
    def _missed(row: SendRow, due_ms: int, t: float, grace: float) -> bool:
        return t > row.at_ms / 1000 + grace and t > due_ms / 1000 + grace

    async def _send(self, account: Account, row: SendRow, due_ms: int, instant: float) -> None:
        assert account.smtp is not None
        if not await self.transition(row, "sending", attempts=row.attempts + 1):
            return  # paused, removed or re-planned while it waited: it never goes out
        faults.point("firing.after_sending")
        # The mark may have waited for the store (locked by another process, disk full):
        # a send that can no longer make its moment within the grace is missed, never late.
        now = self.now()
        if self._missed(row, due_ms, now, self._config().daemon.grace):
            await self.transition(row, "skipped", reason="missed: the state database could not take "
                                  "the send's mark in time", attempts=row.attempts - 1)
            return
        instant = max(instant, now)
        if row.kind == "reply" and self.build_reply is not None:
            message = await self.build_reply(account, row, instant)
        else:
            rcpt = self._config().account(row.recipient)
            message = build_message(account, row.recipient, row.message_id, row.id, instant, self.rng,
                                    recipient_name=rcpt.display_name if rcpt is not None else None)

        async def data_mark() -> None:
            row.data_mark = 1
            if not await self.store.commit_send(row, "sending", "DATA mark"):
                raise RuntimeError(f"send {row.id}: its row left 'sending' during the session")
            faults.point("firing.after_data_mark")

        # The bound on concurrency covers the SMTP session only: the commits before
        # and after it need no connection slot.
        async with self._sem:
            # Never later than the grace after the planned instant (or its retry time).
            latest = max(row.at_ms, due_ms) / 1000 + self._config().daemon.grace
            tokens = (partial(self._token, account.email)
                      if self._token is not None and account.smtp.auth == "oauth" else None)
            result = await deliver(account.smtp, account.email, row.recipient, message, at=instant,
                                   on_data_mark=data_mark, now=self.now, latest=latest, tokens=tokens)
        if result.mail_from_at is not None:
            self.metrics.observe_lateness(max(0.0, result.mail_from_at - instant))
        if result.outcome is Outcome.SENT:
            faults.point("firing.after_server_ok")
        await self._settle(account, row, result)

    async def _settle(self, account: Account, row: SendRow, result: Result) -> None:
        now = self.now()
        if result.outcome is Outcome.SENT:
            # retry_at_ms stays: the row shows when its last retry was due.
            await self.transition(row, "sent", smtp_reply=result.reply, sent_at_ms=int(now * 1000),
                                  last_error=None)
        elif result.outcome is Outcome.MISSED:
            await self.transition(row, "skipped", reason=result.reply, attempts=row.attempts - 1)
        elif result.outcome is Outcome.UNCERTAIN:
            await self.transition(row, "uncertain", last_error=result.reply)
        elif result.outcome is Outcome.FAILED:
            await self.transition(row, "failed", last_error=result.reply)
            if result.auth_failed:
                await self._pause(account.email, f"SMTP authentication failed: {result.reply}")
        else:
            await self._retry_or_skip(account, row, result.reply, now)

    async def _retry_or_skip(self, account: Account, row: SendRow, error: str, now: float) -> None:
        if row.attempts >= account.max_attempts:
            await self.transition(row, "skipped", last_error=error,
                                  reason=f"gave up after {row.attempts} attempts: {error}")
            return
        retry_at = now + backoff(row.attempts, self.retry_base, self.rng)
        day = date.fromisoformat(row.local_date)
        if not any(s <= retry_at < e for s, e in window_spans(account.schedule, day)):
            await self.transition(row, "skipped", last_error=error,
                                  reason=f"retry would fall outside the account's windows today: {error}")
            return
        retry_ms = int(retry_at * 1000)
        # The DATA mark is cleared only here, where we know the server never got DATA.
        if await self.transition(row, "pending", retry_at_ms=retry_ms, last_error=error, data_mark=0):
            self.schedule(retry_ms, row.id)

    # ------------------------------------------------------------ recovery

    async def recover(self) -> Recovery:
        """Settle what a crash or a stop left behind, then hold the near future.

        Rows left in ``sending`` are retried if they never reached the DATA mark and
        marked ``uncertain`` if they did; pending sends more than the grace late are
        skipped ``missed``; those within it (the backlog) go out at once, one at a
        time per account, ``min_gap`` apart. Then the sends due within the horizon
        are paged in (``page_loop`` keeps paging), and every pending retry."""
        cfg = self._config()
        now = self.now()
        now_ms = int(now * 1000)
        accounts = {a.email: self._paused(a.email) for a in cfg.accounts}
        grace = cfg.daemon.grace
        rec = await self.store.recover(now_ms, int(grace * 1000), accounts)
        for what in ("uncertain", "retried", "removed", "paused", "missed"):
            n = getattr(rec, what)
            if n:
                self.log.info("recovery", what=what, count=n)
        for due_ms, ident, _ in await self.store.start_horizon(now_ms, now_ms + int(self.horizon * 1000)):
            self.timers.push(due_ms, ident)
        for due_ms, ident, _ in await self.store.retry_keys(now_ms):
            self.timers.push(due_ms, ident)
        # A backlog goes out at once, one send at a time per account, min_gap apart;
        # a send whose turn would come later than the grace after its instant is missed.
        # (A backlog send can come closer than min_gap to the account's next planned
        # send: "at once" wins, as the recovery rule says; planned instants don't move.)
        by_account: dict[str, list[SendRow]] = defaultdict(list)
        for row in rec.backlog:
            by_account[row.account].append(row)
        for email, rows in by_account.items():
            account = cfg.account(email)
            if account is None:
                continue
            turn = now
            for row in sorted(rows, key=lambda r: r.due_ms):
                if turn > row.due_ms / 1000 + grace:
                    await self.transition(row, "skipped", reason="missed")
                    continue
                self.timers.push(int(turn * 1000), row.id)
                turn += account.schedule.min_gap
        self.arm()
        return rec

    async def page_loop(self) -> None:
        """Page the sends of the next ``horizon`` into the timers, every third of it.

        Each page is one range scan of a small index (store.page_in); a failing
        page is retried: the horizon only moves once a page was read."""
        every = max(1.0, self.horizon / 3)
        attempt = 0
        while not self._stopping:
            await asyncio.sleep(every if attempt == 0 else min(every, 0.5 * 2 ** attempt))
            try:
                keys = await self.store.page_in(int((self.now() + self.horizon) * 1000))
            except Exception as e:
                attempt += 1
                self.log.warning("paging sends in failed; retrying", error=str(e), attempt=attempt)
                continue
            attempt = 0
            for due_ms, ident, _ in keys:
                self.timers.push(due_ms, ident)
            if keys:
                self.arm()
