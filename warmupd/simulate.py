"""`warmupd simulate`: the next days of a pool on a virtual clock, before any mail goes out.

The real core runs, not a model of it: each account timezone's midnight plans its
accounts' day through the daemon's own rules (planning.py: the first warmup day,
``advance``, ``plan_account_day`` with ``plan_rng(seed, account, date)``, the hold
cut), so for the same config and seed the plans are the daemon's plans. Sends go
to an in-process transport that accepts them (a ``bounce_rate`` share bounces).
Where an account engages over IMAP, its decisions are imap.py's own
(``plan_actions``: opens, replies inside the day's target) and thresholds.py's
(``junk_verdict``: the junk bands hold, cut and pause, played by a ``junk_rate``;
``bounce_verdict``: a sender paused past ``bounce_pause_rate``; both only once
their minimum sample is reached). Graduation is taken from the stored state (the
health score needs the real placement and DNS history), not simulated.
No mail is sent and no state database is written.

Events (midnights, sends, replies) run in instant order from one heap, so a hold
or a pause decided at one moment cuts what comes after it, as in the daemon.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from .calendar import day_bounds, local_date, why_not_sending
from .config import Account, Config
from .imap import BOUNCE_WINDOW, HOLD_DAYS, SCAN_SINCE_DAYS, plan_actions
from .planner import PlannedSend, Pool, day_target
from .planning import advance, hold_factor, initial_warmup_day, plan_account_day, plan_rng
from .report import Span, Tally, date_range, render
from .store import AccountState, read_states
from .thresholds import CUT_FACTOR, bounce_verdict, junk_verdict

PLAN, SEND, REPLY = 0, 1, 2


@dataclass(frozen=True)
class WhatIf:
    """Outcomes to play: the share of sends that bounce, and of received mail that lands in junk."""

    junk_rate: float = 0.0
    bounce_rate: float = 0.0


@dataclass
class _State:
    warmup_day: int
    advanced_through: str
    hold_until: str | None = None
    paused: str | None = None
    hold_cut: float = 1.0  # the share of the target planned on held days (the "cut" band: 0.5)
    graduated: bool = False


@dataclass
class _Send:
    account: str
    day: date
    at: float
    period: str
    recipient: str
    depth: int = 1
    cancelled: str | None = None  # the skip reason, when cut before its moment


@dataclass
class Simulation:
    """A finished run: per account-day rows and the report's tallies."""

    config: Config
    seed: int
    start: date
    days: int
    what_if: WhatIf
    tally: Tally
    plans: dict[tuple[str, date], list[PlannedSend]] = field(default_factory=dict)  # with keep_sends

    @property
    def dates(self) -> list[date]:
        return self.tally.dates

    def to_json(self) -> dict[str, Any]:
        t = self.tally
        pool = []
        for d in self.dates:
            r = t.pool_day(d)
            pool.append({"date": d.isoformat(), "planned": r.planned, "replies": r.replies,
                         "sent": r.sent, "skipped": sum(r.skipped.values()), "bounced": r.bounced,
                         "inbox": r.inbox, "junk": r.junk,
                         "accounts_sending": sum(1 for a in t.accounts
                                                 if (x := t.rows.get((a.email, d))) and x.planned),
                         "accounts_held": sum(1 for a in t.accounts if (x := t.rows.get((a.email, d))) and x.held),
                         "accounts_paused": sum(1 for a in t.accounts
                                                if (x := t.rows.get((a.email, d))) and x.paused)})
        accounts: dict[str, list[dict[str, Any]]] = {}
        for a in t.accounts:
            rows = accounts[a.email] = []
            for d in self.dates:
                x = t.rows.get((a.email, d))
                if x is None:
                    continue
                rows.append({"date": d.isoformat(), "warmup_day": x.warmup_day, "target": x.target,
                             "planned": x.planned, "replies": x.replies, "sent": x.sent,
                             "skipped": sum(x.skipped.values()), "bounced": x.bounced, "inbox": x.inbox,
                             "junk": x.junk, "held": x.held, "paused": x.paused, "not_sending": x.off})
        return {"seed": self.seed, "start": self.start.isoformat(), "days": self.days,
                "junk_rate": self.what_if.junk_rate, "bounce_rate": self.what_if.bounce_rate,
                "config": str(self.config.path), "pool": pool, "accounts": accounts,
                "spans": [{"account": s.account, "kind": s.kind, "start": s.start.isoformat(),
                           "end": s.end.isoformat() if s.end else None, "reason": s.reason} for s in t.spans]}

    def text(self) -> str:
        """Per day the pool's planned sends, then per account its target by day."""
        t = self.tally
        j = self.to_json()
        out = [f"simulated {len(t.accounts)} accounts, {self.start.isoformat()} .. "
               f"{self.dates[-1].isoformat() if self.dates else self.start.isoformat()} ({self.days} days), "
               f"seed {self.seed}, junk_rate {self.what_if.junk_rate:g}, bounce_rate {self.what_if.bounce_rate:g}",
               "", f"{'date':<11} {'day':<4} {'planned':>8} {'replies':>8} {'sent':>7} {'skipped':>8} "
                   f"{'bounced':>8} {'junk':>6} {'sending':>8} {'held':>5} {'paused':>7}"]
        for p in j["pool"]:
            d = date.fromisoformat(p["date"])
            out.append(f"{p['date']:<11} {d.strftime('%a'):<4} {p['planned']:>8} {p['replies']:>8} {p['sent']:>7} "
                       f"{p['skipped']:>8} {p['bounced']:>8} {p['junk']:>6} {p['accounts_sending']:>8} "
                       f"{p['accounts_held']:>5} {p['accounts_paused']:>7}")
        width = max([len(a.email) for a in t.accounts] + [7])
        out += ["", "target per account and day (-: no sending that day, p: paused, h: held)",
                f"{'account':<{width}} " + " ".join(d.strftime("%d") .rjust(3) for d in self.dates)]
        for a in t.accounts:
            cells = []
            for d in self.dates:
                x = t.rows.get((a.email, d))
                if x is None or x.off:
                    cells.append("  -")
                elif x.paused:
                    cells.append("  p")
                else:
                    cells.append(f"{x.target:>3}" if not x.held else f"{x.target:>2}h")
            out.append(f"{a.email:<{width}} " + " ".join(cells))
        for s in t.spans:
            out.append(f"{s.kind} {s.account} from {s.start.isoformat()}"
                       + (f" until {s.end.isoformat()}" if s.end else "") + f": {s.reason}")
        return "\n".join(out) + "\n"

    def html(self) -> str:
        meta = [f"Simulated with warmupd simulate: {self.days} days from {self.start.isoformat()}, seed {self.seed}, "
                f"{len(self.tally.accounts)} accounts",
                f"What-if: junk_rate {self.what_if.junk_rate:g}, bounce_rate {self.what_if.bounce_rate:g}. "
                "No mail was sent; the plans are the daemon's own for this config and seed "
                "(set daemon.seed to the same value to run exactly this plan)."]
        return render(self.tally, self.config, title="warmupd: simulated warmup", meta=meta, live=False)


