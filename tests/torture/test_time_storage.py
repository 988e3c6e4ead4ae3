"""Torture: time and storage.

* the process stopped (SIGSTOP) for longer than the grace: what came due meanwhile is
  skipped as missed, nothing goes out late;
* the daemon's clock an hour ahead or behind (libfaketime): it plans and fires by that
  clock, and a restart on the true clock sends nothing twice;
* a DST night in a zone with accounts (fake time across the transition): the rollover
  plans the right local day, every send inside that day's local windows;
* the state folder read-only at start (a tmpfs remounted ro): one line, a non-zero exit.
  (Read-only while running cannot be made here: a file system with files open for
  writing refuses the remount; the full-disk test covers a store that stops taking writes.)
(The database locked by another process, a full file system and a damaged file are in
tests/test_store_faults.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.daemon_helpers import (
    ALICE,
    BOB,
    CAROL,
    REPO_ROOT,
    DaemonFactory,
    all_final,
    seed_plan,
    send_rows,
    skip_near_midnight,
    wait_rows,
    write_config,
)
from tests.ops_helpers import raw_request
from tests.rig.smtp_server import SMTPServer
from warmupd.config import load_config

FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
needs_faketime = pytest.mark.skipif(not os.path.exists(FAKETIME_LIB),
                                    reason="libfaketime missing (the test command installs Debian's faketime)")




def status(cfg: Path) -> dict[str, Any]:
    reply = json.loads(raw_request(load_config(cfg).daemon.socket, b'{"cmd": "status"}\n'))
    assert reply["ok"], reply
    result: dict[str, Any] = reply["result"]
    return result


def fake_env(offset_s: float | None = None, at: datetime | None = None) -> dict[str, str]:
    spec = f"{offset_s:+.0f}" if offset_s is not None else "@" + at.strftime("%Y-%m-%d %H:%M:%S")  # type: ignore[union-attr]
    return {"LD_PRELOAD": FAKETIME_LIB, "FAKETIME": spec, "FAKETIME_DONT_RESET": "1"}


# ---------------------------------------------------------------- SIGSTOP past the grace


def test_stopped_past_the_grace_skips_what_came_due_and_sends_nothing_late(
        tmp_path: Path, smtp_server: SMTPServer, daemons: DaemonFactory) -> None:
    skip_near_midnight(120)
    cfg = write_config(tmp_path, smtp_server.port, grace="2s", min_gap="1s", jitter="0s")
    now = time.time()
    # alice's first send has its session prepared (a second ahead) when the stop comes.
    seeded = seed_plan(tmp_path, {ALICE: [now + 4.5, now + 6.0, now + 16.0], BOB: [now + 5.0, now + 7.5],
                                  CAROL: [now + 16.5]})
    d = daemons(cfg, tmp_path)
    d.wait_event("send sending", timeout=10)  # alice's first: connecting, before its instant
    d.send_signal(signal.SIGSTOP)
    stopped_at = time.time()
    try:
        time.sleep(max(0.0, now + 12.0 - time.time()))  # the fault: 7 s stopped, grace is 2 s
    finally:
        d.send_signal(signal.SIGCONT)
    rows = {r["id"]: r for r in wait_rows(tmp_path, all_final, 30, "every send to finish")}
    arrived = {m["message_id"]: m for m in smtp_server.messages}
    for s in seeded:
        row = rows[s.id]
        if s.at < now + 12.0 - 2.0:  # came due while stopped, and more than the grace ago by SIGCONT
            assert row["status"] == "skipped" and row["reason"].startswith("missed"), row
            assert s.message_id not in arrived
        else:
            assert row["status"] == "sent", row
            assert 0 <= arrived[s.message_id]["mail_from_at"] - s.at < 0.1
    assert stopped_at < now + 4.5  # the stop really began before the first instant
    assert Counter(m["message_id"] for m in smtp_server.messages).most_common(1)[0][1] == 1


# ---------------------------------------------------------------- a clock an hour off


@needs_faketime
@pytest.mark.parametrize("offset", [3600, -3600])
def test_a_clock_an_hour_off_fires_by_that_clock_and_never_twice(
        tmp_path: Path, smtp_server: SMTPServer, daemons: DaemonFactory, offset: int) -> None:
    skip_near_midnight(7200 + 120)
    if datetime.now(UTC).hour < 2:
        pytest.skip("the fake hour must stay on today's UTC date")
    cfg = write_config(tmp_path, smtp_server.port, grace="3s", window="00:00-24:00")
    real = time.time()
    fake_now = real + offset
    seeded = seed_plan(tmp_path, {ALICE: [fake_now + 4, fake_now + 6], BOB: [fake_now + 5]},
                       local_date=datetime.fromtimestamp(fake_now, UTC).date())
    d = daemons(cfg, tmp_path, env=fake_env(offset_s=offset))
    wait_rows(tmp_path, all_final, 30, "every send to finish")
    arrived = {m["message_id"]: m for m in smtp_server.messages}
    assert set(arrived) == {s.message_id for s in seeded}
    for s in seeded:
        # The recorder runs on the true clock: the daemon's instant minus its offset.
        assert 0 <= arrived[s.message_id]["mail_from_at"] - (s.at - offset) < 0.2
    d.stop()
    # Back on the true clock: everything it did is done; nothing is sent again.
    d2 = daemons(cfg, tmp_path)
    assert status(cfg)["today"]["sending"] == 0
    assert {r["status"] for r in send_rows(tmp_path)} == {"sent"}
    assert len(smtp_server.messages) == len(seeded)
    assert d2.running()


# ---------------------------------------------------------------- a DST night


@needs_faketime
@pytest.mark.parametrize("night", ["fall-back", "spring-forward"])
def test_a_dst_night_plans_the_right_local_day(tmp_path: Path, smtp_server: SMTPServer,
                                              daemons: DaemonFactory, night: str) -> None:
    tz = ZoneInfo("America/New_York")
    day = date(2026, 11, 1) if night == "fall-back" else date(2026, 3, 8)
    midnight = datetime.combine(day, datetime.min.time(), tz)  # local midnight before the change
    start = midnight.astimezone(UTC) - timedelta(seconds=8)
    cfg = write_config(tmp_path, smtp_server.port, window="00:30-04:30", start_date=day - timedelta(days=10),
                       ramp=(6, 1, 6), min_gap="5m", jitter="1m")
    text = cfg.read_text().replace('timezone = "UTC"', 'timezone = "America/New_York"')
    cfg.write_text(text)
    d = daemons(cfg, tmp_path, env=fake_env(at=start))
    d.wait_event("rollover", timeout=30)
    d.wait_event("plan stored", timeout=30, count=2)
    rows = send_rows(tmp_path, "local_date=?", (day.isoformat(),))
    assert {r["account"] for r in rows} == {ALICE, BOB, CAROL}, rows
    for email in (ALICE, BOB, CAROL):
        mine = sorted(r["at_ms"] for r in rows if r["account"] == email)
        assert len(mine) == 6, (email, mine)
        for at_ms in mine:
            local = datetime.fromtimestamp(at_ms / 1000, tz)
            assert local.date() == day, local
            # inside 00:30-04:30 local wall time; the repeated or missing hour is real time
            assert (local.hour, local.minute) >= (0, 30) and local.hour < 5, local
        gaps = [b - a for a, b in zip(mine, mine[1:], strict=False)]
        assert min(gaps) >= 5 * 60 * 1000 - 1, gaps  # min_gap holds in real time across the change


# ---------------------------------------------------------------- a read-only state folder


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "fs"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0755", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=False, capture_output=True)
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _remount(mnt: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mnt)], check=True, capture_output=True)


def _state_on(cfg: Path, tmp_path: Path, mnt: Path) -> None:
    cfg.write_text(cfg.read_text().replace('state_dir = "state"', f'state_dir = "{mnt / "state"}"'))
    (mnt / "state").mkdir()
    (tmp_path / "state").symlink_to(mnt / "state", target_is_directory=True)


def test_a_read_only_state_folder_at_start_is_one_line_and_a_non_zero_exit(tmp_path: Path,
                                                                          small_fs: Path) -> None:
    cfg = write_config(tmp_path, 1)
    _state_on(cfg, tmp_path, small_fs)
    now = time.time()
    seed_plan(tmp_path, {ALICE: [now + 3600]})
    _remount(small_fs, "ro")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    p = subprocess.run([sys.executable, "-m", "warmupd.cli", "run", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30, env=env)
    assert p.returncode not in (0, None)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert str(small_fs / "state") in lines[0], lines
