"""The promise under crashes: the real daemon (a subprocess), a real SMTP server, kill -9.

* Crash at every step: the daemon kills itself (``WARMUPD_FAULT=<step>=kill``) exactly at
  one step of firing, of the store, of planning (a start-up plan, a midnight rollover on
  libfaketime's clock), of a reload, and of an IMAP engagement action (Dovecot rig);
  restarted without the fault, every row ends in a state that explains it and no
  Message-ID reaches the server twice. Where a step is only observable across the restart
  (the server said 250, ``sent`` was never committed) the row must end ``uncertain`` and
  never be resent.
* Random kills: a busy, compressed day on a pool of 24 accounts (long form: 40) with
  150 seeded sends over 60 s and 6 kills -9 at seeded random moments (long form: 800
  sends over 5 minutes, 50 kills), restarted at once each time; the server takes 0.4 s
  to answer each message, so that kills also land between the DATA mark and the answer,
  and the daemon holds only 20 s of the future in memory, so that they land around paging.
  Totals are printed (``pytest --long -s`` for the figures).

What each check means (``crash_helpers.Ledger``): after every kill the rows left in
``sending`` are read from the store (the sends in flight, by DATA mark); at the end no
Message-ID arrived twice, no row is left pending or sending, every arrival's row says
``sent`` (or ``uncertain`` because it was past its DATA mark at a kill), every ``sent``
row arrived once, and every ``uncertain`` row is one of those in flight past the DATA
mark at a kill (so at most one per send in flight at each kill).
"""

from __future__ import annotations

import random
import signal
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_helpers import (
    ALICE,
    BOB,
    CAROL,
    DaemonFactory,
    DaemonProc,
    all_final,
    seed_plan,
    send_events,
    send_rows,
    skip_near_midnight,
    wait_rows,
    wait_until,
    write_config,
)
from tests.rig.fixtures import RIG_USERS
from tests.rig.mailrig import MailRig
from tests.rig.smtp_server import SMTPServer
from tests.torture.crash_helpers import (
    CRASH_UNCERTAIN,
    Ledger,
    faketime_env,
    have_faketime,
    pool_users,
    query,
    seed_pool,
    write_pool_config,
)

KILLED = -signal.SIGKILL  # Popen.returncode of a process that died by SIGKILL



def wait_killed(d: DaemonProc, timeout: float, what: str) -> None:
    """The daemon died by its own SIGKILL at the fault point, within ``timeout``."""
    try:
        rc = d.wait(timeout)
    except Exception:
        raise AssertionError(f"the daemon did not kill itself at {what} within {timeout} s; "
                             f"{d.tail()}") from None
    assert rc == KILLED, f"exit status {rc}, not SIGKILL, at {what}; {d.tail()}"


def stop_clean(d: DaemonProc) -> None:
    rc = d.stop(30)
    assert rc == 0, d.tail()
    assert not d.errors(), d.errors()


def rows_by_id(tmp: Path) -> dict[int, dict[str, Any]]:
    return {r["id"]: r for r in send_rows(tmp)}


def arrivals(srv_messages: list[dict[str, Any]], message_id: str) -> int:
    return sum(1 for m in srv_messages if m["message_id"] == message_id)


# ---------------------------------------------------------------- the firing and store steps

# step -> (status the first send's row is left in by the kill, its DATA mark, whether the
# server has its message, the status it must end in after the restart)
FIRING_STEPS = {
    "firing.after_sending": ("sending", 0, False, "sent"),
    "firing.after_data_mark": ("sending", 1, False, "uncertain"),
    "firing.after_server_ok": ("sending", 1, True, "uncertain"),
    "store.grouped_commit": ("pending", 0, False, "sent"),  # its first mark rolled back
}


