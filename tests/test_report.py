"""The live report's numbers: what ``Store.report_rows`` aggregates inside SQLite and
``report.tally_rows`` makes of it, on a real store filled with a known history
(outcomes with reasons, lateness at the DATA mark, placement, engagement, a past
hold and a current pause, health scores and a graduation), in a zone half an hour
off UTC; and the health chart's band for a pool too large for small multiples."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

from tests.test_simulate import pool_config
from warmupd.config import load_config
from warmupd.report import (
    GAP_EDGES,
    LATE_EDGES,
    MATRIX_UP_TO,
    MULTIPLES_UP_TO,
    live_report,
    noon_offsets,
    render,
    tally_rows,
)
from warmupd.store import AccountState, ReportRows, Store

A, B = "user00@pool0.test", "user01@pool1.test"
DAY1, DAY2 = date(2027, 3, 2), date(2027, 3, 3)


def at(day: date, hh: int, mm: int) -> float:
    """An instant of ``day`` in Asia/Kolkata (UTC+05:30)."""
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=UTC).timestamp() - 5.5 * 3600


async def test_report_aggregates(tmp_path: Path) -> None:
    config = load_config(pool_config(tmp_path, 2, zones=("Asia/Kolkata",)))
    store = await Store.open(tmp_path / "state" / "warmupd.db")
    try:
        send = lambda t, r, p="peak": SimpleNamespace(at=t, period=p, recipient=r, message_id=f"<{t}@x>")  # noqa: E731
        a1 = [send(at(DAY1, 9, 10), B), send(at(DAY1, 9, 40), B), send(at(DAY1, 14, 5), B, "normal")]
        a2 = [send(at(DAY2, 10, 0), B), send(at(DAY2, 10, 20), B)]
        b1 = [send(at(DAY1, 9, 20), A)]
        keys = await store.insert_plan([(A, DAY1.isoformat(), 1, 3, a1), (A, DAY2.isoformat(), 2, 5, a2),
                                        (B, DAY1.isoformat(), 1, 3, b1), (B, DAY2.isoformat(), 2, 5, [])])
        ids = {round(k[0] / 1000): k[1] for k in keys}
        i = [ids[round(s.at)] for s in (*a1, *a2, *b1)]
        late_ms = {i[0]: 3, i[1]: 40, i[2]: 700, i[5]: -2}

        def history(c: sqlite3.Connection) -> None:
            for sid in (i[0], i[1], i[2], i[5]):
                c.execute("UPDATE sends SET status='sent', data_mark=1 WHERE id=?", (sid,))
                c.execute("INSERT INTO events (at_ms, send_id, account, from_status, to_status, detail) "
                          "SELECT at_ms + ?, id, account, 'sending', 'sending', 'DATA mark' FROM sends WHERE id=?",
                          (late_ms[sid], sid))
            c.execute("UPDATE sends SET status='skipped', reason='hold' WHERE id=?", (i[3],))
            c.execute("UPDATE sends SET status='skipped', reason='paused: bounces' WHERE id=?", (i[4],))

        await store.write(history)
        day1 = DAY1.isoformat()
        await store.record_received(i[0], B, "INBOX", "inbox", day1, int(at(DAY1, 9, 11) * 1000), 1000, 1,
                                    [("open", int(at(DAY1, 9, 30) * 1000), None)])
        await store.record_received(i[1], B, "Junk", "junk", day1, int(at(DAY1, 9, 41) * 1000), 1000, 1,
                                    [("rescue", int(at(DAY1, 10, 0) * 1000), None)])
        await store.write(lambda con: con.execute("UPDATE actions SET status='done'"))
        await store.upsert_accounts([AccountState(A, 2, day1, "bounces: 3 of 5", int(at(DAY2, 10, 10) * 1000),
                                                  None, None),
                                     AccountState(B, 2, day1, None, None, None, None, graduated=DAY2.isoformat())])
        # As reputation.update_health stores them: the day before the range and an account
        # gone from the config are not drawn.
        before = (DAY1 - timedelta(days=1)).isoformat()
        await store.save_health([(A, before, 10, "{}"), (A, day1, 64, "{}"), (A, DAY2.isoformat(), 71, "{}"),
                                 (B, DAY2.isoformat(), 85, "{}"), ("gone@pool9.test", day1, 50, "{}")])

        dates = [DAY1, DAY2]
        rows = await store.report_rows(day1, DAY2.isoformat(), json.dumps(noon_offsets(config.accounts, dates)),
                                       [int(e * 1000) for e in GAP_EDGES], list(LATE_EDGES), MATRIX_UP_TO)
        t = tally_rows(config, rows, dates)
        r1, r2 = t.rows[(A, DAY1)], t.rows[(A, DAY2)]
        assert (r1.warmup_day, r1.target, r1.planned, r1.sent) == (1, 3, 3, 3)
        assert (r2.warmup_day, r2.target, r2.planned, r2.sent, r2.pending) == (2, 5, 2, 0, 0)
        assert dict(r2.skipped) == {"hold": 1, "paused": 1} and r2.held and r2.paused
        assert (r1.inbox, r1.junk) == (1, 1)
        b = t.rows[(B, DAY1)]
        assert (b.sent, b.opened, b.rescued) == (1, 1, 1)  # B acted on A's mail
        # Local hours in Asia/Kolkata: 09:10, 09:40, 09:20 -> 9; 14:05 -> 14 (skipped ones not drawn).
        assert t.hours == {"peak": [0] * 9 + [3] + [0] * 14, "normal": [0] * 14 + [1] + [0] * 9}
        # Gaps of A's day 1: 30 min (09:10-09:40) and 4 h 25 min (09:40-14:05).
        assert t.gaps[GAP_EDGES.index(1800)] == 1 and t.gaps[GAP_EDGES.index(14400)] == 1 and sum(t.gaps) == 2
        # Lateness bins: early (-2 ms), 2-5 ms, 20-50 ms, 500-1000 ms.
        assert t.lateness[0] == 1
        assert t.lateness[1 + LATE_EDGES.index(2)] == 1 and t.lateness[1 + LATE_EDGES.index(20)] == 1
        assert t.lateness[1 + LATE_EDGES.index(500)] == 1 and sum(t.lateness) == 4
        assert t.weekdays[DAY1.weekday()] == 4 and sum(t.weekdays) == 4
        assert dict(t.pairs) == {(A, B): 3, (B, A): 1} and t.sent_by[A] == 3 and t.received_by[A] == 1
        kinds = sorted((s.account, s.kind, s.start, s.end) for s in t.spans)
        assert kinds == [(A, "hold", DAY2, DAY2 + timedelta(days=1)), (A, "pause", DAY2, None)]
        assert sorted(rows.health) == [(A, day1, 64), (A, DAY2.isoformat(), 71), (B, DAY2.isoformat(), 85)]
        assert (r1.health, r2.health, b.health, t.rows[(B, DAY2)].health) == (64, 71, None, 85)
        assert t.graduated == {B: DAY2}

        html = await live_report(config, store, at(DAY2, 20, 0), 2)
        assert "warmupd: live report" in html and html.count('class="chart"') == 11
        assert "bounces: 3 of 5" in html
        chart = _chart(html, "health")
        assert chart.count('class="mark"') == 3  # a dot per scored account-day
        assert f"{B} {DAY2.isoformat()}: health 85 (graduate_score 80), graduated" in chart
        assert f"{B} (graduated {DAY2.isoformat()})" in chart and chart.count('class="graduation"') == 1
        assert "<td>64 (1)</td>" in html and "<td>78 (2)</td>" in html  # the day's median (accounts scored)
    finally:
        await store.close()


def _chart(html: str, name: str) -> str:
    m = re.search(f'<svg class="chart" data-chart="{name}".*?</svg>', html, re.S)
    assert m, f"no {name} chart"
    return m.group(0)


def test_health_band_for_a_large_pool(tmp_path: Path) -> None:
    config = load_config(pool_config(tmp_path, MULTIPLES_UP_TO + 2, zones=("Asia/Kolkata",)))
    emails = sorted(a.email for a in config.accounts)
    # Day 1: every account scored 0..61; day 2: none; day 3: half of them, 10 graduated by then.
    health = [(e, DAY1.isoformat(), k) for k, e in enumerate(emails)]
    health += [(e, (DAY1 + timedelta(days=2)).isoformat(), 90) for e in emails[::2]]
    states = [(e, None, None, None, None, (DAY1 + timedelta(days=2)).isoformat() if k < 10 else None)
              for k, e in enumerate(emails)]
    rows = ReportRows([], [], [], [], [], [], [], [], [], [], [], states, health)
    dates = [DAY1, DAY1 + timedelta(days=1), DAY1 + timedelta(days=2)]
    html = render(tally_rows(config, rows, dates), config, title="t", meta=[], live=True)
    chart = _chart(html, "health")
    assert chart.count('class="mark"') == 2  # a median per day that has scores
    assert "62 accounts scored; min 0, quartiles 15.25/30.5/45.75, max 61; 62 below 80; 0 graduated" in chart
    assert "31 accounts scored; min 90, quartiles 90/90/90, max 90; 0 below 80; 10 graduated" in chart
    assert "(10 by the last day)" in chart