class _Engine:
    def __init__(self, config: Config, start: date, days: int, seed: int, what_if: WhatIf,
                 keep_sends: bool, history: Mapping[str, AccountState]) -> None:
        self.config = config
        self.accounts = list(config.accounts)
        self.by_email = {a.email: a for a in self.accounts}
        self.pool = Pool([a.email for a in self.accounts])
        self.dates = date_range(start, days)
        self.last = self.dates[-1] if self.dates else start
        self.seed = seed
        self.what_if = what_if
        self.keep_sends = keep_sends
        self.tally = Tally(self.accounts, self.dates)
        self.plans: dict[tuple[str, date], list[PlannedSend]] = {}
        self.rng = random.Random(f"warmupd-simulate-{seed}")  # outcomes and engagement, not plans
        self.ids = random.Random(seed)  # Message-IDs, as the daemon's own rng draws them
        self.engage = any(a.imap is not None for a in self.accounts) or what_if.bounce_rate > 0
        self.states: dict[str, _State] = {}
        self.sent_days: dict[str, set[str]] = {a.email: set() for a in self.accounts}
        self.day_sends: dict[tuple[str, date], list[_Send]] = {}
        self.planned: set[tuple[str, date]] = set()
        self.placed: dict[tuple[str, str], list[int]] = {}  # (sender, date) -> [inbox, junk]
        self.recent: dict[str, deque[bool]] = {}  # sender -> bounced flags of its last sends
        self.heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        for email, st in history.items():
            self._resume_from(email, st, start)

    def _resume_from(self, email: str, st: AccountState, start: date) -> None:
        """Start an account from its stored state; the days between its last counted day
        and ``start`` count as sent where they are sending days (uninterrupted operation)."""
        account = self.by_email.get(email)
        if account is None:
            return
        self.states[email] = _State(st.warmup_day, st.advanced_through, st.hold_until, st.paused_reason,
                                    st.hold_cut, bool(st.graduated))
        d = date.fromisoformat(st.advanced_through) + timedelta(days=1)
        while d < start:
            if why_not_sending(account, d) is None:
                self.sent_days[email].add(d.isoformat())
            d += timedelta(days=1)
        if st.paused_reason:
            self.tally.spans.append(Span(email, "pause", start, None, st.paused_reason))
        if st.hold_until and st.hold_until > start.isoformat():
            until = date.fromisoformat(st.hold_until)
            self.tally.spans.append(Span(email, "hold", until - timedelta(days=HOLD_DAYS), until,
                                         st.hold_reason or "ramp held"))

    def push(self, at: float, kind: int, item: Any) -> None:
        self._seq += 1
        heapq.heappush(self.heap, (at, self._seq, kind, item))

    def run(self) -> Simulation:
        by_tz: dict[str, list[Account]] = {}
        for a in self.accounts:
            by_tz.setdefault(a.timezone, []).append(a)
        for tz, members in by_tz.items():
            for d in self.dates:
                self.push(day_bounds(tz, d)[0], PLAN, (members, d))
        while self.heap:
            at, _, kind, item = heapq.heappop(self.heap)
            if kind == PLAN:
                self.plan(item[0], item[1])
            elif kind == SEND:
                self.send(item, at)
            else:
                self.reply(item, at)
        for (email, d), sends in self.day_sends.items():
            self.tally.add_day(self.by_email[email], d, [(s.at, s.period, s.recipient) for s in sends
                                                         if s.cancelled is None])
        return Simulation(self.config, self.seed, self.dates[0] if self.dates else self.last, len(self.dates),
                          self.what_if, self.tally, self.plans)

    # ------------------------------------------------------------ midnight

    def plan(self, members: Sequence[Account], d: date) -> None:
        until = (d - timedelta(days=1)).isoformat()
        for a in members:
            st = self.states.get(a.email)
            if st is None:
                st = self.states[a.email] = _State(initial_warmup_day(a, d), until)
            elif st.advanced_through < until:
                st.warmup_day, _ = advance(st.warmup_day, st.advanced_through, until, self.sent_days[a.email],
                                           st.hold_until)
                st.advanced_through = until
            row = self.tally.row(a.email, d)
            row.warmup_day = st.warmup_day
            row.off = why_not_sending(a, d)
            if st.paused:  # the daemon plans nothing for a paused account
                row.paused = True
                continue
            cut = hold_factor(st.hold_until, st.hold_cut, d)
            row.held = bool(st.hold_until and d.isoformat() < st.hold_until)
            target, sends = plan_account_day(a, d, st.warmup_day, plan_rng(self.seed, a.email, d), self.pool,
                                             cut=cut, ids=self.ids, graduated=st.graduated)
            row.target, row.planned = target, len(sends)
            self.planned.add((a.email, d))
            if self.keep_sends:
                self.plans[(a.email, d)] = sends
            if not self.engage:  # every send goes out as planned: no event per send needed
                if sends:
                    row.sent += len(sends)
                    self.sent_days[a.email].add(d.isoformat())
                    self.tally.add_day(a, d, [(s.at, s.period, s.recipient) for s in sends])
                continue
            day = self.day_sends.setdefault((a.email, d), [])
            for s in sends:
                item = _Send(a.email, d, s.at, s.period, s.recipient)
                day.append(item)
                self.push(s.at, SEND, item)

    # ------------------------------------------------------------ a send's moment

    def send(self, s: _Send, at: float) -> None:
        row = self.tally.row(s.account, s.day)
        if s.cancelled is not None:
            row.skipped[s.cancelled] += 1
            return
        sender = self.by_email[s.account]
        row.sent += 1
        self.sent_days[s.account].add(s.day.isoformat())
        bounced = self.rng.random() < self.what_if.bounce_rate
        window = self.recent.setdefault(s.account, deque(maxlen=BOUNCE_WINDOW))
        window.append(bounced)
        if bounced:
            row.bounced += 1
            st = self.states[s.account]
            # The daemon learns of a bounce from the report in the sender's own mailbox: over IMAP only.
            if sender.imap is not None and not st.paused:
                verdict = bounce_verdict(sum(window), len(window), sender.engagement)
                if verdict.band == "pause":
                    self.pause(sender, at, verdict.reason())
            return
        receiver = self.by_email.get(s.recipient)
        if receiver is None or receiver.imap is None:
            return
        placement = "junk" if self.rng.random() < self.what_if.junk_rate else "inbox"
        placed = self.placed.setdefault((s.account, s.day.isoformat()), [0, 0])
        placed[placement == "junk"] += 1
        if placement == "junk":
            row.junk += 1
        else:
            row.inbox += 1
        for kind, due_ms, _ in plan_actions(receiver, placement, s.depth, at, self.rng):
            due = due_ms / 1000
            act_day = local_date(receiver.timezone, due)
            if act_day > self.last:
                continue
            act_row = self.tally.row(receiver.email, act_day)
            if kind == "open":
                act_row.opened += 1
            elif kind == "rescue":
                act_row.rescued += 1
            elif kind == "reply":
                self.push(due, REPLY, (receiver.email, s))
        self.check_hold(sender, s, at)

    def check_hold(self, sender: Account, s: _Send, at: float) -> None:
        """imap.Engagement._check_hold, on the simulated placements."""
        st = self.states[sender.email]
        today = local_date(sender.timezone, at)
        if st.hold_until and st.hold_until > today.isoformat():
            return
        lo = (today - timedelta(days=60)).isoformat()
        dates = {d for d in self.sent_days[sender.email] if lo < d <= today.isoformat()}
        days = sorted({*dates, s.day.isoformat()})[-HOLD_DAYS:]
        inbox = sum(self.placed.get((sender.email, d), (0, 0))[0] for d in days)
        junk = sum(self.placed.get((sender.email, d), (0, 0))[1] for d in days)
        verdict = junk_verdict(junk, inbox + junk, sender.engagement)
        if verdict.band in ("none", "below_min_sample"):
            return
        if verdict.band == "pause":
            if not st.paused:
                self.pause(sender, at, "junk: " + verdict.reason(len(days)))
            return
        until = today + timedelta(days=HOLD_DAYS)
        st.hold_until = until.isoformat()
        st.hold_cut = CUT_FACTOR if verdict.band == "cut" else 1.0
        reason = verdict.reason(len(days)) + ("; the day's target cut by half" if verdict.band == "cut"
                                              else "; ramp held")
        self.tally.spans.append(Span(sender.email, "hold", today, until, reason))
        if verdict.band == "cut":
            pending = [x for x in self.day_sends.get((sender.email, today), ())
                       if x.cancelled is None and x.at > at]
            cut = len(pending) - round(len(pending) * CUT_FACTOR)
            for x in self.rng.sample(pending, cut) if cut > 0 else ():
                x.cancelled = "hold: target cut"

    def pause(self, account: Account, at: float, reason: str) -> None:
        st = self.states[account.email]
        st.paused = reason
        today = local_date(account.timezone, at)
        self.tally.spans.append(Span(account.email, "pause", today, None, reason))
        for d in (today, today + timedelta(days=1)):
            for x in self.day_sends.get((account.email, d), ()):
                if x.cancelled is None and x.at > at:
                    x.cancelled = f"paused: {reason}"

    # ------------------------------------------------------------ a reply action

    def reply(self, item: tuple[str, _Send], at: float) -> None:
        """imap.Engagement._reply's decisions: the replier's day must be planned, the
        thread not too deep, and the day's total inside the ramp's target."""
        email, original = item
        account = self.by_email[email]
        st = self.states.get(email)
        if st is None or st.paused or account.smtp is None:
            return
        day = local_date(account.timezone, at)
        if (email, day) not in self.planned or original.depth >= account.engagement.max_thread_depth:
            return
        if (day - original.day).days > SCAN_SINCE_DAYS + 1:
            return
        sends = self.day_sends.setdefault((email, day), [])
        total = sum(1 for x in sends if x.cancelled is None)
        if total + 1 > day_target(account, st.warmup_day):
            return
        r = _Send(email, day, at, "reply", original.account, depth=original.depth + 1)
        sends.append(r)
        self.tally.row(email, day).replies += 1
        self.send(r, at)


