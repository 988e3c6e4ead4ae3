"""The daemon's wiring and life cycle: start, reload, stop.

Start-up (``Daemon.start``): lock the state folder, bind the control socket,
open the store (a damaged file stops here, untouched), settle what a crash
left (firing.py), plan every account-day not yet planned (planning.py), start
IMAP engagement (imap.py), arm the timers and each zone's midnight, READY=1.

Where things happen: a send is planned in planning.py, held and fired in
firing.py (with smtp.py on the wire), and persisted by store.py; the control
socket's answers are in commands.py. This module only connects them and owns
what concerns the process as a whole: signals, reload, health, the watchdog.

Failures: an unexpected error in a critical task (firing, a rollover past its
retries) ends the daemon with exit status 70 so that systemd restarts it and
recovery settles the rest; the store retries its own transient and persistent
errors, and while it cannot take writes no send starts, status and STATUS=
say why, and past ``store_stall_limit`` the watchdog pings stop.
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
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from . import faults
from .calendar import iso_utc, local_date
from .commands import Commands
from .config import EX_CONFIG, Account, Config, ConfigError, DnsSettings, load_config
from .firing import Clock, Firing
from .logs import configure_logging, get_logger, register_secret
from .metrics import Metrics
from .oauth import OAUTH_MISSING, Tokens
from .planning import Planning
from .store import FULL_CHECK_MAX, AccountState, Health, Store, StoreError
from .timers import SEND

EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
START_STORE_PATIENCE = 30.0  # while starting, a store that fails this long ends the start


class RealClock:
    """Wall time in UTC seconds; the loop's timers are mapped onto it."""

    def now(self) -> float:
        return time.time()


