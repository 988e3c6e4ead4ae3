"""What the control socket answers: status, accounts, schedule, pause, resume,
reload, metrics, version (control.py parses and validates the requests).

Reads go to the store's cold reader (store.py), so a status over a large pool
never holds up a send's row read nor queues behind a plan chunk.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import platform
import time
from collections.abc import Iterable
from datetime import date
from typing import Any, Protocol

from . import __version__
from .calendar import iso_local, iso_utc, local_date, projected_warmup_day, why_not_sending
from .config import Account, Config
from .control import ControlError
from .firing import Firing
from .logs import get_logger
from .metrics import LATENESS_BUCKETS, Metrics, family
from .planner import day_target
from .planning import Planning
from .store import STATUSES, Store
from .timers import SEND

log = get_logger("warmupd.commands")


class EngagementView(Protocol):
    def today(self, email_: str) -> dict[str, Any]: ...
    def thresholds(self, email_: str) -> dict[str, Any]: ...
    def totals_today(self) -> dict[str, Any]: ...
    def metrics_lines(self) -> Iterable[str]: ...


class TokenView(Protocol):
    """What the commands read of OAuth tokens (oauth.Tokens): never a token itself."""

    def info(self, email: str) -> dict[str, Any] | None: ...
    def metrics_lines(self) -> Iterable[str]: ...


class ReputationView(Protocol):
    def dns_view(self, account: Account) -> dict[str, Any] | None: ...
    def health_view(self, email: str) -> dict[str, Any] | None: ...
    def status(self) -> dict[str, Any]: ...
    def metrics_lines(self) -> Iterable[str]: ...


class DaemonView(Protocol):
    """The parts of the daemon the commands read (daemon.Daemon)."""

    @property
    def config(self) -> Config: ...
    @property
    def store(self) -> Store | None: ...
    @property
    def planning(self) -> Planning | None: ...
    @property
    def firing(self) -> Firing | None: ...
    @property
    def engagement(self) -> EngagementView | None: ...
    @property
    def tokens(self) -> TokenView | None: ...
    @property
    def reputation(self) -> ReputationView | None: ...
    metrics: Metrics
    ready: bool
    last_reload_error: str | None
    config_loaded_at: float

    async def reload(self) -> dict[str, Any]: ...
    def health(self) -> dict[str, Any]: ...


PACE_LINES = 2000  # metrics lines rendered between two yields to the loop
LIVE_COUNTS_UP_TO = 5000  # accounts; a larger pool's day counts come from a snapshot
SNAPSHOT_MAX_AGE = 10.0  # seconds before a status asks for a fresh snapshot


class Commands:
    """The control socket's handler (control.ControlHandler).

    A pool's counts of the day (sends by status) are one grouped query over the
    day's rows. Up to ``LIVE_COUNTS_UP_TO`` accounts that takes milliseconds and
    every answer counts afresh; beyond, it takes a second or more, so answers
    carry the last snapshot (``counts_as_of``) and a snapshot older than
    ``SNAPSHOT_MAX_AGE`` is refreshed in the background: a status never waits for it."""

    def __init__(self, daemon: DaemonView) -> None:
        self.d = daemon
        self._snapshot: tuple[float, dict[str, dict[str, int]]] | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._zones: tuple[float, dict[str, dict[str, int]]] | None = None
        self._zones_task: asyncio.Task[None] | None = None
        self._pairs_json: tuple[Config, str] | None = None  # the [email, timezone] array of a config
        self._zone_list: tuple[Config, tuple[str, ...]] | None = None
        self._report_lock = asyncio.Lock()

    # ------------------------------------------------------------ helpers

    def _parts(self) -> tuple[Store, Planning, Firing]:
        d = self.d
        if not d.ready or d.store is None or d.planning is None or d.firing is None:
            raise ControlError("warmupd is still starting (recovery and planning); try again in a moment")
        return d.store, d.planning, d.firing

    def _account(self, email: str) -> Account:
        self._parts()
        account = self.d.config.account(email)
        if account is None:
            raise ControlError(f"no account {email!r}; warmupctl accounts lists them")
        return account

    def _today(self, a: Account) -> date:
        return local_date(a.timezone, time.time() if self.d.firing is None else self.d.firing.now())

    def _todays(self) -> dict[str, date]:
        """Each account's local date, computed once per timezone (a pool has a few)."""
        now = time.time() if self.d.firing is None else self.d.firing.now()
        by_tz: dict[str, date] = {}
        out = {}
        for a in self.d.config.accounts:
            day = by_tz.get(a.timezone)
            if day is None:
                day = by_tz[a.timezone] = local_date(a.timezone, now)
            out[a.email] = day
        return out

    async def _count_accounts(self) -> dict[str, dict[str, int]]:
        store, _, _ = self._parts()
        return await store.day_counts((e, d.isoformat()) for e, d in self._todays().items())

    async def _refresh(self) -> None:
        try:
            self._snapshot = (time.time(), await self._count_accounts())
        except Exception as e:  # the store closing, or failing: the next status asks again
            log.warning("counting the day for status failed", error=str(e))
        finally:
            self._refreshing = None

    async def account_counts(self) -> tuple[dict[str, dict[str, int]] | None, float | None]:
        """{account: {status: n}} of each account's today, and when it was counted."""
        if len(self.d.config.accounts) <= LIVE_COUNTS_UP_TO:
            return await self._count_accounts(), None
        snap = self._snapshot
        if (snap is None or time.time() - snap[0] > SNAPSHOT_MAX_AGE) and self._refreshing is None:
            self._refreshing = asyncio.create_task(self._refresh())
        return (snap[1], snap[0]) if snap else (None, None)

    async def timezone_counts(self) -> tuple[dict[str, dict[str, int]], float | None]:
        """{timezone: {status: n}} of each account's today, and when it was counted
        (None: for this answer). Large pools: a snapshot, as ``account_counts``."""
        accounts = self.d.config.accounts
        if len(accounts) <= LIVE_COUNTS_UP_TO:
            counts, _ = await self.account_counts()
            out: dict[str, dict[str, int]] = {}
            for a in accounts:
                tzc = out.setdefault(a.timezone, dict.fromkeys(STATUSES, 0))
                for s, n in (counts or {}).get(a.email, {}).items():
                    tzc[s] = tzc.get(s, 0) + n
            return out, None
        snap = self._zones
        if (snap is None or time.time() - snap[0] > SNAPSHOT_MAX_AGE) and self._zones_task is None:
            self._zones_task = asyncio.create_task(self._refresh_zones())
        zeros = {tz: dict.fromkeys(STATUSES, 0) for tz in self._zone_names()}
        if snap is None:
            return zeros, None
        for tz, c in snap[1].items():
            zeros.setdefault(tz, dict.fromkeys(STATUSES, 0)).update(c)
        return zeros, snap[0]

    def _zone_names(self) -> tuple[str, ...]:
        """The config's timezones, found once per config (not per status answer)."""
        cfg = self.d.config
        if self._zone_list is None or self._zone_list[0] is not cfg:
            self._zone_list = (cfg, tuple(sorted({a.timezone for a in cfg.accounts})))
        return self._zone_list[1]

    async def _refresh_zones(self) -> None:
        try:
            store, _, _ = self._parts()
            cfg = self.d.config
            now = time.time() if self.d.firing is None else self.d.firing.now()
            days = {tz: local_date(tz, now).isoformat() for tz in self._zone_names()}
            if self._pairs_json is None or self._pairs_json[0] is not cfg:
                # Encoded once per config (a 100,000-account array is a few MB), in
                # slices with the loop let run between them (C code keeps the GIL).
                parts = []
                for k in range(0, len(cfg.accounts), PACE_LINES):
                    parts.append(json.dumps([[a.email, a.timezone] for a in cfg.accounts[k:k + PACE_LINES]])[1:-1])
                    await asyncio.sleep(0)
                self._pairs_json = (cfg, "[" + ",".join(p for p in parts if p) + "]")
            self._zones = (time.time(), await store.zone_counts(self._pairs_json[1], days))
        except Exception as e:  # the store closing, or failing: the next status asks again
            log.warning("counting the day for status failed", error=str(e))
        finally:
            self._zones_task = None

    # ------------------------------------------------------------ the commands

    async def cmd_version(self) -> dict[str, Any]:
        store = self.d.store
        return {"version": __version__, "python": platform.python_version(),
                "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
                "schema_version": await store.schema_version() if store else None,
                "ready": self.d.ready}

    async def cmd_status(self) -> dict[str, Any]:
        _, planning, firing = self._parts()
        cfg = self.d.config
        tzc, as_of = await self.timezone_counts()
        today = dict.fromkeys(STATUSES, 0)
        for counts in tzc.values():
            for k, v in counts.items():
                today[k] = today.get(k, 0) + v
        # One pass over the states without building or sorting anything per account
        # (a sort and a dict of dates of 100,000 accounts made a status take 200 ms);
        # only the few paused and held accounts are looked at further, then sorted.
        paused, holds = [], []
        now = firing.now()
        dates: dict[str, str] = {}  # timezone -> its local date, ISO
        for e, st in planning.states.items():
            if not st.paused_reason and not st.hold_until:
                continue
            account = cfg.account(e)
            if account is None:
                continue  # an account no longer in the config
            if st.paused_reason:
                paused.append({"email": e, "reason": st.paused_reason})
            if st.hold_until:
                day = dates.get(account.timezone)
                if day is None:
                    day = dates[account.timezone] = local_date(account.timezone, now).isoformat()
                if st.hold_until > day:
                    holds.append({"email": e, "until": st.hold_until, "reason": st.hold_reason})
        paused.sort(key=lambda p: str(p["email"]))
        holds.sort(key=lambda h: str(h["email"]))
        out: dict[str, Any] = {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.d.metrics.started, 3),
            "config_path": str(cfg.path),
            "config_loaded_at": iso_utc(self.d.config_loaded_at),
            "last_reload_error": self.d.last_reload_error,
            "accounts": {"active": len(cfg.accounts) - len(paused), "paused": len(paused),
                         "paused_list": paused},
            "today": today,
            "pending_timers": len(firing.timers),
            "next_send": await self._next_send(),
            "timezones": tzc,
            "loop_lag_ms": round(self.d.metrics.loop_lag * 1000, 3),
            "holds": holds,
            "store": self.d.health(),
            "planning": planning.progress,
            # None: counted for this answer; else when the snapshot was taken (large pools)
            "counts_as_of": iso_utc(as_of) if as_of else None,
        }
        if self.d.engagement is not None:
            out["engagement_today"] = self.d.engagement.totals_today()
        if self.d.reputation is not None:
            out["reputation"] = self.d.reputation.status()
        return out

    async def _next_send(self) -> dict[str, Any] | None:
        """The earliest pending send: held by the timers, or still in the store
        (beyond the paging horizon)."""
        store, _, firing = self._parts()
        found: tuple[int, str] | None = None
        for due_ms, kind, ident in firing.timers.peek(8):
            if kind != SEND:
                continue
            row = await store.get_send(ident)
            if row is not None and row.status == "pending":
                found = (due_ms, row.account)
                ident_found = ident
                break
        if found is None:
            nxt = await store.next_pending(int(firing.now() * 1000))
            if nxt is None:
                return None
            found, ident_found = (nxt[0], nxt[2]), nxt[1]
        due_ms, email = found
        account = self.d.config.account(email)
        tz = account.timezone if account else "UTC"
        return {"account": email, "send_id": ident_found, "at": iso_local(tz, due_ms / 1000),
                "at_utc": iso_utc(due_ms / 1000), "timezone": tz}

    async def cmd_accounts(self) -> list[dict[str, Any]]:
        store, planning, _ = self._parts()
        accounts = self.d.config.accounts
        days = self._todays()
        counts = (await self.account_counts())[0] or {}
        out = []
        for a in accounts:
            day = days[a.email]
            st = planning.states.get(a.email)
            wday = st.warmup_day if st else projected_warmup_day(a, day)
            c = counts.get(a.email, {})
            item: dict[str, Any] = {
                "email": a.email, "timezone": a.timezone, "warmup_day": wday,
                "target_today": (day_target(a, wday, bool(st and st.graduated))
                                 if why_not_sending(a, day) is None else 0),
                "sent_today": c.get("sent", 0), "pending_today": c.get("pending", 0),
                "paused": st.paused_reason if st else None,
                "hold": ({"until": st.hold_until, "reason": st.hold_reason}
                         if st and st.hold_until and st.hold_until > day.isoformat() else None),
                "imap": a.imap is not None,
                "auth": "oauth" if any(srv is not None and srv.auth == "oauth"
                                       for srv in (a.smtp, a.imap)) else "password",
            }
            if item["auth"] == "oauth":
                info = self.d.tokens.info(a.email) if self.d.tokens is not None else None
                item.update(info or {"token_expires_at": None, "last_token_error": None})
            if self.d.engagement is not None and a.imap is not None:
                item["engagement_today"] = self.d.engagement.today(a.email)
                item["thresholds"] = self.d.engagement.thresholds(a.email)
            rep = self.d.reputation
            item["dns"] = rep.dns_view(a) if rep is not None else None
            item["health"] = rep.health_view(a.email) if rep is not None else None
            item["graduated"] = st.graduated if st else None
            item["name"] = a.display_name
            out.append(item)
        return out

    async def cmd_schedule(self, account: str, date: str | None = None) -> list[dict[str, Any]]:
        store, _, _ = self._parts()
        a = self._account(account)
        if date:
            try:
                day = _date.fromisoformat(date)
            except ValueError:
                raise ControlError(f"date must be YYYY-MM-DD, got {date!r}") from None
        else:
            day = self._today(a)
        rows = await store.day_rows(a.email, day.isoformat(), cold=True)
        return [{"id": r.id, "at": iso_local(a.timezone, r.at_ms / 1000), "at_utc": iso_utc(r.at_ms / 1000),
                 "period": r.period, "recipient": r.recipient, "message_id": r.message_id,
                 "kind": r.kind, "status": r.status, "attempts": r.attempts,
                 "reason": r.reason if r.status == "skipped" else (
                     r.last_error if r.status in ("failed", "uncertain") else None),
                 "last_error": r.last_error,
                 "retry_at": iso_utc(r.retry_at_ms / 1000) if r.retry_at_ms else None,
                 "sent_at": iso_utc(r.sent_at_ms / 1000) if r.sent_at_ms else None} for r in rows]

    def _writable(self) -> None:
        h = self.d.health()
        if h["error"]:
            raise ControlError(f"the state database cannot take writes now: {h['error']}")

    async def cmd_pause(self, account: str, reason: str | None = None) -> dict[str, Any]:
        _, planning, _ = self._parts()
        self._account(account)
        self._writable()
        return await planning.pause(account, reason)

    async def cmd_resume(self, account: str) -> dict[str, Any]:
        _, planning, _ = self._parts()
        self._account(account)
        self._writable()
        return await planning.resume(account)

    async def cmd_reload(self) -> dict[str, Any]:
        self._parts()
        return await self.d.reload()

    async def cmd_report(self, days: str | None = None) -> dict[str, Any]:
        """The HTML report of the last ``days`` (default 14) local days (report.py)."""
        from .report import live_report, report_days

        store, _, firing = self._parts()
        try:
            n = report_days(days)
        except ValueError as e:
            raise ControlError(str(e)) from None
        async with self._report_lock:  # one at a time: a burst of page loads must not crowd out the sends
            return {"days": n, "html": await live_report(self.d.config, store, firing.now(), n)}

    async def cmd_metrics(self) -> str:
        _, planning, firing = self._parts()
        m = self.d.metrics
        # Per-account series in the order they came (no sort of 100,000s on the loop).
        sends = family("warmupd_sends_total", "counter",
                       "Send state changes since start, by account and new status.",
                       (({"account": account, "status": status}, n)
                        for (account, status), n in list(m.transitions.items())))
        lines = ["# HELP warmupd_send_lateness_seconds MAIL FROM time minus the planned instant.",
                 "# TYPE warmupd_send_lateness_seconds histogram"]
        for b, c in zip(LATENESS_BUCKETS, m.lateness_counts, strict=True):
            lines.append(f'warmupd_send_lateness_seconds_bucket{{le="{b}"}} {c}')
        h = self.d.health()
        lines += [f'warmupd_send_lateness_seconds_bucket{{le="+Inf"}} {m.lateness_n}',
                  f"warmupd_send_lateness_seconds_sum {m.lateness_sum:.6f}",
                  f"warmupd_send_lateness_seconds_count {m.lateness_n}",
                  "# HELP warmupd_pending_timers Timers held in memory.",
                  "# TYPE warmupd_pending_timers gauge",
                  f"warmupd_pending_timers {len(firing.timers)}",
                  "# HELP warmupd_loop_lag_seconds Event loop lag, last sample.",
                  "# TYPE warmupd_loop_lag_seconds gauge",
                  f"warmupd_loop_lag_seconds {m.loop_lag:.6f}",
                  "# HELP warmupd_reloads_total Config reloads attempted.",
                  "# TYPE warmupd_reloads_total counter",
                  f"warmupd_reloads_total {m.reloads}",
                  "# HELP warmupd_reload_failures_total Config reloads rejected.",
                  "# TYPE warmupd_reload_failures_total counter",
                  f"warmupd_reload_failures_total {m.reload_failures}",
                  "# HELP warmupd_lost_races_total Send changes dropped because another change won.",
                  "# TYPE warmupd_lost_races_total counter",
                  f"warmupd_lost_races_total {m.lost_races}",
                  "# HELP warmupd_store_ok 1 while the state database takes writes.",
                  "# TYPE warmupd_store_ok gauge",
                  f"warmupd_store_ok {int(h['error'] is None)}",
                  "# HELP warmupd_store_failure_spells_total Spells of store trouble since start.",
                  "# TYPE warmupd_store_failure_spells_total counter",
                  f"warmupd_store_failure_spells_total {h['spells']}",
                  "# HELP warmupd_accounts_paused Accounts paused now.",
                  "# TYPE warmupd_accounts_paused gauge",
                  f"warmupd_accounts_paused {sum(1 for st in planning.states.values() if st.paused_reason)}"]
        parts = [sends, lines, *(p.metrics_lines() for p in (self.d.engagement, self.d.tokens, self.d.reputation)
                                 if p is not None)]
        # A line per account and series at 100,000 accounts: rendered in slices with the
        # loop let run between them (one go held it for 30-100 ms).
        out: list[str] = []
        for line in itertools.chain.from_iterable(parts):
            out.append(line)
            if len(out) % PACE_LINES == 0:
                await asyncio.sleep(0)
        return "\n".join(out) + "\n"


_date = date  # cmd_schedule's parameter is called ``date`` (the socket's field name)
