"""The store's discipline and its failures, against the real daemon where sending is involved.

* ids: a reply inserted while a plan chunk is written gets its own id, and both survive;
* races: a change of a send that lost to a pause is dropped, never written over it, and a
  pause that races a send waiting for its account never lets that send out;
* an outside process holding the write lock delays sends but loses none;
* a full file system stops sending (reason in status) and sending resumes when space
  returns, with no Message-ID twice at the server;
* a rollover whose store step fails once still plans its zone (fake time, libfaketime);
* a damaged database at start: one line, a non-zero exit, the file's bytes unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_helpers import (
    ALICE,
    BOB,
    CAROL,
    REPO_ROOT,
    DaemonFactory,
    Seed,
    all_final,
    db_path,
    seed_plan,
    send_rows,
    skip_near_midnight,
    wait_rows,
    wait_until,
    write_config,
)
from tests.ops_helpers import raw_request
from tests.rig.smtp_server import SMTPServer
from warmupd.config import load_config
from warmupd.planner import PlannedSend
from warmupd.store import Store

DAY = "2026-03-04"
BASE = datetime(2026, 3, 4, 9, tzinfo=UTC).timestamp()




def seeds(n: int, start: float = BASE, prefix: str = "s") -> list[Seed]:
    return [Seed(start + 60 * i, "peak", "b@example.com", f"<{prefix}.{i}@example.com>") for i in range(n)]


def request(cfg: Path, cmd: str, **args: Any) -> dict[str, Any]:
    reply = raw_request(load_config(cfg).daemon.socket, json.dumps({"cmd": cmd, **args}).encode() + b"\n")
    out: dict[str, Any] = json.loads(reply)
    return out


def status(cfg: Path) -> dict[str, Any]:
    r = request(cfg, "status")
    assert r["ok"], r
    result: dict[str, Any] = r["result"]
    return result


def assert_each_once(srv: SMTPServer) -> Counter[str]:
    mids = Counter(m["message_id"] for m in srv.messages)
    assert not [m for m, n in mids.items() if n > 1], f"Message-IDs accepted more than once: {mids}"
    return mids


# ---------------------------------------------------------------- ids and races in the store


async def test_reply_inserted_while_a_plan_chunk_is_written_gets_its_own_id(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "w.db")
    try:
        ((_, original, _),) = await store.insert_plan([("a@example.com", DAY, 1, 1, seeds(1))])
        acts = await store.record_received(original, "b@example.com", "INBOX", "inbox", DAY, int(BASE * 1000),
                                           0, 1, [("reply", int(BASE * 1000), None)])
        assert acts is not None and len(acts) == 1
        # A chunk of 20,000 rows keeps the writer busy for a while; the reply comes in meanwhile.
        big = store.prepare_plan([(f"x{i}@example.com", DAY, 1, 40, seeds(40, prefix=f"x{i}"))
                                  for i in range(500)])
        chunk = asyncio.create_task(store.insert_prepared(big))
        await asyncio.sleep(0)
        reply = await store.insert_reply(acts[0].id, "b@example.com", DAY, 1, 10,
                                         PlannedSend(BASE + 5, "reply", "a@example.com", "<r.1@example.com>"),
                                         original, 2, "Re: hi", "thanks", "<s.0@example.com>", "<s.0@example.com>")
        keys = await chunk
        assert reply is not None
        chunk_ids = {k[1] for k in keys}
        assert reply[1] not in chunk_ids and original not in chunk_ids
        stored = await store.read(lambda con: {r[0]: r[1] for r in con.execute("SELECT id, message_id FROM sends")})
        assert len(stored) == 20_000 + 2
        assert stored[reply[1]] == "<r.1@example.com>"
        assert all(i in stored for i in chunk_ids)
    finally:
        await store.close()


async def test_a_change_that_lost_to_a_pause_is_dropped(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "w.db")
    try:
        await store.insert_plan([("a@example.com", DAY, 1, 2, seeds(2))])
        r1, r2 = await store.day_rows("a@example.com", DAY)
        # The firing path read r1 while pending; a pause skips it before its mark commits.
        assert await store.skip_pending("a@example.com", "paused: operator", [DAY]) == [r1.id, r2.id]
        r1.status, r1.attempts = "sending", 1
        assert await store.commit_send(r1, "pending") is False
        row = await store.get_send(r1.id)
        assert row is not None and row.status == "skipped" and row.attempts == 0
        assert await store.event_log(r1.id) == [("pending", "skipped", "paused: operator")]
    finally:
        await store.close()


def test_a_pause_that_races_a_waiting_send_never_lets_it_out(tmp_path: Path, smtp_server: SMTPServer,
                                                            daemons: DaemonFactory) -> None:
    """alice's first send is held up by a server stalling at MAIL FROM; her second send
    comes due and waits for her turn; she is paused meanwhile: the second never goes out."""
    skip_near_midnight(180)
    cfg = write_config(tmp_path, smtp_server.port, grace="30s", min_gap="1s", jitter="0s")
    now = time.time()
    first, second = seed_plan(tmp_path, {ALICE: [now + 3.0, now + 4.0]})
    smtp_server.set_fault("stall_before", count=1, sender=ALICE, seconds=4.0)
    d = daemons(cfg, tmp_path)
    d.wait_event("send sending", timeout=10, send_id=first.id)
    # The second is due and waiting for alice's turn (first is stalled until ~now+7).
    wait_until(lambda: time.time() > second.at + 0.5, 10, "the second send to be due")
    assert send_rows(tmp_path, "id=?", (second.id,))[0]["status"] == "pending"
    r = request(cfg, "pause", account=ALICE, reason="race test")
    assert r["ok"], r
    wait_rows(tmp_path, lambda rows: {x["id"]: x["status"] for x in rows}.get(first.id) == "sent", 20,
              "the first send to finish")
    time.sleep(0.5)  # the second's wait for the account lock ends right after the first
    row = send_rows(tmp_path, "id=?", (second.id,))[0]
    assert row["status"] == "skipped" and row["reason"] == "paused: race test", row
    assert [m["message_id"] for m in smtp_server.messages] == [first.message_id]
    assert d.find("send change dropped: the row changed meanwhile", send_id=second.id)
    assert not d.errors(), d.errors()


# ---------------------------------------------------------------- an outside writer holds the lock


def test_outside_write_lock_for_10_s_delays_sends_but_loses_none(tmp_path: Path, smtp_server: SMTPServer,
                                                                 daemons: DaemonFactory) -> None:
    skip_near_midnight(240)
    cfg = write_config(tmp_path, smtp_server.port, grace="60s", min_gap="1s", jitter="0s")
    now = time.time()
    seeded = seed_plan(tmp_path, {ALICE: [now + 4 + 2.5 * i for i in range(4)],
                                  BOB: [now + 4.7 + 2.5 * i for i in range(4)],
                                  CAROL: [now + 5.4 + 2.5 * i for i in range(4)]})
    d = daemons(cfg, tmp_path)
    # A backup tool or an sqlite3 shell: BEGIN IMMEDIATE and sit on it for 10 s.
    holder = sqlite3.connect(db_path(tmp_path), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    held_at = time.time()
    try:
        wait_until(lambda: status(cfg)["store"]["error"], 15, "status to report the lock")
        st = status(cfg)
        assert "lock" in st["store"]["error"] and "retrying" in st["store"]["error"], st["store"]
        # Nothing goes out while its mark cannot be committed.
        assert smtp_server.messages == []
        time.sleep(max(0.0, held_at + 10 - time.time()))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    rows = wait_rows(tmp_path, all_final, 40, "every send to reach a final status")
    assert {r["status"] for r in rows} == {"sent"}, rows
    mids = assert_each_once(smtp_server)
    assert set(mids) == {s.message_id for s in seeded}
    wait_until(lambda: status(cfg)["store"]["ok"], 10, "status to clear")
    assert d.find("store working again")
    assert not d.errors(), d.errors()


# ---------------------------------------------------------------- a full file system


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, a real file system that fills up (needs root, as the test command runs)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(fs: Path) -> Path:
    """Fill the file system to the last byte; returns the filler file."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def test_full_disk_stops_sending_says_why_and_resumes(tmp_path: Path, small_fs: Path, smtp_server: SMTPServer,
                                                      daemons: DaemonFactory) -> None:
    skip_near_midnight(240)
    cfg = write_config(tmp_path, smtp_server.port, grace="60s", min_gap="1s", jitter="0s")
    text = cfg.read_text().replace('state_dir = "state"', f'state_dir = "{small_fs / "state"}"')
    cfg.write_text(text)
    (small_fs / "state").mkdir()
    (tmp_path / "state").symlink_to(small_fs / "state", target_is_directory=True)  # where the helpers look
    now = time.time()
    seeded = seed_plan(tmp_path, {ALICE: [now + 5 + 2 * i for i in range(3)],
                                  BOB: [now + 5.6 + 2 * i for i in range(3)]})
    d = daemons(cfg, tmp_path)
    filler = fill(small_fs)
    try:
        wait_until(lambda: status(cfg)["store"]["error"], 20, "status to report the full disk")
        st = status(cfg)
        assert "full" in st["store"]["error"], st["store"]
        assert smtp_server.messages == []  # no send starts without its mark
        assert d.find("store unavailable; retrying")
        time.sleep(2)  # a few more due sends pile up behind the failing store
        assert smtp_server.messages == []
    finally:
        filler.unlink()
    rows = wait_rows(tmp_path, all_final, 40, "every send to reach a final status")
    assert {r["status"] for r in rows} == {"sent"}, rows
    mids = assert_each_once(smtp_server)
    assert set(mids) == {s.message_id for s in seeded}
    wait_until(lambda: status(cfg)["store"]["ok"], 10, "status to clear")
    assert status(cfg)["store"]["spells"] >= 1


