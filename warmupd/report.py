"""The HTML report: one self-contained file of inline SVG charts (no script, no
network at view time) for a simulated run (simulate.py) or what the daemon really
did (the live page and `warmupctl report`, from the store).

Both sources fill one ``Tally`` (per account-day rows, send times by local hour,
gaps between an account's consecutive sends, sends per weekday, who sent to whom,
lateness, holds and pauses); ``render`` draws it. Every chart is an ``<svg
class="chart" data-chart=NAME>`` whose data points are the elements of class
``mark`` (a bar, a cell, a dot), so a test can count what was drawn. Large pools
are drawn as bands and the busiest rows, never one unreadable chart. The health
score (stored per account-day by reputation.py) exists only in the live report:
the simulator computes none.
"""

from __future__ import annotations

import asyncio
import bisect
import html
import json
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from .calendar import iso_utc, local_date, to_local, why_not_sending, zone
from .config import Account, Config, Schedule
from .imap import HOLD_DAYS
from .store import ReportRows, Store

MULTIPLES_UP_TO = 60  # accounts drawn one small chart each; a larger pool gets a band
MATRIX_UP_TO = 60  # senders x recipients drawn as a matrix (the busiest, beyond)
HEAT_ROWS = 60  # accounts in the placement heatmap (the worst inbox rates, beyond)
GAP_EDGES = (0, 10, 30, 60, 120, 300, 600, 900, 1200, 1800, 2700, 3600, 5400, 7200, 10800, 14400,
             21600, 43200, 86400)  # seconds
LATE_EDGES = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 60000)  # ms
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
PALETTE = ("#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#4b5563")
STATUS_COLOURS = {"sent": "#16a34a", "planned": "#2563eb", "pending": "#93c5fd", "skipped": "#d97706",
                  "failed": "#dc2626", "uncertain": "#9333ea"}


@dataclass
class DayRow:
    """One account-day: the plan and what became of it."""

    warmup_day: int = 0
    target: int = 0
    planned: int = 0  # new sends planned
    replies: int = 0
    sent: int = 0
    pending: int = 0
    failed: int = 0
    uncertain: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # by reason
    bounced: int = 0
    inbox: int = 0  # of this account's mail, as received
    junk: int = 0
    opened: int = 0  # engagement this account did
    rescued: int = 0
    held: bool = False
    paused: bool = False
    off: str | None = None  # why the day plans nothing (weekend, holiday, ...)
    health: int | None = None  # the day's stored health score (live report only)


@dataclass(frozen=True)
class Span:
    """A hold or a pause of one account, over local dates [start, end)."""

    account: str
    kind: str  # hold | pause
    start: date
    end: date | None  # None: still on
    reason: str


class Tally:
    """What a report draws, filled by simulate.py or from the store."""

    def __init__(self, accounts: Sequence[Account], dates: Sequence[date]) -> None:
        self.accounts = sorted(accounts, key=lambda a: a.email)
        self.dates = list(dates)
        self.rows: dict[tuple[str, date], DayRow] = {}
        self.hours: dict[str, list[int]] = {}
        self.gaps = [0] * len(GAP_EDGES)
        self.weekdays = [0] * 7
        self.pairs: Counter[tuple[str, str]] = Counter()  # may hold only the busiest senders' pairs
        self.sent_by: Counter[str] = Counter()
        self.received_by: Counter[str] = Counter()
        self.lateness = [0] * (len(LATE_EDGES) + 1)  # [early, then one per edge]
        self.spans: list[Span] = []
        self.graduated: dict[str, date] = {}  # account -> local date it graduated

    def row(self, email: str, day: date) -> DayRow:
        r = self.rows.get((email, day))
        if r is None:
            r = self.rows[(email, day)] = DayRow()
        return r

    def add_day(self, account: Account, day: date, sends: Iterable[tuple[float, str, str]]) -> None:
        """An account-day's sends (instant, period, recipient), any order: local hours,
        gaps between consecutive ones, the weekday, the pairs."""
        times = sorted(sends)
        if not times:
            return
        tz = account.timezone
        for at, period, recipient in times:
            hours = self.hours.get(period)
            if hours is None:
                hours = self.hours[period] = [0] * 24
            hours[to_local(tz, at).hour] += 1
            self.pairs[(account.email, recipient)] += 1
            self.received_by[recipient] += 1
        self.sent_by[account.email] += len(times)
        self.weekdays[day.weekday()] += len(times)
        for (a, _, _), (b, _, _) in zip(times, times[1:], strict=False):
            self.gaps[_bin(GAP_EDGES, b - a)] += 1

    def add_lateness(self, ms: float) -> None:
        self.lateness[0 if ms < 0 else _bin(LATE_EDGES, ms) + 1] += 1

    def pool_day(self, day: date) -> DayRow:
        """The pool's totals for one date."""
        out = DayRow()
        for a in self.accounts:
            r = self.rows.get((a.email, day))
            if r is None:
                continue
            if r.off is None:
                out.target += r.target
            for name in ("planned", "replies", "sent", "pending", "failed", "uncertain", "bounced",
                         "inbox", "junk", "opened", "rescued"):
                setattr(out, name, getattr(out, name) + getattr(r, name))
            out.skipped.update(r.skipped)
            out.held = out.held or r.held
            out.paused = out.paused or r.paused
        return out


def _bin(edges: Sequence[float], v: float) -> int:
    """The index of the last edge <= v (0 below the first)."""
    return max(0, bisect.bisect_right(edges, v) - 1)


# ---------------------------------------------------------------- SVG helpers


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def _svg(name: str, w: int, h: int, body: list[str], title: str) -> str:
    return (f'<svg class="chart" data-chart="{name}" xmlns="http://www.w3.org/2000/svg" width="{w}" '
            f'height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{_e(title)}">'
            + "".join(body) + "</svg>")