@pytest.mark.parametrize("step", list(FIRING_STEPS))
def test_a_kill_at_a_firing_step(step: str, tmp_path: Path, smtp_server: SMTPServer,
                                 daemons: DaemonFactory) -> None:
    left_in, left_mark, at_server, ends_in = FIRING_STEPS[step]
    skip_near_midnight(180)
    cfg = write_config(tmp_path, smtp_server.port, grace="30s", min_gap="1s", jitter="0s")
    now = time.time()
    seeded = seed_plan(tmp_path, {ALICE: [now + 3.0, now + 4.6], BOB: [now + 3.4], CAROL: [now + 3.8]})
    first = seeded[0]
    assert first.account == ALICE and first.at == min(s.at for s in seeded)
    d = daemons(cfg, tmp_path, env={"WARMUPD_FAULT": f"{step}=kill"})
    wait_killed(d, 20, step)
    ledger = Ledger()
    snap = ledger.killed(tmp_path, len(smtp_server.messages))

    # What the kill left, exactly at that step.
    row = rows_by_id(tmp_path)[first.id]
    assert (row["status"], row["data_mark"]) == (left_in, left_mark), row
    assert arrivals(smtp_server.messages, first.message_id) == int(at_server), smtp_server.messages
    if step == "store.grouped_commit":
        assert row["attempts"] == 0 and snap.in_flight == 0, (row, snap)  # nothing of it committed
    else:
        assert first.id in (snap.marked if left_mark else snap.unmarked), snap

    # Restarted without the fault: every row finishes, each in a state that explains it.
    d2 = daemons(cfg, tmp_path)
    wait_rows(tmp_path, all_final, 30, "every send to reach a final status")
    stop_clean(d2)
    totals = ledger.check(tmp_path, smtp_server.messages, late_limit=30 + 2)
    print(f"\n{step}: {totals.line()}")
    row = rows_by_id(tmp_path)[first.id]
    assert row["status"] == ends_in, row
    assert arrivals(smtp_server.messages, first.message_id) == (1 if ends_in == "sent" else int(at_server))
    if ends_in == "uncertain":
        assert row["last_error"] == CRASH_UNCERTAIN, row
        assert d2.find("recovery", what="uncertain", count=1)
    if step == "firing.after_sending":
        assert row["attempts"] == 2, row  # the mark before the kill, then the retry
        assert ("sending", "pending", "crashed before the DATA mark; retrying") in send_events(tmp_path, first.id)
    if step == "store.grouped_commit":
        assert row["attempts"] == 1, row
    # Every other send went out once, and a sent row arrived.
    others = [s for s in seeded if s.id != first.id]
    for s in others:
        r = rows_by_id(tmp_path)[s.id]
        assert r["status"] == "sent", r
        assert arrivals(smtp_server.messages, s.message_id) == 1
    assert totals.by_status["sent"] >= len(others)


# ---------------------------------------------------------------- a start-up plan chunk


@pytest.mark.skipif(not have_faketime(), reason="libfaketime is not installed (the test command installs it)")
def test_a_kill_inside_the_start_up_plan_chunk(tmp_path: Path, smtp_server: SMTPServer,
                                               daemons: DaemonFactory) -> None:
    """The accounts' day is not planned yet: the daemon plans it at start and dies inside
    the chunk's transaction. On a fake clock 20 s before the one-minute window ends, so
    that the day's rest is short: restarted, it plans that rest once and sends it once."""
    fake = datetime(2026, 3, 4, 9, 0, 40, tzinfo=UTC)
    cfg = write_config(tmp_path, smtp_server.port, window="09:00-09:01", ramp=(30, 1, 30),
                       start_date=date(2026, 3, 1), grace="30s", min_gap="1s", jitter="0s")
    real0 = time.time()
    d = daemons(cfg, tmp_path, env={**faketime_env(fake), "WARMUPD_FAULT": "store.plan_chunk=kill"},
                wait_ready=False)
    wait_killed(d, 30, "store.plan_chunk")
    assert query(tmp_path, "SELECT count(*) FROM plan_batches") == [(0,)]  # the chunk rolled back
    assert query(tmp_path, "SELECT count(*) FROM sends") == [(0,)]
    ledger = Ledger()
    ledger.killed(tmp_path, len(smtp_server.messages))

    # The restart's clock carries on from where the first run's was.
    fake2 = fake + timedelta(seconds=int(time.time() - real0) + 1)
    offset = fake2.timestamp() - time.time()
    d2 = daemons(cfg, tmp_path, env=faketime_env(fake2), wait_ready=False)
    d2.wait_event("ready", timeout=30)
    rows = wait_rows(tmp_path, lambda rs: bool(rs) and all_final(rs), 60, "the day's rest to be sent")
    stop_clean(d2)
    totals = ledger.check(tmp_path, smtp_server.messages, late_limit=30 + 2, clock_offset=offset)
    print(f"\nstore.plan_chunk: {totals.line()}")
    day = fake.date().isoformat()
    batches = query(tmp_path, "SELECT account, local_date, count(*) FROM plan_batches GROUP BY account, local_date")
    assert sorted(batches) == [(a, day, 1) for a in sorted((ALICE, BOB, CAROL))], batches
    assert {r["account"] for r in rows} == {ALICE, BOB, CAROL}, rows
    assert totals.by_status["sent"] == len(rows), rows  # a short rest of the window, all on time
    assert len(smtp_server.messages) == len(rows)