class DaemonError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Daemon:
    def __init__(self, config: Config, *, clock: Clock | None = None, rng: random.Random | None = None,
                 notifier: Any = None, retry_base: float = 60.0) -> None:
        self.config = config
        self.clock = clock or RealClock()
        self.rng = rng or random.Random()
        self.notifier = notifier
        self.retry_base = float(os.environ.get("WARMUPD_RETRY_BASE", retry_base))
        self.log = get_logger("warmupd")
        self.metrics = Metrics(started=time.time())
        self.config_loaded_at = time.time()
        self.last_reload_error: str | None = None
        self.store: Store | None = None
        self.planning: Planning | None = None
        self.firing: Firing | None = None
        self.engagement: Any = None  # imap.Engagement when any account has imap
        self.tokens: Tokens | None = None  # OAuth access tokens (oauth.py)
        self.reputation: Any = None  # reputation.Reputation: DNS, blocklists, health
        self.commands = Commands(self)
        self.control: Any = None
        self.web: Any = None  # web.LivePage when daemon.http is set
        self.ready = False
        self.exit_code = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._critical: set[asyncio.Task[Any]] = set()
        self._background: list[asyncio.Task[Any]] = []  # lag monitor, watchdog: cancelled at stop
        self._stopping = False
        self._stopped = asyncio.Event()
        self._lock_fd: int | None = None
        self._reload_lock = asyncio.Lock()
        self._reload_after_start = False

    # ------------------------------------------------------------ helpers

    def now(self) -> float:
        return self.clock.now()

    def today(self, account: Account) -> date:
        return local_date(account.timezone, self.now())

    def spawn(self, coro: Coroutine[Any, Any, Any], *, critical: bool = False) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the daemon waits for at stop. A ``critical`` task that
        fails ends the daemon (exit 70) instead of leaving work undone silently."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        if critical:
            self._critical.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        critical = task in self._critical
        self._critical.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        if critical and not self._stopping:
            self.fail(exc)
        else:
            self.log.error("task failed", error=repr(exc), exc_info=exc)

    def fail(self, exc: BaseException | None) -> None:
        """An error the daemon cannot carry on from safely: log it and stop with exit 70;
        systemd restarts the daemon and recovery settles what was in flight."""
        self.log.error("fatal error; stopping for a restart", error=repr(exc), exc_info=exc)
        self.exit_code = EX_SOFTWARE
        self.request_stop()

    def health(self) -> dict[str, Any]:
        h = self.store.health if self.store is not None else Health()
        return {"ok": h.ok, "error": h.error, "since": iso_utc(h.since) if h.since else None,
                "stalled_s": round(h.stalled_for(time.time()), 3), "spells": h.spells}

    # ------------------------------------------------------------ start-up

    def _lock_state(self) -> None:
        """One daemon per state folder: a second one refuses to start."""
        d = self.config.daemon.state_dir
        try:
            d.mkdir(parents=True, exist_ok=True)
            fd = os.open(d / "warmupd.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise DaemonError(EX_CANTCREAT, f"cannot use the state folder {d}: {e.strerror}; "
                                            "check that it exists and is writable by this user") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DaemonError(EX_TEMPFAIL, f"{d} is in use by another running warmupd: stop it first "
                                           "(or give this one its own state_dir)") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the pid in the lock file is informative only (a full disk must not stop us here)
        self._lock_fd = fd

    async def start(self) -> None:
        self._lock_state()
        await self._start_control()
        await self._start_web()
        try:
            self.store = await Store.open(self.config.daemon.database)
        except StoreError as e:
            raise DaemonError(EX_CANTCREAT, str(e)) from None
        self.store.on_health = self._on_store_health
        self.tokens = Tokens(self.store, refused=self._pause_for, now=self.clock.now, rng=self.rng)
        self.firing = Firing(config=lambda: self.config, store=self.store, clock=self.clock, rng=self.rng,
                             metrics=self.metrics, paused=self._paused, pause=self._pause_for,
                             spawn=self.spawn, retry_base=self.retry_base, token=self.tokens.token)
        self.planning = Planning(config=lambda: self.config, store=self.store, clock=self.clock, rng=self.rng,
                                 timers=self.firing, spawn=self.spawn)
        try:
            await self._start_work()
        except StoreError as e:
            raise DaemonError(EX_CANTCREAT, f"cannot start: {e}") from None
        self._background.append(self.spawn(self._lag_monitor()))
        if self.notifier is not None:
            from .notify import watchdog_loop

            interval = self.notifier.watchdog_interval()
            if interval:
                self._background.append(self.spawn(watchdog_loop(self.notifier, lambda: self._healthy(interval))))
            self.notifier.ready(self.status_line())
        self.ready = True
        if self._reload_after_start:  # a SIGHUP came while starting
            self.spawn(self.reload())
        self.log.info("ready", pending_timers=len(self.firing.timers), accounts=len(self.config.accounts),
                      next_send=self._next_send_info(), database=str(self.config.daemon.database),
                      socket=str(self.config.daemon.socket))

    async def _start_work(self) -> None:
        """Recovery and planning; a store that stays unusable meanwhile ends the start."""
        assert self.store is not None and self.planning is not None and self.firing is not None
        store = self.store

        async def watch() -> None:
            while True:
                await asyncio.sleep(0.5)
                if store.health.stalled_for(time.time()) > START_STORE_PATIENCE:
                    raise StoreError(f"{store.health.error}; gave up starting after "
                                     f"{START_STORE_PATIENCE:.0f} s")

        watcher = asyncio.create_task(watch())
        work = asyncio.create_task(self._recover_and_plan())
        try:
            done, _ = await asyncio.wait([watcher, work], return_when=asyncio.FIRST_COMPLETED)
            if watcher in done:
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
                watcher.result()
            work.result()
        finally:
            watcher.cancel()

    async def _recover_and_plan(self) -> None:
        assert self.planning is not None and self.firing is not None
        await self.planning.load()
        await self._configure_tokens(self.config)
        await self.firing.recover()
        await self.planning.plan_missing(background=True)
        if any(a.imap is not None for a in self.config.accounts):
            from .imap import Engagement  # IMAP engagement: watch, place, act

            self.engagement = Engagement(_EngagementHost(self))
            self.firing.build_reply = self.engagement.build_reply
            self.firing.run_action = self.engagement.fire
            await self.engagement.start()
        # DNS and blocklist checks, health: a task of its own, never on the send path
        from .reputation import Reputation

        self.reputation = Reputation(_ReputationHost(self), self.rng)
        await self.reputation.start()
        self.planning.arm_rollovers()
        self.firing.arm()
        self._background.append(self.spawn(self.firing.page_loop(), critical=True))
        if self.config.daemon.database.stat().st_size > FULL_CHECK_MAX:
            self.spawn(self._verify_store(), critical=True)

    async def _verify_store(self) -> None:
        """The full check of a large database, after start (store.check_file did the cheap one)."""
        assert self.store is not None
        t0 = time.time()
        problem = await self.store.verify()
        if problem is None:
            self.log.info("database checked", seconds=round(time.time() - t0, 1))
            return
        raise StoreError(f"{self.config.daemon.database}: the database is damaged ({problem}): "
                         "stopping; restore a backup or move the file away to start afresh")

    async def _start_control(self) -> None:
        from .control import ControlServer, ControlSocketError, SocketInUse

        self.control = ControlServer(self.config.daemon.socket, self.commands)
        try:
            await self.control.start()
        except SocketInUse as e:
            self.control = None
            raise DaemonError(EX_TEMPFAIL, str(e)) from None
        except (ControlSocketError, OSError) as e:
            self.control = None
            raise DaemonError(EX_CANTCREAT, f"cannot open the control socket "
                                            f"{self.config.daemon.socket}: {e}") from None

    async def _configure_tokens(self, config: Config) -> None:
        """OAuth tokens for ``config``'s accounts: an account without a stored refresh
        token is paused with the command that fixes it; one paused only for that, whose
        token has been stored since, is resumed."""
        assert self.tokens is not None and self.planning is not None
        missing = await self.tokens.configure(config)
        for account in config.accounts:
            reason = self.planning.paused_reason(account.email)
            if account.email in missing:
                if reason != missing[account.email]:
                    await self.planning.pause(account.email, missing[account.email])
            elif reason is not None and reason.startswith(OAUTH_MISSING):
                await self.planning.resume(account.email)

    async def _start_web(self) -> None:
        """The live page and /metrics (web.py), when ``daemon.http`` is set."""
        if self.config.daemon.http is None:
            return
        from .web import LivePage

        host, port = self.config.daemon.http
        self.web = LivePage(host, port, self.commands)
        try:
            await self.web.start()
        except OSError as e:
            self.web = None
            raise DaemonError(EX_CANTCREAT, f"cannot listen on daemon.http {host}:{port}: {e.strerror or e}; "
                                            "pick a free port or remove daemon.http") from None

    def _paused(self, email: str) -> str | None:
        return self.planning.paused_reason(email) if self.planning is not None else None

    async def _pause_for(self, email: str, reason: str) -> Any:
        assert self.planning is not None
        return await self.planning.pause(email, reason)

    # ------------------------------------------------------------ health

    def _healthy(self, interval: float) -> bool:
        """What the watchdog pings for: a responsive loop, and a store that takes
        writes (or has not failed for longer than ``store_stall_limit``)."""
        if self.metrics.loop_lag >= interval / 2:
            return False
        h = self.store.health if self.store is not None else Health()
        return h.stalled_for(time.time()) < self.config.daemon.store_stall_limit

    def _on_store_health(self, h: Health) -> None:
        if self.notifier is not None:
            self.notifier.status(self.status_line())

    async def _lag_monitor(self) -> None:
        interval = 0.5
        loop = asyncio.get_running_loop()
        ticks = 0
        while not self._stopping:
            t0 = loop.time()
            await asyncio.sleep(interval)
            self.metrics.loop_lag = max(0.0, loop.time() - t0 - interval)
            ticks += 1
            if ticks % 10 == 0 and self.notifier is not None and not self._reload_lock.locked():
                self.notifier.status(self.status_line())

    def _next_send_info(self) -> dict[str, Any] | None:
        due = self.firing.next_due_ms() if self.firing is not None else None
        return {"at_utc": iso_utc(due / 1000)} if due is not None else None

    def status_line(self) -> str:
        firing = self.firing
        nxt = firing.next_due_ms() if firing is not None else None
        when = iso_utc(nxt / 1000)[11:19] + " UTC" if nxt else "none"
        line = (f"{len(firing.timers) if firing else 0} pending, next {when}, "
                f"{self.metrics.sent_since_start()} sent since start")
        h = self.store.health if self.store is not None else Health()
        if not h.ok:
            line = f"STORE FAILING for {h.stalled_for(time.time()):.0f} s, no sends start: {h.error}; {line}"
        return line

    # ------------------------------------------------------------ reload (SIGHUP)

    def on_sighup(self) -> None:
        if self._stopping:
            return
        if not self.ready:
            self.log.info("reload requested while starting; it runs once start-up is done")
            self._reload_after_start = True
            return
        self.spawn(self.reload())

    async def reload(self) -> dict[str, Any]:
        """Re-read the config; apply the difference, or keep running on the old one."""
        async with self._reload_lock:
            if self.notifier is not None:
                self.notifier.reloading("reloading config")
            self.metrics.reloads += 1
            try:
                # Parsing a large pool takes a while: off the event loop, so firing goes on.
                new = await asyncio.to_thread(load_config, self.config.path)
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
                faults.point("daemon.reload")
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
            gc.freeze()  # the new config lives on: out of the collector's walks (_settle_heap)
            if self.notifier is not None:
                self.notifier.ready(self.status_line())
            self.log.info("reloaded", changes=changes if len(changes) <= 50 else changes[:50],
                          changes_count=len(changes), config=str(new.path))
            return {"ok": True, "errors": [], "changes": changes}

    async def _apply(self, new: Config) -> list[str]:
        assert self.planning is not None and self.firing is not None
        planning, firing = self.planning, self.firing
        old = self.config
        changes: list[str] = []
        for key in ("state_dir", "socket"):
            if getattr(old.daemon, key) != getattr(new.daemon, key):
                changes.append(f"daemon.{key} changed: needs a restart to take effect")
                self.log.warning("restart needed", setting=f"daemon.{key}")
        # Settings that cannot change while running keep their old values.
        new = replace(new, daemon=replace(new.daemon, state_dir=old.daemon.state_dir, socket=old.daemon.socket))
        for secret in new.secrets():
            register_secret(secret)
        if (old.daemon.log_format, old.daemon.log_level) != (new.daemon.log_format, new.daemon.log_level):
            configure_logging(new.daemon.log_format, new.daemon.log_level)
            changes.append(f"logging: {new.daemon.log_format}/{new.daemon.log_level}")
        diff = await asyncio.to_thread(diff_accounts, old, new)  # 100,000 comparisons: off the loop
        self.config = new
        planning.set_pool([a.email for a in new.accounts])
        await self._configure_tokens(new)
        if new.daemon.max_concurrent_sends != old.daemon.max_concurrent_sends:
            firing.set_concurrency(new.daemon.max_concurrent_sends)
        for email in diff.removed:
            gone = old.account(email)
            assert gone is not None
            today = local_date(gone.timezone, self.now())
            n = await planning.skip_for_change(email, "removed: account no longer in config",
                                               [today.isoformat(), (today + timedelta(days=1)).isoformat()])
            changes.append(f"removed {email} ({n} pending sends skipped)")
        added = [a for e in diff.added if (a := new.account(e)) is not None]
        if added:
            await planning.plan_missing(added)
            changes.extend(f"added {a.email}" for a in added)
        replan: list[Account] = []
        for email in diff.schedule_changed:
            b = new.account(email)
            assert b is not None
            if planning.paused_reason(email):
                changes.append(f"{email}: schedule changed (paused: plans on resume)")
                continue
            today = local_date(b.timezone, self.now())
            await planning.skip_for_change(email, "replanned after a config change", [today.isoformat()])
            replan.append(b)
            changes.append(f"{email}: schedule changed, rest of today re-planned")
        changes.extend(f"{email}: settings changed, apply from the next send" for email in diff.other_changed)
        for b in replan:
            await planning.replan_rest_of_today(b)
        planning.arm_rollovers()
        if self.engagement is not None:  # IMAP connections follow the new accounts (imap.py)
            self.engagement.sync_accounts()
        if self.reputation is not None:
            self.reputation.reconfigure()
        firing.arm()
        return changes

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
        if self.firing is not None:
            self.firing.stop()
        if self.planning is not None:
            self.planning.stop()
        current = asyncio.current_task()
        # Background loops never finish by themselves: waiting for them would hold the stop
        # for shutdown_timeout (and keep pinging WATCHDOG=1 after STOPPING=1).
        for t in self._background:
            t.cancel()
        inflight = [t for t in self._tasks if t is not current and t not in self._background]
        self.log.info("stopping", in_flight=len(inflight))
        if inflight:
            _, pending = await asyncio.wait(inflight, timeout=self.config.daemon.shutdown_timeout)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self.engagement is not None:
            await self.engagement.stop()
        if self.tokens is not None:
            await self.tokens.close()
        if self.reputation is not None:
            await self.reputation.stop()
        if self.web is not None:
            await self.web.close()
        if self.control is not None:
            await self.control.close()
        if self.store is not None:
            try:
                await asyncio.wait_for(self.store.close(), timeout=10)
            except TimeoutError:
                self.log.error("store not closed cleanly", error="closing (the last checkpoint of the WAL) took "
                               "over 10 s; nothing is lost: the WAL is replayed at the next start")
            except StoreError as e:
                self.log.error("store not closed cleanly", error=str(e))
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        self.log.info("stopped")