def simulate(config: Config, *, start: date, days: int, seed: int, what_if: WhatIf | None = None,
             keep_sends: bool = False, history: Mapping[str, AccountState] | None = None) -> Simulation:
    """Run ``days`` local days from ``start`` for every account of ``config``; with
    ``history`` (the store's account states), accounts go on from their stored warmup
    day, hold and pause instead of starting from their start dates."""
    if days < 1:
        raise ValueError("days must be at least 1")
    return _Engine(config, start, days, seed, what_if or WhatIf(), keep_sends, history or {}).run()


def run_cli(config: Config, *, days: int, start: str | None, seed: int | None, junk_rate: float,
            bounce_rate: float, as_json: bool, report: str | None, fresh: bool = False) -> int:
    """`warmupd simulate` after its config is loaded: 0, or 64 with one line on stderr."""
    import json
    import sys
    import time
    from pathlib import Path

    def usage(msg: str) -> int:
        print(f"warmupd simulate: {msg}", file=sys.stderr)
        return 64

    if not 1 <= days <= 3660:
        return usage(f"--days must be 1-3660, got {days}")
    for name, v in (("--junk-rate", junk_rate), ("--bounce-rate", bounce_rate)):
        if not 0.0 <= v <= 1.0:
            return usage(f"{name} must be a share between 0 and 1 (e.g. 0.2), got {v:g}")
    if start is None:
        first = local_date(config.accounts[0].timezone, time.time()) if config.accounts else date.today()
    else:
        try:
            first = date.fromisoformat(start)
        except ValueError:
            return usage(f"--start must be a date YYYY-MM-DD, got {start!r}")
    if seed is None:
        seed = config.daemon.seed if config.daemon.seed is not None else random.SystemRandom().getrandbits(31)
    history = {} if fresh else read_states(config.daemon.database)
    sim = simulate(config, start=first, days=days, seed=seed, what_if=WhatIf(junk_rate, bounce_rate),
                   history=history)
    if history:
        print(f"warmupd simulate: going on from the warmup days, holds and pauses stored in "
              f"{config.daemon.database} (--fresh: from the start dates)", file=sys.stderr)
    if report:
        try:
            Path(report).write_text(sim.html(), encoding="utf-8")
        except OSError as e:
            return usage(f"cannot write the report to {report}: {e.strerror or e}")
        print(f"warmupd simulate: report written to {report}", file=sys.stderr)
    if as_json:
        print(json.dumps(sim.to_json(), indent=1))
    else:
        sys.stdout.write(sim.text())
    return 0