# ---------------------------------------------------------------- a midnight rollover


@pytest.mark.skipif(not have_faketime(), reason="libfaketime is not installed (the test command installs it)")
def test_a_kill_at_the_midnight_rollover(tmp_path: Path, smtp_server: SMTPServer,
                                         daemons: DaemonFactory) -> None:
    """Fake clock 5 s before midnight; the new day's window is its first minute. The daemon
    dies as the rollover starts; restarted later in that minute (as systemd would, after
    RestartSec and a while), it plans the new day's rest once and sends it once."""
    midnight = datetime(2026, 3, 5, tzinfo=UTC)
    cfg = write_config(tmp_path, smtp_server.port, window="00:00-00:01", ramp=(30, 1, 30),
                       start_date=date(2026, 3, 1), grace="30s", min_gap="1s", jitter="0s")
    d = daemons(cfg, tmp_path, env={**faketime_env(midnight - timedelta(seconds=5)),
                                    "WARMUPD_FAULT": "planning.rollover=kill"})
    wait_killed(d, 30, "planning.rollover")
    assert d.find("rollover", date=midnight.date().isoformat()), d.tail()
    new_day = midnight.date().isoformat()
    assert query(tmp_path, "SELECT count(*) FROM plan_batches WHERE local_date=?", (new_day,)) == [(0,)]
    ledger = Ledger()
    ledger.killed(tmp_path, len(smtp_server.messages))

    offset = (midnight + timedelta(seconds=40)).timestamp() - time.time()
    d2 = daemons(cfg, tmp_path, env=faketime_env(midnight + timedelta(seconds=40)), wait_ready=False)
    d2.wait_event("ready", timeout=30)
    rows = wait_rows(tmp_path, lambda rs: any(r["local_date"] == new_day for r in rs) and all_final(rs), 60,
                     "the new day's rest to be sent")
    stop_clean(d2)
    totals = ledger.check(tmp_path, smtp_server.messages, late_limit=30 + 2, clock_offset=offset)
    print(f"\nplanning.rollover: {totals.line()}")
    batches = query(tmp_path, "SELECT account, count(*) FROM plan_batches WHERE local_date=? GROUP BY account",
                    (new_day,))
    assert sorted(batches) == [(a, 1) for a in sorted((ALICE, BOB, CAROL))], batches
    new = [r for r in rows if r["local_date"] == new_day]
    assert {r["account"] for r in new} == {ALICE, BOB, CAROL}, new
    assert all(r["status"] == "sent" for r in new), new
    assert len(smtp_server.messages) == len(new)


# ---------------------------------------------------------------- a reload


