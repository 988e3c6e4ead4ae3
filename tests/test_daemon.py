"""`warmupd run`: the real daemon, a real aiosmtpd server (tests/rig), the real clock.

Sends are pre-seeded into the database a few seconds ahead (``seed_plan``), so
that what goes out, and when, does not depend on the random planner. Runs that
only differ by the faults injected share one daemon run per module fixture
(one fault per sender) to keep the file's run time down. The rollover test runs
a ``Daemon`` in-process on a fake clock.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_helpers import (
    ALICE,
    BOB,
    CAROL,
    FINAL,
    DaemonFactory,
    DaemonProc,
    Seed,
    Seeded,
    account_row,
    all_final,
    db_path,
    seed_plan,
    send_events,
    send_rows,
    skip_near_midnight,
    wait_rows,
    write_config,
)
from tests.rig.fixtures import RIG_USERS
from tests.rig.smtp_server import SMTPServer
from warmupd.config import load_config
from warmupd.planning import Planning
from warmupd.store import AccountState, Store

LATE_OK = 0.5  # MAIL FROM may come this much after the planned instant, never before


# ---------------------------------------------------------------- fixtures and runners


@dataclass
class Run:
    tmp: Path
    seeded: list[Seeded]
    rows: dict[int, dict[str, Any]]  # by id
    messages: list[dict[str, Any]]  # what the SMTP server accepted
    daemon: DaemonProc
    rc: int

    def mids(self) -> Counter[str]:
        return Counter(m["message_id"] for m in self.messages)

    def of(self, account: str) -> list[dict[str, Any]]:
        return [r for r in self.rows.values() if r["account"] == account]

    def received(self, message_id: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["message_id"] == message_id]


def run_scenario(tmp: Path, srv: SMTPServer, seeds: Mapping[str, Sequence[float]],
                 faults: Sequence[tuple[str, dict[str, Any]]], *, settle: float = 0.0,
                 timeout: float = 25.0, **config: Any) -> Run:
    """Seed sends at now + offsets, inject the faults, run the daemon until every row
    is final (then ``settle`` s more), stop it with SIGTERM and collect everything."""
    skip_near_midnight(180)
    cfg = write_config(tmp, srv.port, **config)
    now = time.time()
    seeded = seed_plan(tmp, {a: [now + o for o in offs] for a, offs in seeds.items()})
    for mode, kw in faults:
        srv.set_fault(mode, **kw)
    d = DaemonProc(cfg, tmp)
    try:
        d.start()
        wait_rows(tmp, all_final, timeout, "every send to reach a final status")
        time.sleep(settle)
        d.send_signal(signal.SIGTERM)
        rc = d.wait(20)
    finally:
        d.close()
        srv.reset()
    rows = {r["id"]: r for r in send_rows(tmp)}
    return Run(tmp, seeded, rows, srv.messages, d, rc)


@pytest.fixture(scope="module")
def module_smtp() -> Iterator[SMTPServer]:
    server = SMTPServer(users=RIG_USERS).start()
    try:
        yield server
    finally:
        server.stop()


def _fresh(srv: SMTPServer) -> SMTPServer:
    srv.reset()
    srv.clear()
    return srv


def assert_clean(run: Run) -> None:
    """Exit 0, no error events, every row final, no Message-ID accepted twice."""
    assert run.rc == 0, run.daemon.output()[-3000:]
    assert not run.daemon.errors(), run.daemon.errors()
    assert all(r["status"] in FINAL for r in run.rows.values()), run.rows
    dup = [m for m, n in run.mids().items() if n > 1]
    assert not dup, f"Message-IDs accepted more than once: {dup}"


# ---------------------------------------------------------------- exact firing


def test_sends_go_out_at_their_planned_instants(tmp_path: Path, smtp_server: SMTPServer) -> None:
    offsets = {ALICE: [3.0, 4.6], BOB: [3.4, 5.1], CAROL: [3.8, 5.5]}
    run = run_scenario(tmp_path, smtp_server, offsets, [])
    assert_clean(run)
    assert len(run.messages) == 6
    for s in run.seeded:
        row = run.rows[s.id]
        assert row["status"] == "sent" and row["attempts"] == 1, row
        assert row["data_mark"] == 1 and row["sent_at_ms"] >= row["at_ms"]
        (msg,) = run.received(s.message_id)
        assert msg["mail_from"] == s.account
        assert msg["rcpt_tos"] == [row["recipient"]]
        assert msg["x_warmup_id"] == str(s.id)
        assert msg["auth_login"] == s.account
        late = msg["mail_from_at"] - row["at_ms"] / 1000
        assert 0 <= late < LATE_OK, f"send {s.id}: MAIL FROM {late:+.3f} s from its instant"


# ---------------------------------------------------------------- temporary failures


@pytest.fixture(scope="module")
def retry_run(module_smtp: SMTPServer, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """alice: one 451 then success; bob: 451 for ever (max_attempts 3); carol: one 421."""
    return run_scenario(
        tmp_path_factory.mktemp("retry"), _fresh(module_smtp),
        {ALICE: [3.0], BOB: [3.3], CAROL: [3.6]},
        [("451", {"count": 1, "sender": ALICE}), ("451", {"sender": BOB}),
         ("421", {"count": 1, "sender": CAROL})],
        max_attempts=3)


def test_451_is_retried_then_sent(retry_run: Run) -> None:
    assert_clean(retry_run)
    (s,) = [s for s in retry_run.seeded if s.account == ALICE]
    row = retry_run.rows[s.id]
    assert row["status"] == "sent" and row["attempts"] == 2, row
    assert row["at_ms"] == round(s.at * 1000), "the planned instant never changes"
    assert row["message_id"] == s.message_id
    (msg,) = retry_run.received(s.message_id)  # the same Message-ID, once
    assert msg["x_warmup_id"] == str(s.id)
    # The retry was scheduled (retry_at) after the planned instant and went out at it.
    (pending,) = retry_run.daemon.find("send pending", run=1, send_id=s.id)
    assert "451" in pending["last_error"]
    retry_at = datetime.fromisoformat(pending["retry_at"].replace("Z", "+00:00")).timestamp()
    assert s.at + 0.4 < retry_at < s.at + 2.0
    assert 0 <= msg["mail_from_at"] - retry_at < LATE_OK
    if row["retry_at_ms"] is not None:  # kept on the row, or cleared once sent: both fine
        assert abs(row["retry_at_ms"] / 1000 - retry_at) < 0.002
    flow = [(a, b) for a, b, _ in send_events(retry_run.tmp, s.id)]
    assert flow == [("pending", "sending"), ("sending", "pending"),  # 451 at MAIL FROM
                    ("pending", "sending"), ("sending", "sending"), ("sending", "sent")], flow


def test_retries_exhausted_skip_the_send(retry_run: Run) -> None:
    (s,) = [s for s in retry_run.seeded if s.account == BOB]
    row = retry_run.rows[s.id]
    assert row["status"] == "skipped" and row["attempts"] == 3, row
    assert row["reason"].startswith("gave up after 3 attempts") and "451" in row["reason"]
    assert "451" in row["last_error"]
    assert not retry_run.received(s.message_id)
    assert row["at_ms"] == round(s.at * 1000)


def test_421_is_retried(retry_run: Run) -> None:
    (s,) = [s for s in retry_run.seeded if s.account == CAROL]
    row = retry_run.rows[s.id]
    assert row["status"] == "sent" and row["attempts"] == 2, row
    assert len(retry_run.received(s.message_id)) == 1
    (pending,) = retry_run.daemon.find("send pending", run=1, send_id=s.id)
    assert "421" in pending["last_error"]


# ---------------------------------------------------------------- dropped, 550, stall before DATA


@pytest.fixture(scope="module")
def fault_run(module_smtp: SMTPServer, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """alice: connection dropped once at MAIL; bob: 550; carol: stalled 3 s at MAIL
    (before DATA) with a 2 s smtp timeout."""
    return run_scenario(
        tmp_path_factory.mktemp("faults"), _fresh(module_smtp),
        {ALICE: [3.0], BOB: [3.2, 4.4], CAROL: [3.4]},
        [("drop", {"count": 1, "sender": ALICE}), ("550", {"count": 1, "sender": BOB}),
         ("stall_before", {"count": 1, "sender": CAROL, "seconds": 3.0})],
        timeouts={CAROL: "2s"})


def test_dropped_connection_is_retried(fault_run: Run) -> None:
    assert_clean(fault_run)
    (s,) = [s for s in fault_run.seeded if s.account == ALICE]
    row = fault_run.rows[s.id]
    assert row["status"] == "sent" and row["attempts"] == 2, row
    assert len(fault_run.received(s.message_id)) == 1
    assert fault_run.daemon.find("send pending", run=1, send_id=s.id)


def test_550_fails_the_send(fault_run: Run) -> None:
    first, second = [s for s in fault_run.seeded if s.account == BOB]
    row = fault_run.rows[first.id]
    assert row["status"] == "failed" and row["attempts"] == 1, row
    assert "550" in row["last_error"]
    assert not fault_run.received(first.message_id)
    # A permanent failure of one message does not pause the account.
    assert fault_run.rows[second.id]["status"] == "sent"
    assert account_row(fault_run.tmp, BOB)["paused_reason"] is None


def test_stall_before_data_times_out_and_is_retried(fault_run: Run) -> None:
    (s,) = [s for s in fault_run.seeded if s.account == CAROL]
    row = fault_run.rows[s.id]
    assert row["status"] == "sent" and row["attempts"] == 2, row
    assert row["data_mark"] == 1
    assert len(fault_run.received(s.message_id)) == 1
    (pending,) = fault_run.daemon.find("send pending", run=1, send_id=s.id)
    assert "Timeout" in pending["last_error"] or "timed out" in pending["last_error"].lower()


# ---------------------------------------------------------------- 535 and stall after DATA


@pytest.fixture(scope="module")
def auth_run(module_smtp: SMTPServer, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """alice: AUTH rejected with 535 (for good); bob: stalled 4 s after DATA with a 2 s
    smtp timeout; carol: no fault."""
    return run_scenario(
        tmp_path_factory.mktemp("auth"), _fresh(module_smtp),
        {ALICE: [3.0, 5.0, 6.0], BOB: [3.2], CAROL: [3.5, 5.5, 6.5]},
        [("535", {"sender": ALICE}), ("stall_after", {"count": 1, "sender": BOB, "seconds": 4.0})],
        timeouts={BOB: "2s"}, settle=2.5)


def test_535_fails_and_pauses_the_account(auth_run: Run) -> None:
    assert_clean(auth_run)
    first, *later = [s for s in auth_run.seeded if s.account == ALICE]
    row = auth_run.rows[first.id]
    assert row["status"] == "failed" and "535" in row["last_error"], row
    for s in later:
        r = auth_run.rows[s.id]
        assert r["status"] == "skipped" and r["reason"].startswith("paused"), r
        assert r["attempts"] == 0
    assert not [m for m in auth_run.messages if m["mail_from"] == ALICE]
    assert "535" in (account_row(auth_run.tmp, ALICE)["paused_reason"] or "")
    assert auth_run.daemon.find("account paused", run=1, account=ALICE)
    # The others go on sending.
    for s in auth_run.seeded:
        if s.account == CAROL:
            assert auth_run.rows[s.id]["status"] == "sent"
            assert len(auth_run.received(s.message_id)) == 1


def test_stall_after_data_is_uncertain_and_never_resent(auth_run: Run) -> None:
    (s,) = [s for s in auth_run.seeded if s.account == BOB]
    row = auth_run.rows[s.id]
    assert row["status"] == "uncertain" and row["attempts"] == 1, row
    assert row["data_mark"] == 1 and row["last_error"].startswith("after DATA")
    # The server has it (it recorded the message before stalling), exactly once,
    # although the run went on well past when a retry would have come.
    assert len(auth_run.received(s.message_id)) == 1
    assert auth_run.rows[s.id]["retry_at_ms"] is None


# ---------------------------------------------------------------- one slow server


def test_slow_server_does_not_delay_other_accounts(tmp_path: Path, smtp_server: SMTPServer,
                                                   daemons: DaemonFactory) -> None:
    skip_near_midnight(180)
    with SMTPServer(users=RIG_USERS) as slow:
        slow.set_fault("stall_before", sender=BOB, seconds=3.0)  # every session of bob's
        # A long grace: bob's second send waits for his first, stuck for 3 s.
        cfg = write_config(tmp_path, smtp_server.port, ports={BOB: slow.port}, grace="10s")
        now = time.time()
        seeded = seed_plan(tmp_path, {BOB: [now + 3.0, now + 3.1], ALICE: [now + 3.05, now + 4.0],
                                      CAROL: [now + 3.3, now + 4.5]})
        d = daemons(cfg, tmp_path)
        rows = wait_rows(tmp_path, all_final, 20, "every send to be final")
        d.send_signal(signal.SIGTERM)
        assert d.wait(20) == 0
        fast_msgs = {m["message_id"]: m for m in smtp_server.messages}
        slow_msgs = {m["message_id"]: m for m in slow.messages}
    by_id = {r["id"]: r for r in rows}
    assert all(by_id[s.id]["status"] == "sent" for s in seeded), rows
    bob_sent = sorted(by_id[s.id]["sent_at_ms"] / 1000 for s in seeded if s.account == BOB)
    for s in seeded:
        if s.account == BOB:
            assert s.message_id in slow_msgs
            continue
        late = fast_msgs[s.message_id]["mail_from_at"] - s.at
        assert 0 <= late < LATE_OK, f"{s.account} send {s.id} {late:+.3f} s late"
    # bob's first send was stuck for 3 s, across alice's and carol's sends...
    bob_first = min(s.at for s in seeded if s.account == BOB)
    assert bob_sent[0] >= bob_first + 2.9
    # ...and bob's second one waited for the first (one send at a time per account).
    assert bob_sent[1] >= bob_sent[0] + 2.5


# ---------------------------------------------------------------- crash and restart


def test_restart_after_kill_recovers_without_duplicates(tmp_path: Path, smtp_server: SMTPServer,
                                                        daemons: DaemonFactory) -> None:
    """kill -9 with bob stuck after DATA (data_mark=1), alice stuck at MAIL (data_mark=0)
    and bob's later sends queued behind his; restart at once. Then: bob's stuck send is
    uncertain and not resent, alice's goes out again (inside the grace), bob's queue is
    missed beyond the grace and sent within it, the rest goes out on time; nothing twice."""
    skip_near_midnight(240)
    grace = 3.0
    cfg = write_config(tmp_path, smtp_server.port, grace="3s", min_gap="1s")
    now = time.time()
    spacing, n = 1.2, 10
    seeds = {BOB: [now + 3.0 + spacing * k for k in range(n)],
             CAROL: [now + 3.3 + spacing * k for k in range(n)],
             ALICE: [now + 8.0 + spacing * k for k in range(n)]}
    seeded = seed_plan(tmp_path, seeds)
    alice_first = min((s for s in seeded if s.account == ALICE), key=lambda s: s.at)
    bob_first = min((s for s in seeded if s.account == BOB), key=lambda s: s.at)
    smtp_server.set_fault("stall_after", count=1, sender=BOB, seconds=60)
    smtp_server.set_fault("stall_before", count=1, sender=ALICE, seconds=60)

    d = daemons(cfg, tmp_path)
    d.wait_event("send sending", timeout=15, send_id=alice_first.id)
    time.sleep(max(0.0, alice_first.at + 0.3 - time.time()))
    d.kill9()
    killed_at = time.time()
    before = {r["id"]: r for r in send_rows(tmp_path)}
    assert before[alice_first.id]["status"] == "sending" and before[alice_first.id]["data_mark"] == 0
    assert before[bob_first.id]["status"] == "sending" and before[bob_first.id]["data_mark"] == 1
    sent_before = {i for i, r in before.items() if r["status"] == "sent"}
    assert sent_before, "some sends went out before the kill"
    pending_before = {i for i, r in before.items() if r["status"] == "pending"}

    # Restart 1.5 s after alice's instant: her stuck send is inside the grace, bob's
    # queue (from 3 s before it) partly beyond.
    time.sleep(max(0.0, alice_first.at + 1.5 - time.time()))
    restart_at = time.time()
    d.start()
    ready_at = datetime.fromisoformat(d.find("ready")[0]["timestamp"].replace("Z", "+00:00")).timestamp()
    rows = wait_rows(tmp_path, all_final, 30, "every send to be final after the restart")
    d.send_signal(signal.SIGTERM)
    assert d.wait(20) == 0
    assert not d.errors(), d.errors()
    rows_by = {r["id"]: r for r in rows}
    mids = Counter(m["message_id"] for m in smtp_server.messages)
    assert not [m for m, c in mids.items() if c > 1], "a Message-ID arrived twice"
    assert all(r["status"] in FINAL for r in rows)

    # Rows left 'sending' by the kill.
    assert rows_by[bob_first.id]["status"] == "uncertain"
    assert mids[bob_first.message_id] == 1
    a = rows_by[alice_first.id]
    if ready_at < alice_first.at + grace - 0.1:  # back inside the grace: it goes out again
        assert a["status"] == "sent" and a["attempts"] == 2, a
        assert mids[alice_first.message_id] == 1
    else:  # a very slow restart: missed, and never sent
        assert a["status"] in ("sent", "skipped"), a
        assert mids[alice_first.message_id] == (a["status"] == "sent")

    # Pending rows whose instant had passed: missed beyond the grace, sent within it.
    missed = [rows_by[i] for i in pending_before if rows_by[i]["status"] == "skipped"]
    assert missed and all(r["reason"] == "missed" for r in missed), missed
    for r in missed:
        assert r["at_ms"] / 1000 < ready_at - grace + 1.5, r  # backlog turns may push a few out
        assert mids[r["message_id"]] == 0
    late_sent = [rows_by[i] for i in pending_before
                 if rows_by[i]["at_ms"] / 1000 < restart_at and rows_by[i]["status"] == "sent"]
    assert late_sent, "a send overdue by less than the grace went out after the restart"
    for i in pending_before:
        r = rows_by[i]
        due = r["at_ms"] / 1000
        if due < restart_at - grace - 0.05:
            assert r["status"] == "skipped" and r["reason"] == "missed", r
        elif due > ready_at - grace + 0.5:
            assert r["status"] == "sent", r
        if r["status"] == "sent":
            assert mids[r["message_id"]] == 1
            assert r["sent_at_ms"] / 1000 <= max(due, ready_at) + grace + 0.5
    # Everything due after the restart went out on time, once.
    for s in seeded:
        if s.at > ready_at + 0.5:
            r = rows_by[s.id]
            assert r["status"] == "sent", r
            (msg,) = [m for m in smtp_server.messages if m["message_id"] == s.message_id]
            assert 0 <= msg["mail_from_at"] - s.at < LATE_OK
    # Sends made before the kill were not touched.
    for i in sent_before:
        assert rows_by[i]["status"] == "sent" and mids[rows_by[i]["message_id"]] == 1
    assert killed_at < restart_at


# ---------------------------------------------------------------- SIGTERM


def test_sigterm_lets_the_send_in_flight_finish(tmp_path: Path, smtp_server: SMTPServer,
                                               daemons: DaemonFactory) -> None:
    skip_near_midnight(180)
    cfg = write_config(tmp_path, smtp_server.port)
    now = time.time()
    first, later = seed_plan(tmp_path, {ALICE: [now + 3.0, now + 9.0]})
    smtp_server.set_fault("stall_before", count=1, sender=ALICE, seconds=2.0)
    d = daemons(cfg, tmp_path)
    d.wait_event("send sending", timeout=10, send_id=first.id)
    time.sleep(max(0.0, first.at + 0.5 - time.time()))
    assert send_rows(tmp_path, "id=?", (first.id,))[0]["status"] == "sending"
    d.send_signal(signal.SIGTERM)
    rc = d.wait(20)
    assert rc == 0, d.output()[-3000:]
    assert not d.errors(), d.errors()
    (stopping,) = d.find("stopping")
    assert stopping["in_flight"] >= 1
    row = send_rows(tmp_path, "id=?", (first.id,))[0]
    assert row["status"] == "sent" and row["attempts"] == 1, row
    assert [m["message_id"] for m in smtp_server.messages] == [first.message_id]
    # Nothing new is fired once stopping: the later send waits for the next start.
    assert send_rows(tmp_path, "id=?", (later.id,))[0]["status"] == "pending"
    assert d.find("stopped")


# ---------------------------------------------------------------- rollover on a fake clock


class RecordingTimers:
    """Timers that only record what planning hands them (no loop timer on a fake clock)."""

    def __init__(self) -> None:
        self.keys: dict[int, int] = {}

    def schedule_keys(self, keys: list[tuple[int, int, str]]) -> None:
        self.keys.update((ident, due) for due, ident, _ in keys)

    def cancel(self, ident: int, kind: int = 0) -> None:
        self.keys.pop(ident, None)


def _no_spawn(coro: Any, *, critical: bool = False) -> Any:
    raise AssertionError("nothing is spawned in this test")


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


def _utc(day: date, h: int = 0, m: int = 0, s: float = 0.0) -> float:
    return datetime(day.year, day.month, day.day, h, m, tzinfo=UTC).timestamp() + s


async def test_rollover_advances_warmup_days_and_plans_tomorrow(tmp_path: Path) -> None:
    friday = date(2026, 12, 4)
    assert friday.weekday() == 4
    saturday, sunday, monday = (friday + timedelta(days=k) for k in (1, 2, 3))
    weekdays = '["mon", "tue", "wed", "thu", "fri"]'
    cfg_path = write_config(tmp_path, 2525, window="09:00-17:00", start_date=friday - timedelta(days=4),
                            ramp=(2, 2, 40), extra={CAROL: [f"weekdays = {weekdays}"]})
    config = load_config(cfg_path)
    store = await Store.open(db_path(tmp_path))
    day0 = friday.isoformat()
    # Friday's history: alice and carol sent, bob's sends all failed. Everyone on warmup day 5.
    days = []
    for k, email in enumerate((ALICE, BOB, CAROL)):
        seeds = [Seed(_utc(friday, 10 + i, k), "peak", ALICE if email != ALICE else BOB,
                      f"<hist.{k}.{i}@warmup.test>") for i in range(3)]
        days.append((email, day0, 5, 10, seeds))
        await store.upsert_account(AccountState(email, 5, (friday - timedelta(days=1)).isoformat(),
                                                None, None, None, None))
    await store.insert_plan(days)
    await store.write(lambda con: con.execute(
        "UPDATE sends SET status='sent', attempts=1 WHERE account IN (?, ?)", (ALICE, CAROL)))
    await store.write(lambda con: con.execute(
        "UPDATE sends SET status='failed', attempts=1, last_error='550' WHERE account=?", (BOB,)))

    clock = FakeClock(_utc(friday, 23, 59, 59.0))
    # No real timer loop on a fake clock (jumping a day ahead would make every planned
    # send of the day before due at once): the timers only record what they are given.
    timers = RecordingTimers()
    planning = Planning(config=lambda: config, store=store, clock=clock, rng=random.Random(7),
                        timers=timers, spawn=_no_spawn)
    await planning.load()

    async def batches(local_date: date) -> dict[str, tuple[int, int, int]]:
        """{account: (warmup_day, target, rows)} of the day's plan."""
        def q(con: sqlite3.Connection) -> dict[str, tuple[int, int, int]]:
            out: dict[str, tuple[int, int, int]] = {}
            for acc, wd, target, n in con.execute(
                    "SELECT account, warmup_day, target, last_id - first_id + 1 FROM plan_batches "
                    "WHERE local_date=?", (local_date.isoformat(),)):
                w0, t0, n0 = out.get(acc, (wd, target, 0))
                out[acc] = (wd, target, n0 + n)
            return out
        return await store.read(q)

    async def rows_of(email: str, local_date: date) -> list[Any]:
        return await store.day_rows(email, local_date.isoformat())

    try:
        # 23:59:59 on Friday: Friday is planned, nothing more to do, nothing advanced yet.
        await planning.plan_missing()
        assert await batches(saturday) == {}
        assert planning.states[ALICE].warmup_day == 5

        # Past midnight: Saturday.
        clock.t = _utc(saturday, 0, 0, 0.5)
        await planning.rollover("UTC")
        sat = await batches(saturday)
        assert sat[ALICE][:2] == (6, 12), sat  # alice sent on Friday: day 6, 2 + 2 * 5
        assert len(await rows_of(ALICE, saturday)) == 12
        assert sat[BOB][:2] == (5, 10), sat  # bob sent nothing on Friday: still day 5
        assert len(await rows_of(BOB, saturday)) == 10
        assert await rows_of(CAROL, saturday) == []  # a weekend day for carol: nothing
        assert planning.states[CAROL].warmup_day == 6
        win = (_utc(saturday, 9), _utc(saturday, 17))
        for r in await rows_of(ALICE, saturday) + await rows_of(BOB, saturday):
            assert win[0] <= r.at_ms / 1000 < win[1] and r.status == "pending"
        assert len(timers.keys) == 22
        st = await store.account_states()
        assert (st[ALICE].warmup_day, st[ALICE].advanced_through) == (6, day0)

        # Saturday went by with no send made: Sunday keeps alice on day 6.
        clock.t = _utc(sunday, 0, 0, 0.2)
        await planning.rollover("UTC")
        sun = await batches(sunday)
        assert sun[ALICE][:2] == (6, 12) and sun[BOB][:2] == (5, 10), sun
        assert await rows_of(CAROL, sunday) == []

        # Monday: carol's weekend did not count either; she plans warmup day 6.
        # alice sent on Sunday (marked here), so she moves on to day 7.
        await store.write(lambda con: con.execute(
            "UPDATE sends SET status='sent' WHERE account=? AND local_date=?", (ALICE, sunday.isoformat())))
        clock.t = _utc(monday, 0, 0, 0.2)
        await planning.rollover("UTC")
        mon = await batches(monday)
        assert mon[CAROL][:2] == (6, 12), mon
        assert len(await rows_of(CAROL, monday)) == 12
        assert mon[ALICE][:2] == (7, 14), mon
        assert mon[BOB][:2] == (5, 10), mon
        # A second rollover call for the same day plans nothing twice.
        await planning.rollover("UTC")
        assert await batches(monday) == mon
    finally:
        planning.stop()
        await store.close()


