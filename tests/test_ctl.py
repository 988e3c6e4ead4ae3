"""`warmupctl` as a subprocess against a ControlServer running in a background thread."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_control import ACCOUNTS, METRICS, SCHEDULE, STATUS, FakeHandler, sock_dir
from warmupd.control import ControlServer

__all__ = ["sock_dir"]  # the fixture, re-used from test_control

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Daemon:
    path: Path
    handler: FakeHandler
    loop: asyncio.AbstractEventLoop


@pytest.fixture
def daemon(sock_dir: Path) -> Iterator[Daemon]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="control-loop", daemon=True)
    thread.start()
    handler = FakeHandler()
    server = ControlServer(sock_dir / "warmupd.sock", handler, idle_timeout=5)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield Daemon(server.path, handler, loop)
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def ctl(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if k != "WARMUPD_SOCKET"}
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), e.get("PYTHONPATH")]))
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "warmupd.ctl", *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT, env=e,
    )


# --- commands ------------------------------------------------------------------------------


def test_status_human(daemon: Daemon) -> None:
    r = ctl("--socket", str(daemon.path), "status")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "0.1.0" in out and "up 1h 2m" in out
    assert "/etc/warmupd/config.toml" in out and "2026-12-01 03:30:00 +00:00" in out
    assert "FAILED: accounts[2].smtp.port: must be 1..65535" in out
    assert "2 active, 1 paused" in out and "b@example.com: bounce storm" in out
    assert "pending 5  sending 1  sent 12  failed 1  skipped 2  uncertain 0" in out
    assert "5 pending" in out  # timers
    assert "a@example.com at 2026-12-01 14:03:12 +05:30" in out
    assert "0.8 ms" in out
    assert "opened 4" in out and "c@example.com" in out and "421 busy" in out
    lines = out.splitlines()
    header = next(ln for ln in lines if ln.startswith("TIMEZONE"))
    assert header.split() == ["TIMEZONE", "PENDING", "SENT", "FAILED", "SKIPPED"]
    kolkata = next(ln for ln in lines if ln.startswith("Asia/Kolkata"))
    assert kolkata.split() == ["Asia/Kolkata", "3", "8", "1", "0"]


def test_status_json_is_the_result(daemon: Daemon) -> None:
    r = ctl("--socket", str(daemon.path), "status", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == STATUS
    before = ctl("--socket", str(daemon.path), "--json", "status")
    assert json.loads(before.stdout) == STATUS


def test_status_minimal_result(daemon: Daemon) -> None:
    # Only the guaranteed fields, nothing optional, a clean reload: still renders.
    minimal = {k: v for k, v in STATUS.items() if k not in ("engagement_today", "holds")}
    minimal.update(last_reload_error=None, next_send=None, timezones={})

    async def status() -> dict:
        return minimal

    daemon.handler.cmd_status = status  # type: ignore[method-assign]
    r = ctl("--socket", str(daemon.path), "status")
    assert r.returncode == 0, r.stderr
    assert "last reload  ok" in r.stdout and "next send    none" in r.stdout


def test_accounts_table(daemon: Daemon) -> None:
    r = ctl("--socket", str(daemon.path), "accounts")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["EMAIL", "TIMEZONE", "DAY", "SENT/TARGET"]
    a = next(ln for ln in lines if ln.startswith("a@example.com"))
    assert "Asia/Kolkata" in a and "4/6" in a and a.rstrip().endswith("active")
    assert "paused: bounce storm" in next(ln for ln in lines if ln.startswith("b@example.com"))
    c = next(ln for ln in lines if ln.startswith("c@example.com"))
    assert "hold until 2026-12-02 09:00:00 +01:00: 421 busy" in c
    assert json.loads(ctl("--socket", str(daemon.path), "accounts", "--json").stdout) == ACCOUNTS


def test_schedule(daemon: Daemon) -> None:
    r = ctl("--socket", str(daemon.path), "schedule", "a@example.com", "--date", "2026-12-01",
            "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == SCHEDULE
    assert daemon.handler.calls[-1] == ("schedule", "a@example.com", "2026-12-01")

    r = ctl("--socket", str(daemon.path), "schedule", "a@example.com")
    assert r.returncode == 0, r.stderr
    assert daemon.handler.calls[-1] == ("schedule", "a@example.com", None)
    lines = r.stdout.splitlines()
    assert "2026-12-01" in lines[0] and "UTC+05:30" in lines[0]
    failed = next(ln for ln in lines if ln.startswith("12 "))
    assert failed.split()[:6] == ["12", "11:30:05", "normal", "b@example.com", "failed", "3"]
    assert failed.endswith("550 5.1.1 mailbox unknown")
    assert "09:12:40" in next(ln for ln in lines if ln.startswith("11 "))


def test_schedule_errors_exit_1(daemon: Daemon) -> None:
    r = ctl("--socket", str(daemon.path), "schedule", "nobody@example.com")
    assert r.returncode == 1
    assert r.stderr.strip() == "warmupctl: unknown account nobody@example.com"
    r = ctl("--socket", str(daemon.path), "schedule", "a@example.com", "--date", "tomorrow")
    assert r.returncode == 1
    assert "bad date 'tomorrow'" in r.stderr


def test_pause_and_resume(daemon: Daemon) -> None:
    r = ctl("--socket", str(daemon.path), "pause", "a@example.com", "--reason", "DNS change")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "paused a@example.com: DNS change"
    assert daemon.handler.paused["a@example.com"] == "DNS change"

    r = ctl("--socket", str(daemon.path), "resume", "a@example.com")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "resumed a@example.com (was_paused=yes)"
    assert "a@example.com" not in daemon.handler.paused

    r = ctl("--socket", str(daemon.path), "pause", "a@example.com", "--json")
    assert json.loads(r.stdout) == {"account": "a@example.com", "paused": True, "reason": None}


def test_metrics(daemon: Daemon) -> None:
    r = ctl("--socket", str(daemon.path), "metrics")
    assert r.returncode == 0, r.stderr
    assert r.stdout == METRICS
    assert ctl("--socket", str(daemon.path), "metrics", "--json").stdout == METRICS


def test_version(daemon: Daemon) -> None:
    r = ctl("--socket", str(daemon.path), "version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "warmupd 0.1.0 (python=3.11.7)"


def test_reload(daemon: Daemon) -> None:
    r = ctl("--socket", str(daemon.path), "reload")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["reloaded: 1 change(s)", "  a@example.com: max_per_hour 0 -> 6"]

    daemon.handler.reload_result = {
        "ok": False, "changes": [],
        "errors": ["accounts[1].smtp.port: must be 1..65535", "defaults.jitter: bad duration"],
    }
    r = ctl("--socket", str(daemon.path), "reload")
    assert r.returncode == 1
    assert "reload failed: 2 error(s)" in r.stderr
    assert "accounts[1].smtp.port: must be 1..65535" in r.stderr
    assert "defaults.jitter: bad duration" in r.stderr
    r = ctl("--socket", str(daemon.path), "reload", "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout) == daemon.handler.reload_result


def test_internal_error_exits_1(daemon: Daemon) -> None:
    daemon.handler.explode = True
    r = ctl("--socket", str(daemon.path), "status")
    assert r.returncode == 1
    assert r.stderr.strip() == "warmupctl: internal error: RuntimeError"
    assert r.stdout == ""


# --- finding the daemon --------------------------------------------------------------------


def test_no_daemon_exits_69(sock_dir: Path) -> None:
    path = sock_dir / "nothing.sock"
    r = ctl("--socket", str(path), "status")
    assert r.returncode == 69
    assert str(path) in r.stderr
    assert "is warmupd running?" in r.stderr and "systemctl start warmupd" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_stale_socket_exits_69(sock_dir: Path) -> None:
    path = sock_dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(os.fspath(path))
    s.close()
    r = ctl("--socket", str(path), "version")
    assert r.returncode == 69
    assert str(path) in r.stderr and "refused" in r.stderr


def test_silent_daemon_times_out_69(sock_dir: Path) -> None:
    path = sock_dir / "hung.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(os.fspath(path))
    s.listen(4)  # accepts into the backlog, never answers
    try:
        r = ctl("--socket", str(path), "--timeout", "0.5", "status")
    finally:
        s.close()
    assert r.returncode == 69
    assert str(path) in r.stderr and "did not answer within 0.5s" in r.stderr


def test_config_with_broken_content_still_finds_the_socket(daemon: Daemon, sock_dir: Path) -> None:
    cfg = sock_dir / "config.toml"
    cfg.write_text(
        '[daemon]\nsocket = "warmupd.sock"\nlog_level = "loud"\n\n[[accounts]\nemail = 3 4\n'
    )
    r = ctl("--config", str(cfg), "version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("warmupd 0.1.0")


def test_config_default_socket_under_state_dir(daemon: Daemon, sock_dir: Path) -> None:
    # No socket key: <state_dir>/warmupd.sock, relative to the config file.
    sub = sock_dir / "etc"
    sub.mkdir()
    (sub / "config.toml").write_text('[daemon]\nstate_dir = ".."\n')
    r = ctl("--config", str(sub / "config.toml"), "version")
    assert r.returncode == 0, r.stderr


def test_socket_from_environment(daemon: Daemon) -> None:
    r = ctl("version", env={"WARMUPD_SOCKET": str(daemon.path)})
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(Path("/run/warmupd/warmupd.sock").exists(),
                    reason="a system warmupd socket takes precedence over ./config.toml")
def test_socket_from_config_in_current_directory(daemon: Daemon, sock_dir: Path) -> None:
    (sock_dir / "config.toml").write_text('[daemon]\nsocket = "warmupd.sock"\n')
    r = ctl("version", cwd=sock_dir)
    assert r.returncode == 0, r.stderr
    empty = sock_dir / "empty"
    empty.mkdir()
    r = ctl("version", cwd=empty)  # no config.toml: names the default it tried
    assert r.returncode == 69
    assert str(empty / "var" / "warmupd.sock") in r.stderr


def test_usage_errors_exit_64() -> None:
    assert ctl("frobnicate").returncode == 64
    assert ctl("schedule").returncode == 64
    assert ctl("--socket", "/x", "--config", "/y", "status").returncode == 64
    assert ctl("--timeout", "0", "status").returncode == 64
    assert ctl("--help").returncode == 0
