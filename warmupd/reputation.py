"""Guarding the sender's reputation while the daemon runs: DNS checks, blocklists, health.

One task (``Reputation.run``) that never holds up a send: every lookup is async and
bounded by ``dns_timeout`` (dnscheck.py), at most ``CONCURRENCY`` at a time, and a
resolver that fails makes the results ``unknown`` and nothing else.

* **DNS** (dnscheck.py): each distinct sender domain at start (unless its stored
  check is less than an hour old: a restart loop must not hammer DNS) and then
  once per ``dns_interval`` (a day), each domain at its own jittered moment so a
  large pool spreads its checks over the day. With ``dns_required = true`` a
  domain that fails holds its accounts' ramp (reason ``dns: ...`` in status; the
  warmup day does not advance, the target is not cut) until a check passes again.
* **Blocklists** (blocklists.py): each distinct name once per
  ``blocklist_interval`` (6 h; never under an hour, for the zones' usage
  policies): the sender domains against ``domain_blocklists``, the sending
  addresses (``sending_ips`` and the resolved ``smtp.host``) against
  ``ip_blocklists``. A listing pauses the account, the reason naming the zone
  and the listed name. A delisting is noticed on the next check, and an account
  this module paused for a listing is resumed by itself once every one of its
  names is known clear (a pause by the operator or for another reason is never
  lifted here). ``unknown`` neither pauses nor resumes.
* **Health** (health.py): each account's score of its local day, every
  ``HEALTH_EVERY`` and after each check, stored per day (table ``health_days``);
  graduation is decided then, logged once and kept in the account's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import random
import time
from collections.abc import Iterator, Sequence
from datetime import date, timedelta
from typing import Any, Protocol

from . import health
from .blocklists import Listing, check_names
from .calendar import iso_utc
from .config import RESOLVER_OFF, Account, Config, DnsSettings
from .dnscheck import DNS, DomainReport, check_domain
from .logs import get_logger
from .metrics import family
from .store import AccountState, Store

HEALTH_CHUNK = 200  # accounts per grouped read of the health loop (a few ms of work each)
HEALTH_SAVE_ROWS = 1000  # scores per write of the health pass
HEALTH_PAUSE = 0.02  # at least this between chunks
HEALTH_PAUSE_MAX = 5.0  # at most: 100,000 accounts are scored in about 40 minutes  # seconds between chunks: the pass gives the loop and the store room
CONCURRENCY = 10
START_FRESH = 3600.0  # a stored check younger than this is not repeated at start
DNS_HOLD = "dns: "
BLOCKLIST_PAUSE = "blocklisted: "


def _env(name: str) -> float | None:
    try:
        v = os.environ.get(name)
        return float(v) if v else None
    except ValueError:
        return None


class ReputationHost(Protocol):
    """What the reputation checks need of the daemon (daemon.py implements it)."""

    store: Store

    def now(self) -> float: ...
    def today(self, account: Account) -> date: ...
    @property
    def accounts(self) -> Sequence[Account]: ...
    @property
    def settings(self) -> DnsSettings: ...
    def state(self, email: str) -> AccountState | None: ...
    async def pause(self, email: str, reason: str) -> None: ...
    async def resume(self, email: str) -> None: ...


class Reputation:
    def __init__(self, host: ReputationHost, rng: random.Random) -> None:
        self.host = host
        self.rng = rng
        self.log = get_logger("warmupd.reputation")
        self.reports: dict[str, DomainReport] = {}
        self.listings: dict[tuple[str, str], Listing] = {}
        self.scores: dict[str, dict[str, Any]] = {}
        self.host_addresses: dict[str, list[str]] = {}  # smtp.host -> its addresses
        self._dns_due: dict[str, float] = {}
        self._bl_due = 0.0
        self._health_due = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._domain_params: dict[str, tuple[list[str], list[str]]] = {}
        self._domains_of: tuple[Sequence[Account], dict[str, Account]] | None = None
        self._graduated: set[str] = set()  # accounts whose score view says graduated
        self.dns = self._resolver()

    # ------------------------------------------------------------ settings

    def _resolver(self) -> DNS:
        s = self.host.settings
        return DNS(s.resolver, s.timeout)

    @property
    def enabled(self) -> bool:
        """Lookups are made unless no resolver is configured and WARMUPD_SYSTEM_RESOLVER=off
        (the tests' setting: they query only servers on loopback)."""
        resolver = self.host.settings.resolver
        if resolver == RESOLVER_OFF:
            return False
        return bool(resolver) or os.environ.get("WARMUPD_SYSTEM_RESOLVER") != "off"

    @property
    def dns_interval(self) -> float:
        return _env("WARMUPD_DNS_INTERVAL") or self.host.settings.interval

    @property
    def blocklist_interval(self) -> float:
        return _env("WARMUPD_BLOCKLIST_INTERVAL") or self.host.settings.blocklist_interval

    @property
    def health_interval(self) -> float:
        return _env("WARMUPD_HEALTH_INTERVAL") or 3600.0

    def reconfigure(self) -> None:
        """After a reload: a new resolver, new domains checked soon."""
        if (self.dns.spec, self.dns.timeout) != (self.host.settings.resolver, self.host.settings.timeout):
            self.dns = self._resolver()
        now = self.host.now()
        for d in self._domains():
            self._dns_due.setdefault(d, now)
        self._bl_due = min(self._bl_due, now)
        self._wake.set()

    def _domains(self) -> dict[str, Account]:
        """Each sender domain with one of its accounts (whose selectors and addresses count);
        worked out once per set of accounts (a reload gives a new one), not per round."""
        accounts = self.host.accounts
        if self._domains_of is not None and self._domains_of[0] is accounts:
            return self._domains_of[1]
        out: dict[str, tuple[set[str], set[str], Account]] = {}
        for a in accounts:
            sel, ips, _ = out.setdefault(a.domain.lower(), (set(), set(), a))
            sel.update(a.reputation.dkim_selectors)
            ips.update(a.reputation.sending_ips)
        self._domain_params = {d: (sorted(s), sorted(i)) for d, (s, i, _) in out.items()}
        domains = {d: a for d, (_, _, a) in out.items()}
        self._domains_of = (accounts, domains)
        return domains

    # ------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Load the stored checks, then check what is stale, in the background."""
        now = self.host.now()
        for subject, checked_ms, _, result in await self.host.store.load_checks("dns"):
            with contextlib.suppress(ValueError, TypeError):
                self.reports[subject] = DomainReport.from_json(json.loads(result), checked_ms / 1000)
        for _, checked_ms, verdict, result in await self.host.store.load_checks("blocklist"):
            with contextlib.suppress(ValueError, TypeError, KeyError):
                d = json.loads(result)
                self.listings[(d["name"], d["zone"])] = Listing(d["name"], d["zone"], d["kind"], verdict,
                                                                d["detail"], checked_ms / 1000)
        for dom in self._domains():
            r = self.reports.get(dom)
            self._dns_due[dom] = now if r is None or now - r.checked_at > START_FRESH else \
                r.checked_at + self._spread(self.dns_interval)
        oldest = min((x.checked_at for x in self.listings.values()), default=0.0)
        self._bl_due = now if not self.listings or now - oldest > START_FRESH else oldest + self.blocklist_interval
        self._task = asyncio.create_task(self.run(), name="reputation")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def _spread(self, interval: float) -> float:
        return interval * (0.9 + 0.2 * self.rng.random())

    async def run(self) -> None:
        while not self._stopping:
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug in a check must not end the daemon: log, retry later
                self.log.error("reputation round failed", error=repr(e), exc_info=e)
            now = self.host.now()
            nxt = min([*self._dns_due.values(), self._bl_due, self._health_due, now + 300.0])
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.05, nxt - now))

    async def _round(self) -> None:
        now = self.host.now()
        domains = self._domains()
        due = [d for d in domains if self._dns_due.get(d, now) <= now] if self.enabled else []
        changed = False
        if not self.enabled:
            self._dns_due.clear()
            self._bl_due = now + 3600.0
        if due:
            await self.check_domains(due)
            changed = True
        if self._bl_due <= now:
            await self.check_blocklists()
            self._bl_due = self.host.now() + self.blocklist_interval
            changed = True
        if changed:
            await self.apply()
        if changed or self._health_due <= now:
            await self.update_health()
            self._health_due = self.host.now() + self.health_interval

    # ------------------------------------------------------------ checks

    async def check_domains(self, domains: Sequence[str]) -> list[DomainReport]:
        sem = asyncio.Semaphore(CONCURRENCY)

        async def one(d: str) -> DomainReport:
            sel, ips = self._domain_params.get(d, ([], []))
            async with sem:
                return await check_domain(self.dns, d, sel, ips, now=self.host.now())

        reports = await asyncio.gather(*(one(d) for d in domains))
        rows = []
        for r in reports:
            old = self.reports.get(r.domain)
            self.reports[r.domain] = r
            self._dns_due[r.domain] = r.checked_at + self._spread(self.dns_interval)
            rows.append((r.domain, int(r.checked_at * 1000), r.verdict, json.dumps(r.to_json())))
            if old is None or old.verdict != r.verdict:
                level = "warning" if r.verdict in ("fail", "unknown") else "info"
                getattr(self.log, level)("dns checked", domain=r.domain, verdict=r.verdict,
                                         checks={c.name: c.verdict for c in r.checks},
                                         failing=[f"{c.name}: {c.detail}" for c in r.failing()])
        await self.host.store.save_checks("dns", rows)
        return list(reports)

    async def _addresses(self) -> dict[str, list[str]]:
        """Each account's sending addresses: its sending_ips and its smtp.host's."""
        hosts = {a.smtp.host for a in self.host.accounts if a.smtp is not None}
        for h in hosts:
            try:
                ipaddress.ip_address(h)
                self.host_addresses[h] = [h]
                continue
            except ValueError:
                pass
            ans = await self.dns.addresses(h)
            if ans.status == "ok":
                self.host_addresses[h] = list(ans.values)
            elif ans.known:
                self.host_addresses[h] = []
        out = {}
        for a in self.host.accounts:
            ips = list(a.reputation.sending_ips)
            if a.smtp is not None:
                ips += [x for x in self.host_addresses.get(a.smtp.host, []) if x not in ips]
            out[a.email] = ips
        return out

    async def check_blocklists(self) -> list[Listing]:
        s = self.host.settings
        ips = sorted({ip for v in (await self._addresses()).values() for ip in v})
        domains = sorted({a.domain.lower() for a in self.host.accounts})
        found = await check_names(self.dns, ips, domains, s.ip_blocklists, s.domain_blocklists,
                                  self.host.now(), CONCURRENCY)
        rows = []
        for x in found:
            old = self.listings.get((x.name, x.zone))
            self.listings[(x.name, x.zone)] = x
            rows.append((f"{x.name} {x.zone}", int(x.checked_at * 1000), x.verdict, json.dumps(x.to_json())))
            if x.verdict == "listed" and (old is None or old.verdict != "listed"):
                self.log.warning("blocklisted", name=x.name, zone=x.zone, detail=x.detail)
            elif old is not None and old.verdict == "listed" and x.verdict == "clear":
                self.log.info("delisted", name=x.name, zone=x.zone)
        await self.host.store.save_checks("blocklist", rows)
        return found

    def account_listings(self, account: Account) -> list[Listing]:
        names = {account.domain.lower(), *account.reputation.sending_ips}
        if account.smtp is not None:
            names.update(self.host_addresses.get(account.smtp.host, []))
        return [x for (n, _), x in sorted(self.listings.items()) if n in names]

    def listing_verdict(self, account: Account) -> str | None:
        found = self.account_listings(account)
        if not found:
            return None
        return "listed" if any(x.verdict == "listed" for x in found) else \
            "unknown" if any(x.verdict == "unknown" for x in found) else "clear"

    # ------------------------------------------------------------ effects

    async def apply(self) -> None:
        """Holds for failing DNS, pauses for listings, resumes after a delisting."""
        changed: list[AccountState] = []
        for i, a in enumerate(self.host.accounts):
            if i % 200 == 199:
                await asyncio.sleep(0)
            st = self.host.state(a.email)
            if st is None:
                continue
            today = self.host.today(a)
            report = self.reports.get(a.domain.lower())
            if report is not None and self._dns_hold(a, st, report, today):
                changed.append(st)
            listed = [x for x in self.account_listings(a) if x.verdict == "listed"]
            if listed and not st.paused_reason:
                x = listed[0]
                await self.host.pause(a.email, f"{BLOCKLIST_PAUSE}{x.name} is listed on {x.zone} ({x.detail})")
            elif st.paused_reason and st.paused_reason.startswith(BLOCKLIST_PAUSE) and \
                    self.listing_verdict(a) == "clear":
                self.log.info("account resumed after delisting", account=a.email, was=st.paused_reason)
                await self.host.resume(a.email)
        if changed:
            await self.host.store.upsert_accounts(changed)

    def _dns_hold(self, a: Account, st: AccountState, report: DomainReport, today: date) -> bool:
        held = bool(st.hold_until and st.hold_until > today.isoformat())
        ours = held and (st.hold_reason or "").startswith(DNS_HOLD)
        if a.reputation.dns_required and report.verdict == "fail":
            if held and not ours:
                return False  # a junk hold is in force; it says more
            until = (today + timedelta(days=2)).isoformat()  # until the next daily check, at least
            reason = DNS_HOLD + "; ".join(f"{c.name}: {c.detail}" for c in report.failing())
            if (st.hold_until, st.hold_reason) == (until, reason):
                return False
            if not ours:
                self.log.warning("ramp held: the domain fails its DNS checks", account=a.email,
                                 domain=report.domain, reason=reason)
            st.hold_until, st.hold_reason, st.hold_cut = until, reason, 1.0
            return True
        if ours and report.verdict in ("ok", "warn"):
            self.log.info("ramp hold lifted: the domain passes its DNS checks", account=a.email,
                          domain=report.domain)
            st.hold_until, st.hold_reason, st.hold_cut = today.isoformat(), None, 1.0
            return True
        return False

    # ------------------------------------------------------------ health

    async def update_health(self) -> None:
        """Today's score of every account, from its last DAYS days: one grouped read per
        HEALTH_CHUNK accounts (a pool of 100,000 is 500 reads, not 200,000), the chunks
        spread over half the interval (at most HEALTH_PAUSE_MAX apart), so that sends due
        meanwhile are not delayed (bench/scale.py measures them)."""
        rows = []
        changed = []
        accounts = list(self.host.accounts)
        windows: dict[date, list[str]] = {}
        chunks = max(1, -(-len(accounts) // HEALTH_CHUNK))
        for start in range(0, len(accounts), HEALTH_CHUNK):
            chunk = accounts[start:start + HEALTH_CHUNK]
            todays = {a.email: self.host.today(a) for a in chunk}
            for t in todays.values():
                if t not in windows:  # the last DAYS dates up to t: one list per distinct day
                    windows[t] = [(t - timedelta(days=k)).isoformat() for k in range(health.DAYS)]
            inputs = await self.host.store.health_inputs(
                [(e, windows[t][-1], windows[t][0]) for e, t in todays.items()])
            for i, a in enumerate(chunk):
                if i % 25 == 24:
                    await asyncio.sleep(0)  # scoring is Python on the loop: a little at a time
                today = todays[a.email]
                by_day, sent, bounced = inputs[a.email]
                days = [(by_day.get(d, {}).get("inbox", 0), sum(by_day.get(d, {}).values()))
                        for d in windows[today]]
                report = self.reports.get(a.domain.lower())
                sc = health.score(days, sent, bounced, report.verdict if report else None,
                                  self.listing_verdict(a))
                view = {"date": today.isoformat(), **sc.to_json()}
                st = self.host.state(a.email)
                if st is not None:
                    if not st.graduated and health.graduates(sc.score, st.warmup_day, a.reputation.graduate_score,
                                                             a.reputation.graduate_day):
                        st.graduated = today.isoformat()
                        changed.append(st)
                        self.log.info("account graduated", account=a.email, score=sc.score,
                                      warmup_day=st.warmup_day, graduate_score=a.reputation.graduate_score,
                                      graduate_day=a.reputation.graduate_day,
                                      maintenance_per_day=a.reputation.maintenance_per_day)
                    view["graduated"] = st.graduated
                self.scores[a.email] = view
                if view.get("graduated"):
                    self._graduated.add(a.email)
                else:
                    self._graduated.discard(a.email)
                rows.append((a.email, today.isoformat(), sc.score, json.dumps(sc.to_json())))
            if start + HEALTH_CHUNK < len(accounts):
                # Spread over the interval: each chunk's reads scan its accounts' week of
                # sends, and a pass at full speed made sends due meanwhile late on 2 cores.
                pause = min(HEALTH_PAUSE_MAX, max(HEALTH_PAUSE, 0.5 * self.health_interval / chunks))
            else:
                pause = 0.0
            if len(rows) >= HEALTH_SAVE_ROWS or pause >= 1.0:
                # Saved as the pass goes: one array of 100,000 rows is a long block of JSON
                # encoding on the loop (and a long transaction on the writer).
                await self.host.store.save_health(rows)
                rows = []
            await asyncio.sleep(pause)
        await self.host.store.save_health(rows)
        if changed:
            await self.host.store.upsert_accounts(changed)

    # ------------------------------------------------------------ views

    def dns_view(self, account: Account) -> dict[str, Any] | None:
        r = self.reports.get(account.domain.lower())
        out = r.to_json() if r is not None else None
        listings = self.account_listings(account)
        if out is None and not listings:
            return None
        out = out or {"domain": account.domain.lower(), "verdict": None, "checked_at": None, "checks": {}}
        out["blocklists"] = {"verdict": self.listing_verdict(account),
                             "listed": [x.to_json() for x in listings if x.verdict == "listed"],
                             "unknown": [x.to_json() for x in listings if x.verdict == "unknown"],
                             "checked": len(listings)}
        return out

    def health_view(self, email: str) -> dict[str, Any] | None:
        return self.scores.get(email)

    def status(self) -> dict[str, Any]:
        verdicts: dict[str, int] = {}
        for r in self.reports.values():
            verdicts[r.verdict] = verdicts.get(r.verdict, 0) + 1
        listed = sorted({f"{x.name} on {x.zone}" for x in self.listings.values() if x.verdict == "listed"})
        graduated = sorted(self._graduated)  # kept beside scores: no pass over the pool per status
        return {"domains": verdicts, "listed": listed, "graduated": graduated,
                "resolver": self.dns.spec or "system", "dns_queries": self.dns.queries,
                "dns_errors": self.dns.errors,
                "next_dns_check": iso_utc(min(self._dns_due.values())) if self._dns_due else None,
                "next_blocklist_check": iso_utc(self._bl_due) if self._bl_due else None}

    def metrics_lines(self) -> Iterator[str]:
        scores = list(self.scores.items())  # in the order scored: no sort of the pool
        yield from family("warmupd_dns_check", "gauge", "1 for the verdict of each DNS check of each sender domain.",
                          (({"domain": d, "check": c.name, "verdict": c.verdict}, 1)
                           for d, r in sorted(self.reports.items()) for c in r.checks))
        yield from family("warmupd_blocklist_listed", "gauge", "1 listed, 0 clear, -1 unknown, per name and zone.",
                          (({"name": n, "zone": z}, {"listed": 1, "clear": 0}.get(x.verdict, -1))
                           for (n, z), x in sorted(self.listings.items())))
        yield from family("warmupd_health_score", "gauge", "The account's health score of its local day (0-100).",
                          (({"account": e}, v["score"]) for e, v in scores))
        yield from family("warmupd_account_graduated", "gauge", "1 once the account graduated.",
                          (({"account": e}, int(bool(v.get("graduated")))) for e, v in scores))
        yield from family("warmupd_dns_queries_total", "counter", "DNS queries made by the checks.",
                          [({}, self.dns.queries)])
        yield from family("warmupd_dns_errors_total", "counter", "DNS queries that failed (timeouts, SERVFAIL).",
                          [({}, self.dns.errors)])


async def check_report(cfg: Config) -> str:
    """``warmupd check --dns``: every sender domain's checks and every name's blocklist
    verdicts now, as a table (the daemon's own functions, the configured resolver)."""
    s = cfg.daemon.dns
    if s.resolver == RESOLVER_OFF:
        return 'DNS and blocklist checks are off (daemon.resolver = "off"): nothing was looked up'
    resolver = DNS(s.resolver, s.timeout)
    params: dict[str, tuple[set[str], set[str]]] = {}
    for a in cfg.accounts:
        sel, ips = params.setdefault(a.domain.lower(), (set(), set()))
        sel.update(a.reputation.dkim_selectors)
        ips.update(a.reputation.sending_ips)
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(d: str) -> DomainReport:
        async with sem:
            return await check_domain(resolver, d, sorted(params[d][0]), sorted(params[d][1]))

    reports = await asyncio.gather(*(one(d) for d in sorted(params)))
    hosts = sorted({a.smtp.host for a in cfg.accounts if a.smtp is not None})
    ips = {ip for _, i in params.values() for ip in i}
    for h in hosts:
        try:
            ipaddress.ip_address(h)
            ips.add(h)
        except ValueError:
            ans = await resolver.addresses(h)
            ips.update(ans.values if ans.status == "ok" else ())
    listings = await check_names(resolver, sorted(ips), sorted(params), s.ip_blocklists, s.domain_blocklists,
                                 time.time(), CONCURRENCY)
    lines = [f"resolver: {s.resolver or 'system'}, timeout {s.timeout:g} s", "",
             f"{'domain':<28} {'check':<16} {'verdict':<8} detail"]
    for r in reports:
        for c in r.checks:
            lines.append(f"{r.domain:<28} {c.name:<16} {c.verdict:<8} {c.detail}")
        lines.append(f"{r.domain:<28} {'overall':<16} {r.verdict:<8}")
    lines += ["", f"{'name':<28} {'blocklist':<24} {'verdict':<8} detail"]
    for x in listings:
        lines.append(f"{x.name:<28} {x.zone:<24} {x.verdict:<8} {x.detail}")
    if not listings:
        lines.append("(no blocklist zones configured)")
    return "\n".join(lines)


__all__ = ["BLOCKLIST_PAUSE", "DNS_HOLD", "Reputation", "ReputationHost", "check_report"]