def _rect(x: float, y: float, w: float, h: float, fill: str, tip: str, cls: str = "mark") -> str:
    return (f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{max(w, 0.5):.1f}" height="{max(h, 0.5):.1f}" '
            f'fill="{fill}"><title>{_e(tip)}</title></rect>')


def _text(x: float, y: float, s: object, anchor: str = "start", size: int = 10, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f'<text{c} x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}">{_e(s)}</text>'


def _line(x1: float, y1: float, x2: float, y2: float, stroke: str = "#9ca3af", cls: str = "",
          dash: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    d = f' stroke-dasharray="{dash}"' if dash else ""
    return f'<line{c} x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}"{d}/>'


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    for m in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000, 20000, 50000):
        if v <= m:
            return float(m)
    return float(v)


def _axis_y(x: float, top: float, height: float, vmax: float, body: list[str], label: str = "") -> None:
    for k in range(5):
        v = vmax * k / 4
        y = top + height - height * k / 4
        body.append(_line(x, y, x + 4, y, "#d1d5db"))
        body.append(_text(x - 3, y + 3, f"{v:g}", "end", 9))
    if label:
        body.append(_text(x - 30, top - 6, label, "start", 9))


# ---------------------------------------------------------------- the charts


def _ramp(t: Tally, live: bool) -> str:
    if len(t.accounts) > MULTIPLES_UP_TO:
        return _ramp_band(t, live)
    cols = 4
    cw, ch = 230, 110
    rows_n = (len(t.accounts) + cols - 1) // cols
    body: list[str] = []
    n_days = max(1, len(t.dates))
    for k, a in enumerate(t.accounts):
        ox, oy = (k % cols) * cw + 30, (k // cols) * ch + 18
        pw, ph = cw - 40, ch - 40
        rows = [t.rows.get((a.email, d)) for d in t.dates]
        vmax = _nice_max(max([max(r.target + r.replies, r.planned + r.replies) for r in rows if r] or [1]))
        body.append(_text(ox, oy - 5, a.email, "start", 10, "label"))
        body.append(_line(ox, oy + ph, ox + pw, oy + ph, "#9ca3af"))
        body.append(_text(ox - 3, oy + 6, f"{vmax:g}", "end", 8))
        bw = pw / n_days
        pts = []
        for i, (d, r) in enumerate(zip(t.dates, rows, strict=True)):
            if r is None:
                continue
            x = ox + i * bw
            if r.off is None:
                pts.append(f"{x + bw / 2:.1f},{oy + ph - ph * r.target / vmax:.1f}")
            if live:
                _live_stack(body, x, oy, bw, ph, vmax, d, r, a.email)
            elif r.planned or r.replies:
                tip = (f"{a.email} {d.isoformat()} (warmup day {r.warmup_day}): {r.planned} planned of target "
                       f"{r.target}" + (f", {r.replies} replies" if r.replies else "")
                       + (", ramp held" if r.held else ""))
                h = ph * (r.planned + r.replies) / vmax
                body.append(_rect(x + bw * 0.1, oy + ph - h, bw * 0.8, h,
                                  "#d97706" if r.held else STATUS_COLOURS["planned"], tip))
            elif r.paused:
                body.append(_rect(x, oy + ph - 3, bw, 3, "#dc2626", f"{a.email} {d.isoformat()}: paused",
                                  "paused"))
        if pts:
            body.append(f'<polyline class="target" fill="none" stroke="#111827" stroke-width="1.2" '
                        f'points="{" ".join(pts)}"/>')
        if t.dates:
            body.append(_text(ox, oy + ph + 11, t.dates[0].strftime("%m-%d"), "start", 8))
            body.append(_text(ox + pw, oy + ph + 11, t.dates[-1].strftime("%m-%d"), "end", 8))
    return _svg("ramp", cols * cw, max(1, rows_n) * ch + 10, body,
                "ramp per account: planned sends per day (bars) against the target (line)")


def _live_stack(body: list[str], x: float, oy: float, bw: float, ph: float, vmax: float, d: date, r: DayRow,
                email: str) -> None:
    parts = [("sent", r.sent), ("pending", r.pending), ("skipped", sum(r.skipped.values())),
             ("failed", r.failed), ("uncertain", r.uncertain)]
    total = sum(n for _, n in parts)
    if not total:
        return
    reasons = ", ".join(f"{k} {v}" for k, v in r.skipped.most_common(3))
    tip = (f"{email} {d.isoformat()} (warmup day {r.warmup_day}, target {r.target}): sent {r.sent}, pending "
           f"{r.pending}, skipped {sum(r.skipped.values())}" + (f" ({reasons})" if reasons else "")
           + f", failed {r.failed}, uncertain {r.uncertain}")
    y = oy + ph
    body.append(f'<g class="mark"><title>{_e(tip)}</title>')
    for name, n in parts:
        if n:
            h = ph * n / vmax
            y -= h
            body.append(f'<rect x="{x + bw * 0.1:.1f}" y="{y:.1f}" width="{bw * 0.8:.1f}" height="{h:.1f}" '
                        f'fill="{STATUS_COLOURS[name]}"/>')
    body.append("</g>")


def _ramp_band(t: Tally, live: bool) -> str:
    w, h, left, top = 900, 260, 50, 20
    pw, ph = w - left - 20, h - top - 40
    per_day = []
    for d in t.dates:
        vals = [(r.sent + r.pending if live else r.planned + r.replies)
                for a in t.accounts if (r := t.rows.get((a.email, d))) is not None and r.off is None]
        per_day.append(sorted(vals))
    vmax = _nice_max(max((v[-1] for v in per_day if v), default=1))
    body: list[str] = []
    _axis_y(left, top, ph, vmax, body, "sends per account")
    n = max(1, len(t.dates))
    step = pw / n

    def y(v: float) -> float:
        return top + ph - ph * v / vmax

    for i, (d, vals) in enumerate(zip(t.dates, per_day, strict=True)):
        x = left + i * step + step / 2
        if not vals:
            continue
        q1, med, q3 = _quartiles(vals)
        body.append(f'<line x1="{x:.1f}" y1="{y(vals[0]):.1f}" x2="{x:.1f}" y2="{y(vals[-1]):.1f}" '
                    f'stroke="#93c5fd" stroke-width="{max(1.0, step * 0.5):.1f}"/>')
        body.append(f'<line x1="{x:.1f}" y1="{y(q1):.1f}" x2="{x:.1f}" y2="{y(q3):.1f}" stroke="#2563eb" '
                    f'stroke-width="{max(1.0, step * 0.5):.1f}"/>')
        tip = (f"{d.isoformat()}: {len(vals)} accounts sending; min {vals[0]}, quartiles {q1:g}/{med:g}/{q3:g}, "
               f"max {vals[-1]}")
        body.append(f'<circle class="mark" cx="{x:.1f}" cy="{y(med):.1f}" r="3" fill="#111827">'
                    f"<title>{_e(tip)}</title></circle>")
        if i % max(1, n // 10) == 0:
            body.append(_text(x, top + ph + 14, d.strftime("%m-%d"), "middle", 9))
    body.append(_text(left, h - 6, f"{len(t.accounts)} accounts: min-max (light), quartiles (dark), median (dot) "
                                   "of each sending account's sends per day", "start", 10))
    return _svg("ramp", w, h, body, "ramp across the pool")


def _quartiles(vals: Sequence[int]) -> tuple[float, float, float]:
    if len(vals) < 2:
        return float(vals[0]), float(vals[0]), float(vals[0])
    q = statistics.quantiles(vals, n=4, method="inclusive")
    return q[0], q[1], q[2]


def _main_schedule(t: Tally) -> Schedule | None:
    if not t.accounts:
        return None
    counts = Counter(a.schedule for a in t.accounts)
    return counts.most_common(1)[0][0]


def _hours(t: Tally) -> str:
    w, h, left, top = 900, 280, 50, 50
    pw, ph = w - left - 20, h - top - 50
    sched = _main_schedule(t)
    periods = [p.name for p in sched.periods] if sched else []
    names = periods + sorted(set(t.hours) - set(periods))
    colour = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}
    totals = [sum(t.hours.get(n, [0] * 24)[hr] for n in names) for hr in range(24)]
    vmax = _nice_max(max(totals, default=1))
    body: list[str] = []
    bw = pw / 24
    if sched is not None:  # the configured windows, one strip per period
        for k, p in enumerate(sched.periods):
            for s, e in p.windows:
                body.append(f'<rect class="window" x="{left + pw * s / 1440:.1f}" y="{top - 40 + k * 9:.1f}" '
                            f'width="{pw * (e - s) / 1440:.1f}" height="7" fill="{colour[p.name]}" '
                            f'opacity="0.55"><title>{_e(p.name)} window {s // 60:02d}:{s % 60:02d}-'
                            f'{e // 60:02d}:{e % 60:02d}</title></rect>')
    _axis_y(left, top, ph, vmax, body)
    for hr in range(24):
        y: float = top + ph
        for n in names:
            c = t.hours.get(n, [0] * 24)[hr]
            if not c:
                continue
            bh = ph * c / vmax
            y -= bh
            body.append(_rect(left + hr * bw + 1, y, bw - 2, bh, colour[n],
                              f"{n}, {hr:02d}:00-{hr + 1:02d}:00 local: {c} sends"))
        if hr % 2 == 0:
            body.append(_text(left + hr * bw, top + ph + 12, f"{hr:02d}h", "start", 9))
    total = sum(sum(v) for v in t.hours.values()) or 1
    x = left
    for n in names:
        share = sum(t.hours.get(n, [])) / total
        weight = next((p.weight for p in sched.periods if p.name == n), None) if sched else None
        label = f"{n}: {share:.0%} of sends" + (f" (weight {weight:.0%})" if weight is not None else "")
        body.append(f'<rect x="{x:.1f}" y="{h - 22}" width="10" height="10" fill="{colour[n]}"/>')
        body.append(_text(x + 14, h - 13, label, "start", 10))
        x += 30 + 7 * len(label)
    return _svg("hours", w, h, body, "sends by local hour, stacked by period, under the configured windows")


def _gaps(t: Tally) -> str:
    w, h, left, top = 900, 240, 50, 20
    pw, ph = w - left - 20, h - top - 50
    vmax = _nice_max(max(t.gaps, default=1))
    n = len(GAP_EDGES)
    bw = pw / n
    body: list[str] = []
    _axis_y(left, top, ph, vmax, body)
    for i, c in enumerate(t.gaps):
        lo = GAP_EDGES[i]
        hi = GAP_EDGES[i + 1] if i + 1 < n else None
        label = _dur(lo)
        if c:
            bh = ph * c / vmax
            rng = f"{_dur(lo)}-{_dur(hi)}" if hi is not None else f"{_dur(lo)} or more"
            body.append(_rect(left + i * bw + 1, top + ph - bh, bw - 2, bh, "#0891b2", f"gap {rng}: {c}"))
        body.append(_text(left + i * bw, top + ph + 12, label, "start", 8))
    for g in sorted({a.schedule.effective_gap for a in t.accounts}):
        x = left + _gap_pos(g) * bw
        body.append(_line(x, top - 5, x, top + ph, "#dc2626", "limit", "4 3"))
        body.append(_text(x + 3, top + 5, f"min_gap {_dur(g)}", "start", 10))
    body.append(_text(left, h - 8, "gaps between an account's consecutive sends of a day (bins widen to the right)",
                      "start", 10))
    return _svg("gaps", w, h, body, "distribution of gaps between consecutive sends")


def _gap_pos(g: float) -> float:
    """Where ``g`` seconds falls on the binned axis, in bin widths (linear inside a bin)."""
    i = _bin(GAP_EDGES, g)
    if i + 1 >= len(GAP_EDGES):
        return float(i)
    lo, hi = GAP_EDGES[i], GAP_EDGES[i + 1]
    return i + (g - lo) / (hi - lo)


def _dur(s: float | None) -> str:
    if s is None:
        return ""
    if s < 60:
        return f"{s:g}s"
    if s < 3600:
        return f"{s / 60:g}m"
    return f"{s / 3600:g}h"


def _weekdays(t: Tally) -> str:
    w, h, left, top = 440, 220, 50, 20
    pw, ph = w - left - 20, h - top - 40
    vmax = _nice_max(max(t.weekdays, default=1))
    bw = pw / 7
    body: list[str] = []
    _axis_y(left, top, ph, vmax, body)
    for i, c in enumerate(t.weekdays):
        if c:
            bh = ph * c / vmax
            body.append(_rect(left + i * bw + 4, top + ph - bh, bw - 8, bh, "#4b5563", f"{WEEKDAYS[i]}: {c} sends"))
        body.append(_text(left + i * bw + bw / 2, top + ph + 14, WEEKDAYS[i], "middle", 10))
    return _svg("weekdays", w, h, body, "sends per weekday")


def _matrix(t: Tally) -> str:
    emails = [a.email for a in t.accounts]
    if len(emails) > MATRIX_UP_TO:
        busiest = {e for e, _ in t.sent_by.most_common(MATRIX_UP_TO)}
        emails = [e for e in emails if e in busiest]
    cell = max(6, min(22, 600 // max(1, len(emails))))
    left, top = 170, 20
    size = cell * len(emails)
    vmax = max((n for (s, r), n in t.pairs.items()), default=1)
    idx = {e: i for i, e in enumerate(emails)}
    body: list[str] = []
    for e, i in idx.items():
        body.append(_text(left - 4, top + i * cell + cell * 0.7, e, "end", min(10, cell)))
    for (s, r), n in sorted(t.pairs.items()):
        if s in idx and r in idx:
            op = 0.15 + 0.85 * n / vmax
            body.append(_rect(left + idx[r] * cell, top + idx[s] * cell, cell - 1, cell - 1, "#2563eb",
                              f"{s} -> {r}: {n}").replace('fill="#2563eb"', f'fill="#2563eb" fill-opacity="{op:.2f}"'))
    body.append(_line(left, top, left + size, top + size, "#e5e7eb"))
    body.append(_text(left, top + size + 14, "rows: sender, columns: recipient (darker: more)", "start", 10))
    if len(t.accounts) > MATRIX_UP_TO:
        body.append(_text(left, top + size + 28, f"the {len(emails)} busiest senders of {len(t.accounts)}", "start", 10))
    return _svg("pairs", left + size + 20, top + size + 36, body, "who sends to whom")


def _balance(t: Tally) -> str:
    sent, got = t.sent_by, t.received_by
    w, h, left, top = 440, 300, 50, 20
    pw, ph = w - left - 20, h - top - 50
    vmax = _nice_max(max([*sent.values(), *got.values(), 1]))
    body: list[str] = []
    _axis_y(left, top, ph, vmax, body)
    body.append(_line(left, top + ph, left + pw, top, "#d1d5db", dash="3 3"))
    for a in t.accounts:
        ns, ng = sent[a.email], got[a.email]
        cx, cy = left + pw * ns / vmax, top + ph - ph * ng / vmax
        body.append(f'<circle class="mark" cx="{cx:.1f}" cy="{cy:.1f}" r="3.5" fill="#2563eb" fill-opacity="0.7">'
                    f"<title>{_e(a.email)}: sent {ns}, received {ng}</title></circle>")
    body.append(_text(left + pw, top + ph + 14, f"sent (max {vmax:g})", "end", 10))
    body.append(_text(left, h - 8, "one dot per account: sends (x) against receipts (y); the diagonal is balance",
                      "start", 10))
    return _svg("balance", w, h, body, "sends versus receipts per account")


def _placement(t: Tally) -> str:
    rates = []
    for a in t.accounts:
        rows = [t.rows.get((a.email, d)) for d in t.dates]
        inbox = sum(r.inbox for r in rows if r)
        junk = sum(r.junk for r in rows if r)
        if inbox + junk:
            rates.append((inbox / (inbox + junk), a.email))
    rates.sort()
    emails = sorted(e for _, e in rates[:HEAT_ROWS])
    cell_w = max(8, min(26, 700 // max(1, len(t.dates))))
    cell_h = 14
    left, top = 170, 20
    body: list[str] = []
    for i, e in enumerate(emails):
        body.append(_text(left - 4, top + i * cell_h + 10, e, "end", 10))
        for j, d in enumerate(t.dates):
            r = t.rows.get((e, d))
            if r is None or not (r.inbox + r.junk):
                continue
            rate = r.inbox / (r.inbox + r.junk)
            colour = "#16a34a" if rate >= 0.9 else "#d97706" if rate >= 0.7 else "#dc2626"
            body.append(_rect(left + j * cell_w, top + i * cell_h, cell_w - 1, cell_h - 1, colour,
                              f"{e} {d.isoformat()}: inbox {r.inbox}, junk {r.junk} ({rate:.0%} inbox)"))
    for j, d in enumerate(t.dates):
        if j % max(1, len(t.dates) // 8) == 0:
            body.append(_text(left + j * cell_w, top + len(emails) * cell_h + 12, d.strftime("%m-%d"), "start", 9))
    note = ("no placement seen (no account engages over IMAP, or nothing received yet)" if not emails else
            "inbox placement of each account's mail per day: green 90%+, amber 70-90%, red below"
            + (f" (the {len(emails)} worst of {len(rates)})" if len(rates) > HEAT_ROWS else ""))
    body.append(_text(left - 160, top + len(emails) * cell_h + 28, note, "start", 10))
    return _svg("placement", max(600, left + cell_w * len(t.dates) + 20), top + len(emails) * cell_h + 36, body,
                "inbox placement per account per day")


def _engagement(t: Tally) -> str:
    w, h, left, top = 900, 240, 50, 20
    pw, ph = w - left - 20, h - top - 50
    kinds = (("opened", "#2563eb"), ("replies", "#16a34a"), ("rescued", "#d97706"), ("bounced", "#dc2626"))
    days = [t.pool_day(d) for d in t.dates]
    vmax = _nice_max(max([sum(getattr(r, k) for k, _ in kinds) for r in days] or [1]))
    n = max(1, len(t.dates))
    bw = pw / n
    body: list[str] = []
    _axis_y(left, top, ph, vmax, body)
    for i, (d, r) in enumerate(zip(t.dates, days, strict=True)):
        y = top + ph
        for k, colour in kinds:
            c = getattr(r, k)
            if c:
                bh = ph * c / vmax
                y -= bh
                body.append(_rect(left + i * bw + 1, y, bw - 2, bh, colour, f"{d.isoformat()}: {k} {c}"))
        if i % max(1, n // 10) == 0:
            body.append(_text(left + i * bw, top + ph + 12, d.strftime("%m-%d"), "start", 9))
    x = left
    for k, colour in kinds:
        body.append(f'<rect x="{x}" y="{h - 22}" width="10" height="10" fill="{colour}"/>')
        body.append(_text(x + 14, h - 13, k, "start", 10))
        x += 90
    return _svg("engagement", w, h, body, "engagement per day across the pool")


def _timeline(t: Tally) -> str:
    accounts = sorted({s.account for s in t.spans})
    n = max(1, len(t.dates))
    left, top, row_h = 170, 20, 16
    pw = 700
    dw = pw / n
    first = t.dates[0] if t.dates else date.today()
    body: list[str] = []
    for i, e in enumerate(accounts):
        body.append(_text(left - 4, top + i * row_h + 11, e, "end", 10))
    for s in t.spans:
        i = accounts.index(s.account)
        a = max(0, (s.start - first).days)
        b = n if s.end is None else min(n, (s.end - first).days)
        if b <= a and s.end is not None:
            b = a + 1
        colour = "#d97706" if s.kind == "hold" else "#dc2626"
        until = "still on" if s.end is None else f"until {s.end.isoformat()}"
        body.append(_rect(left + a * dw, top + i * row_h + 2, max(dw * 0.5, (b - a) * dw), row_h - 4, colour,
                          f"{s.account}: {s.kind} from {s.start.isoformat()}, {until}: {s.reason}"))
    for j, d in enumerate(t.dates):
        if j % max(1, n // 8) == 0:
            body.append(_text(left + j * dw, top + len(accounts) * row_h + 12, d.strftime("%m-%d"), "start", 9))
    body.append(_text(10, top + len(accounts) * row_h + 28,
                      "no hold or pause in this period" if not accounts else
                      "holds (amber: ramp held after junk placement) and pauses (red)", "start", 10))
    return _svg("timeline", left + pw + 20, top + len(accounts) * row_h + 36, body, "holds and pauses")


def _health(t: Tally) -> str:
    """Each account's daily health score against its graduate_score: small multiples,
    or a band across a larger pool; a dot (mark) per scored account-day."""
    if len(t.accounts) > MULTIPLES_UP_TO:
        return _health_band(t)
    scored = [a for a in t.accounts if any((r := t.rows.get((a.email, d))) is not None and r.health is not None
                                           for d in t.dates)]
    if not scored:
        return _svg("health", 600, 40, [_text(10, 24, "no health score stored in this period", "start", 10)],
                    "health score per account per day")
    cols = 4
    cw, ch = 230, 110
    rows_n = (len(scored) + cols - 1) // cols
    body: list[str] = []
    n_days = max(1, len(t.dates))
    for k, a in enumerate(scored):
        ox, oy = (k % cols) * cw + 30, (k // cols) * ch + 18
        pw, ph = cw - 40, ch - 40
        bw = pw / n_days
        grad = t.graduated.get(a.email)
        mark = a.reputation.graduate_score
        label = a.email + (f" (graduated {grad.isoformat()})" if grad else "")
        body.append(_text(ox, oy - 5, label, "start", 9 if grad else 10, "label"))
        body.append(_line(ox, oy + ph, ox + pw, oy + ph, "#9ca3af"))
        body.append(_text(ox - 3, oy + 6, "100", "end", 8))
        gy = oy + ph - ph * mark / 100
        body.append(_line(ox, gy, ox + pw, gy, "#16a34a", "graduate-score", "3 3"))
        body.append(_text(ox - 3, gy + 3, f"{mark}", "end", 8))
        if grad is not None and t.dates and t.dates[0] <= grad <= t.dates[-1]:
            gx = ox + (grad - t.dates[0]).days * bw + bw / 2
            body.append(_line(gx, oy, gx, oy + ph, "#16a34a", "graduation"))
        pts: list[str] = []
        for i, d in enumerate(t.dates):
            r = t.rows.get((a.email, d))
            if r is None or r.health is None:
                continue
            x, y = ox + i * bw + bw / 2, oy + ph - ph * r.health / 100
            pts.append(f"{x:.1f},{y:.1f}")
            done = grad is not None and grad <= d
            tip = (f"{a.email} {d.isoformat()}: health {r.health} (graduate_score {mark})"
                   + (", graduated" if done else ""))
            body.append(f'<circle class="mark" cx="{x:.1f}" cy="{y:.1f}" r="2.5" '
                        f'fill="{"#16a34a" if done else "#2563eb"}"><title>{_e(tip)}</title></circle>')
        if len(pts) > 1:
            body.append(f'<polyline class="score" fill="none" stroke="#93c5fd" stroke-width="1" '
                        f'points="{" ".join(pts)}"/>')
        if t.dates:
            body.append(_text(ox, oy + ph + 11, t.dates[0].strftime("%m-%d"), "start", 8))
            body.append(_text(ox + pw, oy + ph + 11, t.dates[-1].strftime("%m-%d"), "end", 8))
    foot = rows_n * ch + 10
    unscored = len(t.accounts) - len(scored)
    body.append(_text(10, foot + 8, "score per day (dots; green once graduated) against graduate_score (dashed); "
                      "a green bar marks the graduation day" + (f"; {unscored} account(s) without a score"
                                                                if unscored else ""), "start", 10))
    return _svg("health", cols * cw, foot + 16, body, "health score per account per day")


def _health_band(t: Tally) -> str:
    w, h, left, top = 900, 260, 50, 20
    pw, ph = w - left - 20, h - top - 40
    marks = Counter(a.reputation.graduate_score for a in t.accounts)
    mark = marks.most_common(1)[0][0]
    body: list[str] = []
    _axis_y(left, top, ph, 100, body, "score")
    n = max(1, len(t.dates))
    step = pw / n

    def y(v: float) -> float:
        return top + ph - ph * v / 100

    body.append(_line(left, y(mark), left + pw, y(mark), "#16a34a", "graduate-score", "3 3"))
    share: list[str] = []
    for i, d in enumerate(t.dates):
        x = left + i * step + step / 2
        graduated = sum(1 for g in t.graduated.values() if g <= d)
        share.append(f"{x:.1f},{y(100 * graduated / len(t.accounts)):.1f}")
        vals = sorted(r.health for a in t.accounts
                      if (r := t.rows.get((a.email, d))) is not None and r.health is not None)
        if i % max(1, n // 10) == 0:
            body.append(_text(x, top + ph + 14, d.strftime("%m-%d"), "middle", 9))
        if not vals:
            continue
        q1, med, q3 = _quartiles(vals)
        below = sum(1 for v in vals if v < mark)
        body.append(f'<line x1="{x:.1f}" y1="{y(vals[0]):.1f}" x2="{x:.1f}" y2="{y(vals[-1]):.1f}" '
                    f'stroke="#93c5fd" stroke-width="{max(1.0, step * 0.5):.1f}"/>')
        body.append(f'<line x1="{x:.1f}" y1="{y(q1):.1f}" x2="{x:.1f}" y2="{y(q3):.1f}" stroke="#2563eb" '
                    f'stroke-width="{max(1.0, step * 0.5):.1f}"/>')
        tip = (f"{d.isoformat()}: {len(vals)} accounts scored; min {vals[0]}, quartiles {q1:g}/{med:g}/{q3:g}, "
               f"max {vals[-1]}; {below} below {mark}; {graduated} graduated")
        body.append(f'<circle class="mark" cx="{x:.1f}" cy="{y(med):.1f}" r="3" fill="#111827">'
                    f"<title>{_e(tip)}</title></circle>")
    if share:
        body.append(f'<polyline class="graduated" fill="none" stroke="#16a34a" stroke-width="1.5" '
                    f'points="{" ".join(share)}"/>')
    others = "" if len(marks) == 1 else f" (the most common of {len(marks)})"
    body.append(_text(left, h - 6, f"{len(t.accounts)} accounts: min-max (light), quartiles (dark), median (dot) "
                                   f"of the day's scores; dashed: graduate_score {mark}{others}; green line: "
                                   f"% of the pool graduated ({len(t.graduated)} by the last day)", "start", 10))
    return _svg("health", w, h, body, "health score across the pool")


def _lateness(t: Tally) -> str:
    w, h, left, top = 900, 220, 50, 20
    pw, ph = w - left - 20, h - top - 50
    vmax = _nice_max(max(t.lateness, default=1))
    labels = ["early"] + [f"{e:g}ms" for e in LATE_EDGES]
    bw = pw / len(labels)
    body: list[str] = []
    _axis_y(left, top, ph, vmax, body)
    for i, c in enumerate(t.lateness):
        if c:
            bh = ph * c / vmax
            body.append(_rect(left + i * bw + 1, top + ph - bh, bw - 2, bh, "#9333ea",
                              f"{labels[i]}{'' if i == 0 else ' or more'}: {c} sends"))
        body.append(_text(left + i * bw, top + ph + 12, labels[i], "start", 8))
    body.append(_text(left, h - 8, "the DATA mark minus the planned instant, per send (MAIL FROM goes out at the instant, then RCPT TO)", "start", 10))
    return _svg("lateness", w, h, body, "lateness at send")


# ---------------------------------------------------------------- the page


def _settings(config: Config, accounts: Sequence[Account]) -> str:
    groups: dict[Schedule, list[Account]] = {}
    for a in accounts:
        groups.setdefault(a.schedule, []).append(a)
    out: list[str] = []
    for sched, members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        names = ", ".join(a.email for a in members[:6]) + (f" and {len(members) - 6} more" if len(members) > 6 else "")
        days = " ".join(WEEKDAYS[d] for d in sorted(sched.weekdays))
        r = sched.ramp
        lines = [f"{len(members)} account(s): {names}",
                 f"  timezone {sched.timezone}; weekdays {days}; holidays {sched.holidays or 'none'}",
                 f"  ramp start {r.start}, step {r.step}, max {r.max}",
                 f"  min_gap {_dur(sched.min_gap)} (effective {_dur(sched.effective_gap)}), max_per_hour "
                 f"{sched.max_per_hour}, jitter {_dur(sched.jitter)}, micro_jitter {_dur(sched.micro_jitter)}"]
        for p in sched.periods:
            wins = ", ".join(f"{s // 60:02d}:{s % 60:02d}-{e // 60:02d}:{e % 60:02d}" for s, e in p.windows)
            lines.append(f"  period {p.name}: weight {p.weight:g}, windows {wins}")
        eng = members[0].engagement
        if any(a.imap is not None for a in members):
            lines.append(f"  engagement: reply_rate {eng.reply_rate:g}, hold_junk_rate {eng.hold_junk_rate:g}, "
                         f"bounce_pause_rate {eng.bounce_pause_rate:g}, delay {_dur(eng.delay_min)}-"
                         f"{_dur(eng.delay_max)}")
        out.append("\n".join(lines))
    return f"config file {config.path}\n\n" + "\n\n".join(out)


def _table(t: Tally, live: bool) -> str:
    head = (["date", "day", "target", "planned", "replies", "sent", "pending", "skipped", "failed", "uncertain",
             "inbox", "junk", "health median (scored)"] if live else
            ["date", "day", "target", "planned", "replies", "bounced", "junk", "accounts held", "accounts paused"])
    rows = []
    for d in t.dates:
        r = t.pool_day(d)
        held = sum(1 for a in t.accounts if (x := t.rows.get((a.email, d))) and x.held)
        paused = sum(1 for a in t.accounts if (x := t.rows.get((a.email, d))) and x.paused)
        skipped = sum(r.skipped.values())
        reasons = ", ".join(f"{k} {v}" for k, v in r.skipped.most_common(3))
        cells = ([d.isoformat(), WEEKDAYS[d.weekday()], r.target, r.planned, r.replies, r.sent, r.pending,
                  f"{skipped}" + (f" ({reasons})" if reasons else ""), r.failed, r.uncertain, r.inbox, r.junk,
                  _median_health(t, d)]
                 if live else
                 [d.isoformat(), WEEKDAYS[d.weekday()], r.target, r.planned, r.replies, r.bounced, r.junk, held,
                  paused])
        rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _median_health(t: Tally, d: date) -> str:
    """The day's median score across the accounts scored that day ("" when none was)."""
    vals = [r.health for a in t.accounts if (r := t.rows.get((a.email, d))) is not None and r.health is not None]
    return f"{statistics.median(vals):g} ({len(vals)})" if vals else ""


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#111827;max-width:1000px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 6px;border-bottom:1px solid #e5e7eb}
p.meta{color:#4b5563;margin:2px 0} section p{color:#4b5563;font-size:13px;margin:4px 0 8px}
svg.chart{display:block;background:#fff;max-width:100%;height:auto} svg text{fill:#374151}
.pair{display:flex;gap:16px;flex-wrap:wrap}
table{border-collapse:collapse;font-size:12px} td,th{padding:2px 8px;border-bottom:1px solid #f3f4f6;text-align:right}
th{background:#f9fafb} td:first-child,th:first-child{text-align:left}
pre{background:#f9fafb;padding:10px;font-size:12px;overflow-x:auto}
"""


def render(t: Tally, config: Config, *, title: str, meta: Sequence[str], live: bool) -> str:
    """The report as one HTML document."""
    sections = [
        ("Ramp", "Per account and day: " + ("what became of the plan (sent, pending, skipped, failed, uncertain)"
                                            if live else "the sends planned")
         + " against the ramp's target (line). Weekends and holidays plan nothing.", _ramp(t, live)),
        ("Send times", "Sends by the account's local hour, by period, under the configured windows "
                       "(strips at the top; the most common schedule).", _hours(t)),
        ("Gaps between sends", "Time between an account's consecutive sends of a day, against min_gap.", _gaps(t)),
        ("Weekdays", "Sends per weekday.", _weekdays(t)),
        ("Pairing", "Who sends to whom, and each account's sends against its receipts.",
         f'<div class="pair">{_matrix(t)}{_balance(t)}</div>'),
        ("Inbox placement", "Where each account's mail landed, per day.", _placement(t)),
        ("Engagement", "Opens, replies, rescues from junk and bounces, per day.", _engagement(t)),
        ("Holds and pauses", "When an account's ramp was held or the account paused.", _timeline(t)),
        ("Health", "Each account's health score per local day (0-100; README \"Health score\") against its "
                   "graduate_score, and when it graduated." if live else
         "The simulator computes no health score (it needs placement, DNS and blocklist results): the live "
         "report draws it.", _health(t) if live else ""),
    ]
    if live:
        sections.append(("Lateness at send", "How late each send's MAIL FROM went out.", _lateness(t)))
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>",
             f"<meta name=\"viewport\" content=\"width=device-width\"><style>{CSS}</style></head><body>",
             f"<h1>{_e(title)}</h1>"]
    parts += [f'<p class="meta">{_e(m)}</p>' for m in meta]
    for name, note, chart in sections:
        parts.append(f'<section><h2>{_e(name)}</h2><p>{_e(note)}</p>{chart}</section>')
    parts.append(f"<section><h2>Per day</h2>{_table(t, live)}</section>")
    parts.append(f"<section><h2>Configuration</h2><pre>{_e(_settings(config, t.accounts))}</pre></section>")
    parts.append("</body></html>")
    return "".join(parts)


def date_range(first: date, days: int) -> list[date]:
    return [first + timedelta(days=i) for i in range(days)]


# ---------------------------------------------------------------- from the store


def report_dates(config: Config, now: float, days: int) -> list[date]:
    """The last ``days`` local dates, up to the latest "today" among the pool's zones."""
    last = max((local_date(a.timezone, now) for a in config.accounts), default=date.today())
    return date_range(last - timedelta(days=days - 1), days)


def noon_offsets(accounts: Sequence[Account], dates: Sequence[date]) -> list[list[object]]:
    """[account, local date, UTC offset in minutes at local noon]: the local hour of a send
    (DST changes at night, windows are by day)."""
    out: list[list[object]] = []
    by_tz: dict[tuple[str, date], int] = {}
    for a in accounts:
        for d in dates:
            off = by_tz.get((a.timezone, d))
            if off is None:
                noon = datetime.combine(d, datetime.min.time().replace(hour=12), zone(a.timezone))
                delta = noon.utcoffset()
                off = by_tz[(a.timezone, d)] = int(delta.total_seconds() // 60) if delta else 0
            out.append([a.email, d.isoformat(), off])
    return out


def tally_rows(config: Config, rows: ReportRows, dates: Sequence[date]) -> Tally:
    """A Tally of what the daemon did, from ``Store.report_rows``."""
    t = Tally(config.accounts, dates)
    by_email = {a.email: a for a in config.accounts}
    in_range = {d.isoformat(): d for d in dates}

    def row(email: str, day: str) -> DayRow | None:
        d = in_range.get(day)
        return t.row(email, d) if d is not None and email in by_email else None

    for a in config.accounts:
        for d in dates:
            t.row(a.email, d).off = why_not_sending(a, d)
    for email, day, wday, target in rows.days:
        if (r := row(email, day)) is not None:
            r.warmup_day, r.target = wday, target
    for email, day, kind, status, reason, n, bounced in rows.statuses:
        if (r := row(email, day)) is None:
            continue
        if kind == "reply":
            r.replies += n
        else:
            r.planned += n
        r.bounced += bounced
        if status == "sent":
            r.sent += n
        elif status in ("pending", "sending"):
            r.pending += n
        elif status == "failed":
            r.failed += n
        elif status == "uncertain":
            r.uncertain += n
        else:
            r.skipped[reason.split(":")[0] or "skipped"] += n
            r.held = r.held or reason == "hold"
            r.paused = r.paused or reason.startswith("paused")
    for period, hour, n in rows.hours:
        t.hours.setdefault(period, [0] * 24)[hour] += n
    for b, n in rows.gaps:
        t.gaps[max(0, b)] += n
    for b, n in rows.late:
        t.lateness[0 if b < 0 else b + 1] += n
    for day, n in rows.weekdays:
        t.weekdays[date.fromisoformat(day).weekday()] += n
    t.sent_by.update(dict(rows.sent_by))
    t.received_by.update(dict(rows.received_by))
    t.pairs.update({(s, r): n for s, r, n in rows.pairs})
    for email, day, placement, n in rows.placements:
        if (r := row(email, day)) is not None:
            if placement == "junk":
                r.junk += n
            else:
                r.inbox += n
    for email, day, kind, n in rows.actions:
        if (r := row(email, day)) is not None:
            if kind == "open":
                r.opened += n
            elif kind == "rescue":
                r.rescued += n
    for email, day, score in rows.health:
        if (r := row(email, day)) is not None:
            r.health = score
    for email, paused, paused_ms, hold_until, hold_reason, graduated in rows.states:
        acct = by_email.get(email)
        if acct is None:
            continue
        if graduated:
            t.graduated[email] = date.fromisoformat(graduated)
        if paused:
            since = local_date(acct.timezone, (paused_ms or 0) / 1000)
            t.spans.append(Span(email, "pause", since, None, paused))
            for d in dates:
                if d >= since:
                    t.row(email, d).paused = True
        if hold_until:
            until = date.fromisoformat(hold_until)
            start = until - timedelta(days=HOLD_DAYS)
            t.spans.append(Span(email, "hold", start, until, hold_reason or "ramp held"))
            for d in dates:
                if start <= d < until:
                    t.row(email, d).held = True
    _spans_from_days(t)
    return t


def _spans_from_days(t: Tally) -> None:
    """Past holds and pauses the accounts table no longer holds (it keeps the current
    ones): runs of days whose sends were skipped for them."""
    for a in t.accounts:
        for kind in ("hold", "pause"):
            covered = {d for s in t.spans if s.account == a.email and s.kind == kind for d in t.dates
                       if s.start <= d and (s.end is None or d < s.end)}
            run: list[date] = []
            for d in [*t.dates, None]:
                r = t.rows.get((a.email, d)) if d is not None else None
                flagged = r is not None and d not in covered and (r.held if kind == "hold" else r.paused)
                if flagged and d is not None:
                    run.append(d)
                elif run:
                    t.spans.append(Span(a.email, kind, run[0], run[-1] + timedelta(days=1),
                                        "sends skipped for it on these days"))
                    run = []


REPORT_DAYS = 14
REPORT_DAYS_MAX = 90


def report_days(value: str | int | None) -> int:
    """The report's ``days`` argument: a whole number 1-90 (default 14)."""
    if value is None or value == "":
        return REPORT_DAYS
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"days must be a whole number 1-{REPORT_DAYS_MAX}, got {str(value)[:20]!r}") from None
    if not 1 <= n <= REPORT_DAYS_MAX:
        raise ValueError(f"days must be a whole number 1-{REPORT_DAYS_MAX}, got {n}")
    return n


async def live_report(config: Config, store: Store, now: float, days: int) -> str:
    """The report of the last ``days`` local days from the daemon's store (the live page,
    `warmupctl report`). SQLite aggregates on the store's cold reader; the tally and the
    drawing run on a worker thread, so a report over a large pool does not hold up the
    event loop's timers for its whole length."""
    dates = report_dates(config, now, days)
    offsets = await asyncio.to_thread(lambda: json.dumps(noon_offsets(config.accounts, dates)))
    rows = await store.report_rows(dates[0].isoformat(), dates[-1].isoformat(), offsets,
                                   [int(e * 1000) for e in GAP_EDGES], list(LATE_EDGES), MATRIX_UP_TO)
    return await asyncio.to_thread(_live_html, config, rows, dates, days, now, str(store.path))


def _live_html(config: Config, rows: ReportRows, dates: list[date], days: int, now: float, path: str) -> str:
    t = tally_rows(config, rows, dates)
    meta = [f"What the daemon did: {days} local days to {dates[-1].isoformat()}, {len(config.accounts)} accounts, "
            f"from {path}",
            f"Generated {iso_utc(now)}. Lateness is measured at each send's DATA mark (MAIL FROM goes out at the "
            "planned instant, then RCPT TO)."]
    return render(t, config, title="warmupd: live report", meta=meta, live=True)
