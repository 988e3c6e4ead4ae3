"""Operate warmupd like a first-class Linux daemon.

Every test here runs the REAL daemon (``python -m warmupd.cli run --config PATH``) as a
subprocess against the in-process SMTP rig (``smtp_server``), and drives it the way an operator
or systemd would: signals, sd_notify on a socket the test binds, ``warmupctl`` and raw clients
on the control socket, and its JSON log on stdout/stderr.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.daemon_helpers import DaemonFactory, DaemonProc
from tests.ops_helpers import (
    ALICE,
    BOB,
    CAROL,
    PASSWORDS,
    NotifyListener,
    Setup,
    ctl,
    ctl_json,
    make_setup,
    raw_request,
    seed,
    skip_near_midnight,
    wait_until,
    write_config,
)
from tests.rig.smtp_server import SMTPServer
from warmupd import __version__

EX_CONFIG = 78
EX_UNAVAILABLE = 69

STATUS_FIELDS = ("version", "uptime_s", "config_path", "config_loaded_at", "last_reload_error",
                 "accounts", "today", "pending_timers", "next_send", "loop_lag_ms")
TODAY_KEYS = ("pending", "sending", "sent", "failed", "skipped", "uncertain")
SCHEDULE_FIELDS = ("id", "at", "at_utc", "period", "recipient", "message_id", "status",
                   "attempts", "reason", "sent_at")
METRICS = ("warmupd_sends_total", "warmupd_send_lateness_seconds_bucket", "warmupd_pending_timers",
           "warmupd_loop_lag_seconds", "warmupd_reloads_total", "warmupd_reload_failures_total")


@pytest.fixture(autouse=True)
def _enough_of_today() -> None:
    # Plans are for the current UTC day; a rollover mid-test would change what they show.
    skip_near_midnight(1800)


StartDaemon = Callable[..., DaemonProc]  # warmupd(setup, *, env=None, wait_ready=True)


@pytest.fixture
def warmupd() -> Iterator[StartDaemon]:
    """Start the daemon of a Setup, stdout and stderr apart; all are stopped at the end."""
    factory = DaemonFactory()

    def start(setup: Setup, *, env: dict[str, str] | None = None,
              wait_ready: bool = True) -> DaemonProc:
        return factory(setup.config, setup.tmp_path, env=env, split_stderr=True,
                       wait_ready=wait_ready)

    try:
        yield start
    finally:
        factory.close()


@pytest.fixture
def setup(tmp_path: Any, smtp_server: SMTPServer) -> Iterator[Setup]:
    setup = make_setup(tmp_path, smtp_server.port)
    yield setup
    shutil.rmtree(setup.socket.parent, ignore_errors=True)


# ---------------------------------------------------------------- helpers


def rows_by_status(rows: list[dict[str, Any]], status: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] == status]


def db_rows(setup: Setup, account: str) -> list[dict[str, Any]]:
    con = sqlite3.connect(str(setup.db), timeout=5)
    try:
        cur = con.execute("SELECT id, status, reason FROM sends WHERE account=? ORDER BY id",
                          (account,))
        return [{"id": i, "status": s, "reason": r} for i, s, r in cur.fetchall()]
    finally:
        con.close()


def broken_port(setup: Setup, accounts: tuple[str, ...] = (ALICE, BOB)) -> list[str]:
    """Write a config whose accounts[1].smtp.port is out of range; returns its key paths."""
    write_config(setup, accounts)
    text = setup.config.read_text()
    # the second account's smtp table
    head, sep, tail = text.partition(f'email = "{accounts[1]}"')
    setup.config.write_text(head + sep + tail.replace(f"port = {setup.port}", "port = 70000", 1))
    return ["accounts[1].smtp.port"]


def assert_no_secret(text: str, where: str) -> None:
    for pw in PASSWORDS:
        assert pw not in text, f"password {pw!r} leaked in {where}"


def kinds(messages: list[dict[str, str]]) -> list[str]:
    """The life-cycle notifications in order (watchdog pings and bare STATUS= left out)."""
    out = []
    for m in messages:
        for k in ("READY", "RELOADING", "STOPPING"):
            if m.get(k) == "1":
                out.append(k)
    return out


# ---------------------------------------------------------------- sd_notify


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_sd_notify_life_cycle(abstract: bool, setup: Setup, warmupd: StartDaemon) -> None:
    listener = NotifyListener(abstract=abstract)
    try:
        d = warmupd(setup, env={"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "1000000"})
        first = listener.wait_for(lambda m: m.get("READY") == "1", timeout=5)
        assert listener.snapshot()[first].get("STATUS"), "READY=1 comes with a STATUS="

        # Watchdog pings about every 0.5 s (half of WATCHDOG_USEC=1 s).
        t0 = time.monotonic()
        time.sleep(2.2)
        pings = [t for t, m in listener.messages if m.get("WATCHDOG") == "1" and t >= t0]
        assert len(pings) >= 3, listener.snapshot()
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        assert all(0.3 <= g <= 0.8 for g in gaps), gaps

        # SIGHUP with a valid change: RELOADING=1 with MONOTONIC_USEC, then READY=1.
        write_config(setup, (ALICE, BOB, CAROL))
        n = len(listener.messages)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        d.send_signal(signal.SIGHUP)
        i = listener.wait_for(lambda m: m.get("RELOADING") == "1", after=n)
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        usec = int(listener.snapshot()[i]["MONOTONIC_USEC"])
        assert before <= usec <= after
        listener.wait_for(lambda m: m.get("READY") == "1", after=i + 1)
        d.wait_event("reloaded")

        # SIGHUP with a broken file: RELOADING=1, then READY=1 whose STATUS tells of the failure.
        broken_port(setup, (ALICE, BOB, CAROL))
        n = len(listener.messages)
        d.send_signal(signal.SIGHUP)
        i = listener.wait_for(lambda m: m.get("RELOADING") == "1", after=n)
        assert "MONOTONIC_USEC" in listener.snapshot()[i]
        j = listener.wait_for(lambda m: m.get("READY") == "1", after=i + 1)
        assert "reload failed" in listener.snapshot()[j].get("STATUS", "")
        assert d.running()

        # SIGTERM: STOPPING=1, a prompt exit 0, and no ping after STOPPING=1.
        n = len(listener.messages)
        t0 = time.monotonic()
        d.send_signal(signal.SIGTERM)
        assert d.wait(15) == 0, d.tail()
        assert time.monotonic() - t0 < 5, "a stop with nothing in flight is prompt"
        listener.wait_for(lambda m: m.get("STOPPING") == "1", after=n, timeout=2)
        time.sleep(0.3)
        msgs = listener.snapshot()
        assert kinds(msgs) == ["READY", "RELOADING", "READY", "RELOADING", "READY", "STOPPING"]
        stop_at = next(k for k, m in enumerate(msgs) if m.get("STOPPING") == "1")
        assert not any(m.get("WATCHDOG") for m in msgs[stop_at + 1:]), msgs[stop_at:]
    finally:
        listener.close()


# ---------------------------------------------------------------- reload


def test_sighup_reload_add_replan_broken_remove(setup: Setup, smtp_server: SMTPServer,
                                                warmupd: StartDaemon) -> None:
    now = time.time()
    alice_ids = seed(setup, ALICE, [now + 1.5, now + 7.0, now + 3600], BOB)
    d = warmupd(setup)
    smtp_server.wait_for(1, timeout=10)
    bob_before = ctl_json(setup, "schedule", BOB)
    assert rows_by_status(bob_before, "pending"), bob_before

    loaded_at = ctl_json(setup, "status")["config_loaded_at"]

    # Valid change: carol joins, bob's schedule changes.
    time.sleep(0.01)
    write_config(setup, (ALICE, BOB, CAROL), overrides={BOB: ['min_gap = "3s"']})
    d.send_signal(signal.SIGHUP)
    ev = d.wait_event("reloaded")[-1]
    assert ctl_json(setup, "status")["config_loaded_at"] > loaded_at
    assert f"added {CAROL}" in ev["changes"], ev
    assert any(c.startswith(f"{BOB}: schedule changed") for c in ev["changes"]), ev
    carol = ctl_json(setup, "schedule", CAROL)
    assert rows_by_status(carol, "pending"), carol
    assert {a["email"] for a in ctl_json(setup, "accounts")} == {ALICE, BOB, CAROL}
    bob_after = ctl_json(setup, "schedule", BOB)
    old_pending = {r["id"] for r in rows_by_status(bob_before, "pending")}
    replanned = [r for r in bob_after if r["id"] in old_pending and r["status"] == "skipped"]
    assert replanned and all(r["reason"].startswith("replanned") for r in replanned), bob_after
    assert not any(r["status"] == "pending" for r in bob_after if r["id"] in old_pending)
    new_pending = [r for r in rows_by_status(bob_after, "pending") if r["id"] not in old_pending]
    assert new_pending and min(r["id"] for r in new_pending) > max(old_pending)
    human = ctl(setup, "schedule", BOB)
    assert human.code == 0 and "replanned" in human.out and "pending" in human.out

    # Broken file: still running on the old config, the error names the key path, sends go on.
    broken_port(setup, (ALICE, BOB, CAROL))
    d.send_signal(signal.SIGHUP)
    d.wait_event("reload failed; still running on the previous config")
    assert d.running()
    status = ctl_json(setup, "status")
    assert status["last_reload_error"] and "accounts[1].smtp.port" in status["last_reload_error"]
    assert status["accounts"]["active"] == 3  # the old config, carol included
    assert "FAILED" in ctl(setup, "status").out
    # alice's second send goes out after the failed reload
    wait_until(lambda: {str(alice_ids[0]), str(alice_ids[1])}
               <= {m["x_warmup_id"] for m in smtp_server.messages}, 10, "alice's second send")

    # Remove carol: her pending sends become skipped "removed...".
    write_config(setup, (ALICE, BOB), overrides={BOB: ['min_gap = "3s"']})
    d.send_signal(signal.SIGHUP)
    d.wait_event("reloaded", count=2)
    status = ctl_json(setup, "status")
    assert status["last_reload_error"] is None
    assert status["accounts"]["active"] == 2
    rows = db_rows(setup, CAROL)
    removed = [r for r in rows if r["status"] == "skipped"]
    assert removed and all(r["reason"].startswith("removed") for r in removed), rows
    assert not rows_by_status(rows, "pending"), rows
    assert ctl(setup, "schedule", CAROL).code == 1
    metrics = ctl(setup, "metrics").out
    assert "warmupd_reloads_total 3" in metrics
    assert "warmupd_reload_failures_total 1" in metrics
    assert d.stop() == 0


def test_warmupctl_reload(setup: Setup, warmupd: StartDaemon) -> None:
    d = warmupd(setup)
    # Valid: exit 0 and the changes listed.
    write_config(setup, (ALICE, BOB, CAROL))
    r = ctl(setup, "reload")
    assert r.code == 0, r
    assert "reloaded" in r.out and f"added {CAROL}" in r.out
    assert rows_by_status(ctl_json(setup, "schedule", CAROL), "pending")

    # Broken with two problems: exit 1, each error printed; the daemon keeps the old config.
    write_config(setup, (ALICE, BOB, CAROL), overrides={CAROL: ["max_attempts = 0"]})
    broken = setup.config.read_text().replace(f"port = {setup.port}", "port = 70000", 1)
    setup.config.write_text(broken)
    r = ctl(setup, "reload")
    assert r.code == 1, r
    assert "accounts[0].smtp.port" in r.err and "accounts[2].max_attempts" in r.err, r.err
    assert "2 error(s)" in r.err
    r = ctl(setup, "reload", "--json")
    assert r.code == 1 and len(r.json()["errors"]) == 2
    status = ctl_json(setup, "status")
    assert "accounts[0].smtp.port" in status["last_reload_error"]
    assert "accounts[2].max_attempts" in status["last_reload_error"]
    assert status["accounts"]["active"] == 3
    assert d.running()
    assert d.stop() == 0


# ---------------------------------------------------------------- warmupctl


def test_warmupctl_commands(setup: Setup, smtp_server: SMTPServer, warmupd: StartDaemon) -> None:
    now = time.time()
    seeded = seed(setup, ALICE, [now + 1.2, now + 3.5, now + 1800, now + 2400], BOB)
    seeded += seed(setup, BOB, [now + 3000, now + 3300], ALICE)  # bob sends nothing meanwhile
    warmupd(setup)
    msgs = smtp_server.wait_for(2, timeout=10)

    # status --json: the contract fields.
    st = ctl_json(setup, "status")
    for k in STATUS_FIELDS:
        assert k in st, k
    assert st["version"] == __version__
    assert isinstance(st["uptime_s"], int | float) and st["uptime_s"] >= 0
    assert st["config_path"] == str(setup.config)
    datetime.fromisoformat(st["config_loaded_at"].replace("Z", "+00:00"))
    assert st["last_reload_error"] is None
    assert st["accounts"]["active"] == 2 and st["accounts"]["paused"] == 0
    assert set(TODAY_KEYS) <= set(st["today"])
    assert st["today"]["sent"] == 2 and st["today"]["pending"] == 4
    # Only the near future is held in memory (the paging horizon, 15 min): the four
    # sends half an hour and more ahead stay in the store until they come close.
    assert st["pending_timers"] == 0
    for k in ("account", "at", "at_utc"):
        assert k in st["next_send"], st["next_send"]
    assert st["next_send"]["account"] == ALICE and st["next_send"]["send_id"] == seeded[2]
    assert isinstance(st["loop_lag_ms"], int | float)
    human = ctl(setup, "status")
    assert human.code == 0
    assert "2 active, 0 paused" in human.out and "last reload  ok" in human.out

    # accounts --json
    accounts = {a["email"]: a for a in ctl_json(setup, "accounts")}
    assert set(accounts) == {ALICE, BOB}
    for a in accounts.values():
        assert a["timezone"] == "UTC" and a["warmup_day"] == 1 and a["target_today"] == 12
        assert a["paused"] is None
    assert accounts[ALICE]["sent_today"] == 2

    # schedule --json: the fields, and id is the X-Warmup-Id the server received.
    sched = ctl_json(setup, "schedule", ALICE)
    assert len(sched) == 4
    for row in sched:
        for k in SCHEDULE_FIELDS:
            assert k in row, k
    sent = rows_by_status(sched, "sent")
    assert len(sent) == 2
    by_mid = {m["message_id"]: m for m in msgs}
    for row in sent:
        assert str(row["id"]) == by_mid[row["message_id"]]["x_warmup_id"]
        assert row["recipient"] == BOB and row["attempts"] == 1 and row["sent_at"]
    assert ctl(setup, "schedule", ALICE).out.startswith(f"{ALICE}: 4 send(s)")

    # pause: pending sends skipped "paused: <reason>", status shows it with the reason.
    r = ctl(setup, "pause", ALICE, "--reason", "ops drill")
    assert r.code == 0, r
    sched = ctl_json(setup, "schedule", ALICE)
    assert not rows_by_status(sched, "pending")
    assert [r["reason"] for r in rows_by_status(sched, "skipped")] == ["paused: ops drill"] * 2
    st = ctl_json(setup, "status")
    assert st["accounts"]["paused"] == 1 and st["accounts"]["active"] == 1
    assert st["accounts"]["paused_list"] == [{"email": ALICE, "reason": "ops drill"}]
    assert f"paused {ALICE}: ops drill" in ctl(setup, "status").out
    assert {a["email"]: a["paused"] for a in ctl_json(setup, "accounts")}[ALICE] == "ops drill"

    # resume: the rest of today is planned again.
    r = ctl(setup, "resume", ALICE)
    assert r.code == 0, r
    sched = ctl_json(setup, "schedule", ALICE)
    pending = rows_by_status(sched, "pending")
    assert pending and min(x["id"] for x in pending) > max(seeded), sched
    assert ctl_json(setup, "status")["accounts"]["paused"] == 0

    # metrics, version
    r = ctl(setup, "metrics")
    assert r.code == 0
    for name in METRICS:
        assert name in r.out, name
    m = re.search(rf'^warmupd_sends_total{{account="{re.escape(ALICE)}",status="sent"}} (\d+)$',
                  r.out, re.M)
    assert m and int(m.group(1)) >= 2, r.out
    assert re.search(r'^warmupd_send_lateness_seconds_bucket\{le="\+Inf"\} [1-9]', r.out, re.M)
    r = ctl(setup, "version")
    assert r.code == 0 and r.out.startswith(f"warmupd {__version__}")
    assert ctl_json(setup, "version")["version"] == __version__

    # An unknown account: exit 1 with the daemon's message.
    for args in (("schedule", "nobody@warmup.test"), ("pause", "nobody@warmup.test"),
                 ("resume", "nobody@warmup.test")):
        r = ctl(setup, *args)
        assert r.code == 1, (args, r)
        assert "nobody@warmup.test" in r.err

    # No password in anything warmupctl prints.
    for args in (("status", "--json"), ("accounts", "--json"), ("schedule", ALICE),
                 ("schedule", BOB, "--json"), ("status",), ("accounts",)):
        assert_no_secret(ctl(setup, *args).out, f"warmupctl {' '.join(args)}")


def test_warmupctl_without_daemon(setup: Setup) -> None:
    r = ctl(setup, "status")
    assert r.code == EX_UNAVAILABLE, r
    assert str(setup.socket) in r.err
    # A leftover socket file nobody listens on: the same.
    setup.socket.parent.mkdir(parents=True, exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(setup.socket))
    s.close()
    try:
        r = ctl(setup, "status", "--json")
        assert r.code == EX_UNAVAILABLE, r
        assert str(setup.socket) in r.err
    finally:
        setup.socket.unlink()
        setup.socket.parent.rmdir()


# ---------------------------------------------------------------- the socket, raw


def test_control_socket_raw_clients(setup: Setup, warmupd: StartDaemon) -> None:
    d = warmupd(setup)
    assert stat.S_IMODE(os.stat(setup.socket).st_mode) == 0o660

    reply = json.loads(raw_request(setup.socket, b"this is not json\n"))
    assert reply["ok"] is False and reply["error"]
    reply = json.loads(raw_request(setup.socket, b'{"cmd": "frobnicate"}\n'))
    assert reply["ok"] is False and "frobnicate" in reply["error"]
    reply = json.loads(raw_request(setup.socket, b'{"cmd": "status"}\n'))
    assert reply["ok"] is True and reply["result"]["version"] == __version__

    # A line over 64 KiB: an error line, and the daemon carries on.
    buf = raw_request(setup.socket, b'{"cmd": "status", "x": "' + b"a" * (70 * 1024) + b'"}\n')
    reply = json.loads(buf)
    assert reply["ok"] is False and "too long" in reply["error"]
    reply = json.loads(raw_request(setup.socket, b'{"cmd": "status"}\n'))
    assert reply["ok"] is True
    assert d.running()


def test_idle_clients_dropped_while_others_served(setup: Setup, warmupd: StartDaemon) -> None:
    warmupd(setup)
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    half = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        idle.connect(str(setup.socket))
        half.connect(str(setup.socket))
        half.sendall(b'{"cmd": "sta')
        t0 = time.monotonic()
        closed: dict[str, float] = {}
        served = 0
        while len(closed) < 2 and time.monotonic() - t0 < 20:
            # Meanwhile other clients are served promptly.
            q0 = time.monotonic()
            reply = json.loads(raw_request(setup.socket, b'{"cmd": "version"}\n', timeout=3))
            assert reply["ok"] is True
            assert time.monotonic() - q0 < 1.0
            served += 1
            ready, _, _ = select.select([c for c in (idle, half) if c.fileno() >= 0
                                         and _name(c, idle) not in closed], [], [], 0.5)
            for c in ready:
                data = c.recv(4096)
                assert data == b"", data  # no reply: a half request is not answered
                closed[_name(c, idle)] = time.monotonic() - t0
        assert set(closed) == {"idle", "half"}, closed
        for name, after in closed.items():
            assert 8.5 <= after <= 13.0, (name, after)
        assert served >= 8
    finally:
        idle.close()
        half.close()


def _name(c: socket.socket, idle: socket.socket) -> str:
    return "idle" if c is idle else "half"


def test_second_daemon_refuses_to_start(setup: Setup, warmupd: StartDaemon) -> None:
    first = warmupd(setup)
    second = warmupd(setup, wait_ready=False)
    code = second.wait(20)
    assert code != 0
    assert "in use" in second.stderr() and "warmupd" in second.stderr(), second.tail()
    assert first.running()
    assert ctl(setup, "status").code == 0  # the first one's socket is untouched
    assert stat.S_ISSOCK(os.lstat(setup.socket).st_mode)

    # Another config (its own state folder) naming the same socket: refused as well.
    other_dir = setup.tmp_path / "other"
    other_dir.mkdir()
    for f in setup.tmp_path.glob("*.pw"):
        (other_dir / f.name).write_text(f.read_text())
    other = Setup(other_dir, other_dir / "config.toml", setup.socket, setup.port)
    write_config(other)
    third = warmupd(other, wait_ready=False)
    assert third.wait(20) != 0
    assert str(setup.socket) in third.stderr() and "in use" in third.stderr(), third.tail()
    assert first.running() and ctl(setup, "status").code == 0
    assert first.stop() == 0


def test_stale_socket_file_is_replaced(setup: Setup, warmupd: StartDaemon) -> None:
    setup.socket.parent.mkdir(parents=True, exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(setup.socket))  # bound, never listening, then gone: a crash's leftover
    s.close()
    d = warmupd(setup)
    d.wait_event("removing stale control socket")
    r = ctl(setup, "status", "--json")
    assert r.code == 0, r
    st = os.lstat(setup.socket)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert d.stop() == 0
    assert not setup.socket.exists()  # removed at a clean stop


# ---------------------------------------------------------------- logs


def test_json_logs_of_a_whole_run_and_no_secret(setup: Setup, smtp_server: SMTPServer,
                                               warmupd: StartDaemon) -> None:
    now = time.time()
    seed(setup, ALICE, [now + 1.2, now + 3.0], BOB)
    seed(setup, BOB, [now + 3000], ALICE)
    d = warmupd(setup)
    smtp_server.wait_for(2, timeout=10)
    wait_until(lambda: len(d.find("send sent")) >= 2, 5, "two send sent events")
    write_config(setup, (ALICE, BOB, CAROL))
    d.send_signal(signal.SIGHUP)
    d.wait_event("reloaded")
    broken_port(setup, (ALICE, BOB, CAROL))
    d.send_signal(signal.SIGHUP)
    d.wait_event("reload failed; still running on the previous config")
    assert ctl(setup, "pause", BOB, "--reason", "drill").code == 0
    assert ctl(setup, "resume", BOB).code == 0
    ctl(setup, "status", "--json")
    raw_request(setup.socket, b"garbage\n")
    assert d.stop() == 0

    out, err = d.stdout(), d.stderr()
    assert out.strip()
    lines = [ln for ln in (out + err).splitlines() if ln.strip()]
    for ln in lines:
        obj = json.loads(ln)  # every line is one JSON object
        assert isinstance(obj, dict)
        for k in ("timestamp", "level", "event"):
            assert k in obj, (k, ln)
    sends = [json.loads(ln) for ln in lines if json.loads(ln)["event"].startswith("send ")]
    assert len([e for e in sends if e["event"] == "send sent"]) >= 2
    for e in sends:
        for k in ("account", "send_id", "message_id"):
            assert e.get(k) is not None, (k, e)
    assert_no_secret(out, "stdout")
    assert_no_secret(err, "stderr")


# ---------------------------------------------------------------- bad config at start


def test_bad_config_at_start_exits_78_listing_every_problem(setup: Setup,
                                                            warmupd: StartDaemon) -> None:
    write_config(setup, (ALICE, BOB), overrides={BOB: ['timezone = "Mars/Olympus_Mons"']})
    setup.config.write_text(setup.config.read_text().replace(f"port = {setup.port}", "port = 70000", 1))
    d = warmupd(setup, wait_ready=False)
    assert d.wait(20) == EX_CONFIG
    err = d.stderr()
    assert "2 problem(s)" in err, err
    problem_lines = [ln.strip() for ln in err.splitlines() if re.match(r"\s+accounts\[", ln)]
    assert len(problem_lines) == 2, err
    assert problem_lines[0].startswith("accounts[0].smtp.port:")
    assert problem_lines[1].startswith("accounts[1].timezone:")
    assert not setup.socket.exists()
    assert_no_secret(err + d.stdout(), "the output of a failed start")