def test_a_kill_while_a_reload_applies(tmp_path: Path, smtp_server: SMTPServer, daemons: DaemonFactory) -> None:
    """carol is removed from the config; SIGHUP; the daemon dies after parsing the new file,
    before applying it. Restarted on the new file: carol's remaining sends are skipped
    ``removed``, her earlier one stays sent, alice and bob go on, nothing twice."""
    skip_near_midnight(180)
    cfg = write_config(tmp_path, smtp_server.port, grace="30s", min_gap="1s", jitter="0s")
    now = time.time()
    seeded = seed_plan(tmp_path, {ALICE: [now + 2.5, now + 9.0], BOB: [now + 9.5],
                                  CAROL: [now + 3.0, now + 8.5]})
    early = [s for s in seeded if s.at < now + 5]
    d = daemons(cfg, tmp_path, env={"WARMUPD_FAULT": "daemon.reload=kill"})
    for s in early:
        d.wait_event("send sent", timeout=15, send_id=s.id)
    write_config(tmp_path, smtp_server.port, accounts=(ALICE, BOB), grace="30s", min_gap="1s", jitter="0s")
    d.send_signal(signal.SIGHUP)
    wait_killed(d, 15, "daemon.reload")
    ledger = Ledger()
    snap = ledger.killed(tmp_path, len(smtp_server.messages))
    assert snap.in_flight == 0, snap
    late = [s for s in seeded if s not in early]
    assert all(rows_by_id(tmp_path)[s.id]["status"] == "pending" for s in late)

    d2 = daemons(cfg, tmp_path)
    wait_rows(tmp_path, all_final, 30, "every send to reach a final status")
    stop_clean(d2)
    totals = ledger.check(tmp_path, smtp_server.messages, late_limit=30 + 2)
    print(f"\ndaemon.reload: {totals.line()}")
    rows = rows_by_id(tmp_path)
    for s in seeded:
        r = rows[s.id]
        if s.account == CAROL and s not in early:
            assert r["status"] == "skipped" and r["reason"] == "removed: account no longer in config", r
            assert arrivals(smtp_server.messages, s.message_id) == 0
        else:
            assert r["status"] == "sent", r
            assert arrivals(smtp_server.messages, s.message_id) == 1


# ---------------------------------------------------------------- an IMAP engagement action


def test_a_kill_after_an_imap_action_before_its_commit(clean_mailrig: MailRig, tmp_path: Path,
                                                       daemons: DaemonFactory) -> None:
    """bob engages over IMAP (Dovecot rig): alice's send lands in his INBOX, he marks it
    \\Seen and the daemon dies before committing the action. Restarted, the action runs
    again: the message is there once, \\Seen, the action done, nothing sent twice."""
    rig = clean_mailrig
    skip_near_midnight(180)
    imap = (f'imap = {{ host = "127.0.0.1", port = {rig.imap_port}, security = "none", '
            f'password_file = "bob.pw", poll = "2s", timeout = "5s" }}')
    engagement = 'engagement = { delay = "1s-2s", reply_rate = 0.0, important_rate = 0.0 }'
    cfg = write_config(tmp_path, rig.smtp_port, grace="30s", min_gap="1s", jitter="0s",
                       extra={BOB: [imap, engagement]})
    assert RIG_USERS[BOB] == rig.users[BOB]
    now = time.time()
    (s,) = seed_plan(tmp_path, {ALICE: [now + 4.0]})
    d = daemons(cfg, tmp_path, env={"WARMUPD_FAULT": "imap.action=kill"})
    wait_killed(d, 40, "imap.action")
    assert [m["message_id"] for m in rig.smtp.recorder.messages] == [s.message_id]
    (inbox,) = rig.messages(BOB)
    assert inbox["message_id"] == s.message_id and "\\Seen" in inbox["flags"]  # done on the server
    actions = query(tmp_path, "SELECT id, kind, status FROM actions WHERE account=?", (BOB,))
    assert [(k, st) for _, k, st in actions] == [("open", "pending")], actions  # not committed
    ledger = Ledger()
    ledger.killed(tmp_path, len(rig.smtp.recorder.messages))

    d2 = daemons(cfg, tmp_path)
    wait_until(lambda: query(tmp_path, "SELECT status FROM actions WHERE account=?", (BOB,)) == [("done",)],
               30, "bob's open action to be done after the restart")
    stop_clean(d2)
    totals = ledger.check(tmp_path, rig.smtp.recorder.messages, late_limit=30 + 2)
    print(f"\nimap.action: {totals.line()}")
    assert rows_by_id(tmp_path)[s.id]["status"] == "sent"
    (inbox,) = rig.messages(BOB)
    assert inbox["message_id"] == s.message_id and "\\Seen" in inbox["flags"]
    assert rig.messages(BOB, "Junk") == []
    assert query(tmp_path, "SELECT count(*) FROM received WHERE account=?", (BOB,)) == [(1,)]
    assert d2.find("engagement open", account=BOB, status="done")