@dataclass(frozen=True)
class AccountsDiff:
    removed: list[str]
    added: list[str]
    schedule_changed: list[str]  # schedule, start date, engagement or IMAP on/off: re-plan today
    other_changed: list[str]     # anything else (SMTP settings...): applies from the next send


def diff_accounts(old: Config, new: Config) -> AccountsDiff:
    """What a reload changes, account by account (pure; run off the event loop)."""
    old_by = {a.email: a for a in old.accounts}
    new_by = {a.email: a for a in new.accounts}
    schedule, other = [], []
    for email in sorted(new_by.keys() & old_by.keys()):
        a, b = old_by[email], new_by[email]
        if (a.schedule, a.start_date, a.engagement, a.imap is None) != \
                (b.schedule, b.start_date, b.engagement, b.imap is None):
            schedule.append(email)
        elif a != b:
            other.append(email)
    return AccountsDiff(sorted(old_by.keys() - new_by.keys()), sorted(new_by.keys() - old_by.keys()),
                        schedule, other)


class _Host:
    """What every background part (engagement, reputation) may use of the daemon: the
    clock, the accounts and their states, the store, pause. Each part's own host adds
    the rest of its Protocol, and nothing more."""

    def __init__(self, daemon: Daemon) -> None:
        assert daemon.store is not None and daemon.planning is not None
        self._d = daemon
        self.store: Store = daemon.store
        self._planning = daemon.planning

    def now(self) -> float:
        return self._d.now()

    def today(self, account: Account) -> date:
        return self._d.today(account)

    @property
    def accounts(self) -> Sequence[Account]:
        return self._d.config.accounts

    def state(self, email: str) -> AccountState | None:
        return self._planning.states.get(email)

    async def pause(self, email: str, reason: str) -> None:
        await self._planning.pause(email, reason)


