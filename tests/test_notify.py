"""sd_notify tests: a real AF_UNIX datagram socket in the test plays systemd."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from warmupd.notify import Notifier, watchdog_loop


def _parse(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().split("\n"))


@pytest.fixture(params=["path", "abstract"])
def manager(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[socket.socket]:
    """A bound SOCK_DGRAM socket with NOTIFY_SOCKET pointing at it (path or @abstract)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        path = str(tmp_path / "notify.sock")
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
    else:
        name = f"warmupd-test-{uuid.uuid4().hex}"
        sock.bind(b"\0" + name.encode())
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    sock.settimeout(2)
    yield sock
    sock.close()


def _recv(sock: socket.socket) -> dict[str, str]:
    return _parse(sock.recv(4096))


def _assert_empty(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        with pytest.raises(BlockingIOError):
            sock.recv(4096)
    finally:
        sock.settimeout(2)


def test_ready_status_stopping(manager: socket.socket) -> None:
    n = Notifier.from_env()
    assert n.enabled
    assert n.ready("serving 3 accounts")
    assert _recv(manager) == {"READY": "1", "STATUS": "serving 3 accounts"}
    assert n.ready()
    assert _recv(manager) == {"READY": "1"}
    assert n.status("line one\nline two")  # a newline must not start a bogus assignment
    assert _recv(manager) == {"STATUS": "line one line two"}
    assert n.stopping()
    assert _recv(manager) == {"STOPPING": "1"}
    assert n.send(EXTEND_TIMEOUT_USEC=5_000_000, ERRNO=0)
    assert _recv(manager) == {"EXTEND_TIMEOUT_USEC": "5000000", "ERRNO": "0"}
    _assert_empty(manager)
    assert "NOTIFY_SOCKET" in os.environ  # must not be unset (the daemon may re-read it)
    n.close()


def test_reloading_monotonic_usec(manager: socket.socket) -> None:
    n = Notifier.from_env()
    assert n.reloading("reloading config")
    fields = _recv(manager)
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert fields["RELOADING"] == "1"
    assert fields["STATUS"] == "reloading config"
    assert 0 <= now_usec - int(fields["MONOTONIC_USEC"]) < 1_000_000
    n.reloading()
    assert set(_recv(manager)) == {"RELOADING", "MONOTONIC_USEC"}


def test_disabled_without_notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    n = Notifier.from_env()
    assert not n.enabled
    assert not n.ready("x") and not n.watchdog() and not n.reloading() and not n.stopping()
    assert n.watchdog_interval() is None
    assert n._sock is None  # no socket was even created
    _assert_empty(sock)
    sock.close()


def test_send_failure_never_raises_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = Notifier(str(tmp_path / "missing.sock"))
    assert n.enabled
    with caplog.at_level(logging.WARNING, logger="warmupd.notify"):
        assert not n.ready()
        assert not n.watchdog()
    assert len([r for r in caplog.records if r.name == "warmupd.notify"]) == 1


def test_watchdog_interval_respects_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "@whatever")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert Notifier.from_env().watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier.from_env().watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert Notifier.from_env().watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert Notifier.from_env().watchdog_interval() is None
    assert Notifier(None, 30_000_000).watchdog_interval() is None  # no socket, no watchdog
    assert Notifier("relative/path").enabled is False


async def test_watchdog_loop_pings_only_while_healthy(
    manager: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s -> ping every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier.from_env()
    assert n.watchdog_interval() == pytest.approx(0.1)

    loop = asyncio.get_running_loop()
    arrivals: list[float] = []

    def on_readable() -> None:
        while True:
            try:
                data = manager.recv(4096)
            except BlockingIOError:
                return
            assert _parse(data) == {"WATCHDOG": "1"}
            arrivals.append(loop.time())

    manager.setblocking(False)
    loop.add_reader(manager.fileno(), on_readable)
    state = {"healthy": True}
    task = asyncio.create_task(watchdog_loop(n, lambda: state["healthy"]))
    try:
        await asyncio.sleep(0.55)  # pings at ~0, 0.1, ..., 0.5
        healthy_pings = list(arrivals)
        assert 4 <= len(healthy_pings) <= 7, healthy_pings
        gaps = [b - a for a, b in zip(healthy_pings, healthy_pings[1:], strict=False)]
        assert all(0.04 < g < 0.2 for g in gaps), gaps  # loose: CI machines are busy
        assert sum(gaps) / len(gaps) == pytest.approx(0.1, abs=0.03)

        state["healthy"] = False
        await asyncio.sleep(0.05)  # let an in-flight tick settle
        before = len(arrivals)
        await asyncio.sleep(0.4)
        assert len(arrivals) == before, "pinged while unhealthy"

        state["healthy"] = True
        await asyncio.sleep(0.25)
        assert len(arrivals) >= before + 2, "pings did not resume"
    finally:
        task.cancel()
        loop.remove_reader(manager.fileno())
        n.close()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_watchdog_loop_returns_without_watchdog(manager: socket.socket) -> None:
    # No WATCHDOG_USEC: the loop must end at once rather than spin or sleep forever.
    await asyncio.wait_for(watchdog_loop(Notifier.from_env(), lambda: True), timeout=1)


async def test_watchdog_loop_unhealthy_when_check_raises(manager: socket.socket) -> None:
    def broken() -> bool:
        raise RuntimeError("lag probe failed")

    task = asyncio.create_task(watchdog_loop(Notifier.from_env(), broken, interval=0.02))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    _assert_empty(manager)