# ---------------------------------------------------------------- random kills on a busy day


def spread(rng: random.Random, start: float, span: float, n: int, gap: float) -> list[float]:
    """n instants in [start, start + span), at least ``gap`` apart, uniformly drawn."""
    free = span - (n - 1) * gap
    assert free > 0, (span, n, gap)
    return [start + x + i * gap for i, x in enumerate(sorted(rng.uniform(0, free) for _ in range(n)))]


def test_random_kills_on_a_busy_day(tmp_path: Path, daemons: DaemonFactory, long_form: bool) -> None:
    n_accounts, n_sends, span, n_kills = (40, 800, 300.0, 50) if long_form else (24, 150, 60.0, 6)
    grace = 10.0
    skip_near_midnight(span + 300)
    rng = random.Random(20260304)
    users = pool_users(n_accounts)
    srv = SMTPServer(users=users).start()
    try:
        cfg = write_pool_config(tmp_path, srv.port, users, grace=f"{grace:.0f}s", min_gap="1s", jitter="0s",
                                shutdown_timeout="15s")
        start = time.time() + 4.0
        emails = sorted(users)
        per = {e: n_sends // n_accounts + (1 if i < n_sends % n_accounts else 0) for i, e in enumerate(emails)}
        seeded = seed_pool(tmp_path, {e: spread(rng, start, span, k, 1.5) for e, k in per.items()})
        assert len(seeded) == n_sends
        last_at = max(at for _, at, _ in seeded.values())
        # The server holds its answer to each message 0.4 s (stored and recorded first, as
        # a real one that writes to disk): kills land past the DATA mark too, where the
        # server has the message and the daemon has not heard so.
        srv.set_fault("stall_after", seconds=0.4)

        ledger = Ledger()
        mean = span / n_kills
        # Only 20 s of the future in memory: each start pages the near future in and the
        # page loop moves the horizon every ~7 s, so kills land around paging too.
        env = {"WARMUPD_HORIZON": "20"}
        d = daemons(cfg, tmp_path, env=env, wait_ready=False)
        for _ in range(n_kills):
            # The kill's random moment: up to about twice the mean interval after the
            # (re)start, so some land in the start-up (recovery), most while sending.
            kill_at = time.monotonic() + rng.uniform(0.2, 2 * mean - 0.2)
            while time.monotonic() < kill_at:
                assert d.running(), f"the daemon exited by itself ({d.proc and d.proc.returncode}); {d.tail()}"
                time.sleep(min(0.02, max(0.0, kill_at - time.monotonic())))
            d.kill9()
            ledger.killed(tmp_path, len(srv.messages))
            d = daemons(cfg, tmp_path, env=env, wait_ready=False)  # restarted at once
        d.wait_event("ready", timeout=30)
        wait_rows(tmp_path, all_final, max(0.0, last_at - time.time()) + grace + 60,
                  "every send to reach a final status after the last kill")
        stop_clean(d)
        totals = ledger.check(tmp_path, srv.messages, late_limit=grace + 3)
    finally:
        srv.stop()
    errors = [e for p in daemons.procs for run in range(1, len(p.logs) + 1) for e in p.errors(run)]
    print(f"\nrandom kills ({'long' if long_form else 'quick'} form, {n_accounts} accounts, "
          f"{span:.0f} s): {totals.line()}; error events: {len(errors)}")
    assert not errors, errors[:5]
    assert totals.duplicates == 0
    assert totals.by_status["sent"] > 0
    assert set(totals.skipped) <= {"missed", "missed: the state database could not take the send's mark in time"}, \
        totals.skipped
    # Each send in flight past its DATA mark at a kill ended uncertain (and only those).
    assert totals.by_status["uncertain"] == totals.in_flight_marked