class _EngagementHost(_Host):
    """What IMAP engagement may use of the daemon (imap.EngagementHost)."""

    def __init__(self, daemon: Daemon) -> None:
        super().__init__(daemon)
        assert daemon.firing is not None
        self.rng = daemon.rng
        self._firing = daemon.firing
        self._lower: tuple[Config, dict[str, Account]] | None = None

    def account(self, email: str) -> Account | None:
        """The account of an address, whatever its case (a dict lookup)."""
        cfg = self._d.config
        if self._lower is None or self._lower[0] is not cfg:
            self._lower = (cfg, {a.email.lower(): a for a in cfg.accounts})
        return self._lower[1].get(email.strip().lower())

    def schedule(self, due_ms: int, ident: int, kind: int = SEND) -> None:
        self._firing.schedule(due_ms, ident, kind)

    def cancel(self, ident: int, kind: int = SEND) -> None:
        self._firing.cancel(ident, kind)

    async def token(self, email: str, rejected: str | None = None) -> str:
        assert self._d.tokens is not None
        return await self._d.tokens.token(email, rejected)


class _ReputationHost(_Host):
    """What the reputation checks may use of the daemon (reputation.ReputationHost)."""

    @property
    def settings(self) -> DnsSettings:
        return self._d.config.daemon.dns

    async def resume(self, email: str) -> None:
        await self._planning.resume(email)


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
    loop.add_signal_handler(signal.SIGHUP, daemon.on_sighup)
    try:
        await daemon.start()
        _settle_heap()
    except DaemonError as e:
        daemon.log.error("cannot start", error=str(e))
        print(f"warmupd: {e}", file=sys.stderr)
        with contextlib.suppress(Exception):
            await daemon.shutdown()
        return e.code
    await daemon.wait_stopped()
    await daemon.shutdown()
    return daemon.exit_code


def _settle_heap() -> None:
    """What start-up built (the config, every account's state, the timers) lives as long
    as the process: moved out of the cyclic collector's sight, so that a full collection
    during a midnight rollover walks what the rollover makes, not millions of settled
    objects (hundreds of ms of loop lag at 100,000 accounts); collection resumes. (No
    gc.collect() first: a full pass over them would hold the loop as long.)"""
    gc.freeze()
    gc.enable()


def main(config_path: str | Path) -> int:
    # No cyclic collection while starting (the config and the states make no garbage
    # cycles, and the collector would walk them again and again); _settle_heap ends it.
    gc.disable()
    try:
        config = load_config(config_path)
    except ConfigError as e:
        print(f"warmupd: {e.path or config_path}: invalid config, {len(e.problems)} problem(s):", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        return EX_CONFIG
    try:
        faults.load()
    except ValueError as e:
        print(f"warmupd: {e}", file=sys.stderr)
        return EX_CONFIG
    for secret in config.secrets():
        register_secret(secret)
    configure_logging(config.daemon.log_format, config.daemon.log_level)
    _install_loop()
    return asyncio.run(_amain(config))


__all__ = ["Daemon", "DaemonError", "RealClock", "main"]