# ---------------------------------------------------------------- a rollover whose store step fails


FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def test_a_rollover_that_fails_once_still_plans_its_zone(tmp_path: Path, smtp_server: SMTPServer,
                                                        daemons: DaemonFactory) -> None:
    if not os.path.exists(FAKETIME_LIB):
        pytest.skip("libfaketime is not installed (the test command installs Debian's faketime)")
    midnight = datetime.combine(datetime.now(UTC).date() + timedelta(days=1), datetime.min.time(), UTC)
    start = midnight - timedelta(seconds=6)
    cfg = write_config(tmp_path, smtp_server.port, window="00:00-24:00", start_date=start.date() - timedelta(days=3))
    d = daemons(cfg, tmp_path, env={
        "LD_PRELOAD": FAKETIME_LIB, "FAKETIME": "@" + start.strftime("%Y-%m-%d %H:%M:%S"),
        "FAKETIME_DONT_RESET": "1", "WARMUPD_FAULT": "planning.rollover=raise*1"})
    failed = d.wait_event("rollover failed; retrying", timeout=30)
    assert failed[0]["error"] == "injected fault at planning.rollover"
    new_day = midnight.date().isoformat()
    d.wait_event("plan stored", timeout=30, count=2)  # the start's plan, then the new day's
    rows = send_rows(tmp_path, "local_date=?", (new_day,))
    assert {r["account"] for r in rows} == {ALICE, BOB, CAROL}, rows
    assert all(r["status"] in ("pending", "sending", "sent") for r in rows)
    assert d.running()