async def test_concurrent_writes_on_the_store_do_not_collide(tmp_path: Path) -> None:
    """Send transitions are committed in groups (flush awaits between BEGIN and COMMIT);
    planning (a rollover), pausing (skip_pending) and cleanup write at the same time.
    Each must get its own transaction, never "cannot start a transaction within a
    transaction" (found by the rollover test: a due send settling during a rollover)."""
    store = await Store.open(db_path(tmp_path))
    try:
        t = time.time() + 3600
        keys = await store.insert_plan([(ALICE, "2026-01-05", 1, 60, [
            Seed(t + i, "peak", BOB, f"<c.{i}@warmup.test>") for i in range(60)])])
        rows = [await store.get_send(ident) for _, ident, _ in keys]

        async def transitions() -> None:
            for r in rows:
                assert r is not None
                r.status, r.reason = "skipped", "test"
                await store.commit_send(r, "pending", "test")

        async def plans() -> None:
            for i in range(30):
                day = (date(2026, 2, 1) + timedelta(days=i)).isoformat()
                await store.insert_plan([(BOB, day, 1, 1, [Seed(t + i, "peak", ALICE, f"<p.{i}@x.test>")])])
                await asyncio.sleep(0.001)

        async def pauses() -> None:
            for i in range(30):
                await store.skip_pending(BOB, "paused: test", [(date(2026, 2, 1) + timedelta(days=i)).isoformat()])
                await asyncio.sleep(0.0015)

        async def cleanups() -> None:
            for _ in range(10):
                await store.cleanup("2026-01-01", 0)
                await asyncio.sleep(0.004)

        await asyncio.wait_for(asyncio.gather(transitions(), plans(), pauses(), cleanups()), 30)
        await store.flush()
        counts = await store.read(lambda con: {(a, st): n for a, st, n in con.execute(
            "SELECT account, status, count(*) FROM sends GROUP BY 1, 2")})
        assert counts[(ALICE, "skipped")] == 60 and sum(counts.values()) == 90, counts
        assert await store.read(lambda con: con.execute("SELECT count(*) FROM plan_batches").fetchone()[0]) == 31
    finally:
        await store.close()