# ---------------------------------------------------------------- a damaged database at start


def test_a_large_damaged_database_is_checked_after_start_and_stops_the_daemon(tmp_path: Path,
                                                                              daemons: DaemonFactory) -> None:
    """A file over FULL_CHECK_MAX (here 1 byte) starts on the cheap checks; the full check
    then runs in the background and ends the daemon (exit 70) naming the damage."""
    cfg = write_config(tmp_path, 1)
    now = time.time()
    # Sent rows of ten days ago: no query of the start reads them (it goes through the
    # partial indexes of pending rows and the plans of today), so the damage in the middle
    # of the file is found by the full check only.
    old = datetime.now(UTC).date() - timedelta(days=10)
    seed_plan(tmp_path, {ALICE: [now - 10 * 86400 + i * 0.1 for i in range(20_000)]}, local_date=old,
              statuses={ALICE: "sent"})
    db = db_path(tmp_path)
    data = bytearray(db.read_bytes())
    middle = len(data) // 4096 // 2 * 4096
    data[middle + 100:middle + 612] = os.urandom(512)
    db.write_bytes(bytes(data))
    d = daemons(cfg, tmp_path, env={"WARMUPD_FULL_CHECK_MAX": "1"}, wait_ready=False)
    assert d.wait(30) == 70
    (fatal,) = d.find("fatal error; stopping for a restart")
    assert "damaged" in fatal["error"] and str(db) in fatal["error"], fatal


def _run_daemon(cfg: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "warmupd.cli", "run", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=30, env=env)


@pytest.mark.parametrize("damage", ["pages", "garbage"])
def test_a_damaged_database_stops_the_start_and_is_left_untouched(tmp_path: Path, damage: str) -> None:
    cfg = write_config(tmp_path, 1)
    now = time.time()
    seed_plan(tmp_path, {ALICE: [now + 3600 + i for i in range(300)]})
    db = db_path(tmp_path)
    for extra in ("-wal", "-shm"):
        Path(str(db) + extra).unlink(missing_ok=True)
    data = bytearray(db.read_bytes())
    if damage == "pages":
        page = 4096
        assert len(data) > 4 * page
        data[2 * page:2 * page + 512] = os.urandom(512)  # a table page, the header intact
    else:
        data[:] = os.urandom(len(data))
    db.write_bytes(bytes(data))
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    p = _run_daemon(cfg)
    assert p.returncode not in (0, None), p
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert str(db) in lines[0] and "Traceback" not in p.stderr, lines
    assert ("damaged" in lines[0] or "cannot read" in lines[0]) if damage == "pages" else \
        "not a SQLite database" in lines[0], lines
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before

