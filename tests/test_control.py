"""ControlServer through a real Unix socket, with a fake of the daemon's ControlHandler.

The fake stands in for warmupd.daemon's handler (tested for real in test_daemon_ops.py); here
only the protocol, the socket file and robustness are under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import json
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from warmupd.control import (
    COMMANDS,
    ControlError,
    ControlHandler,
    ControlServer,
    ControlSocketError,
    SocketInUse,
)

STATUS: dict[str, Any] = {
    "version": "0.1.0",
    "uptime_s": 3725.4,
    "config_path": "/etc/warmupd/config.toml",
    "config_loaded_at": "2026-12-01T03:30:00Z",
    "last_reload_error": "accounts[2].smtp.port: must be 1..65535",
    "accounts": {
        "active": 2,
        "paused": 1,
        "paused_list": [{"email": "b@example.com", "reason": "bounce storm"}],
    },
    "today": {"pending": 5, "sending": 1, "sent": 12, "failed": 1, "skipped": 2, "uncertain": 0},
    "pending_timers": 5,
    "next_send": {
        "account": "a@example.com",
        "at": "2026-12-01T14:03:12+05:30",
        "at_utc": "2026-12-01T08:33:12Z",
    },
    "loop_lag_ms": 0.8,
    "timezones": {
        "Asia/Kolkata": {"pending": 3, "sent": 8, "failed": 1, "skipped": 0},
        "America/New_York": {"pending": 2, "sent": 4, "failed": 0, "skipped": 2},
    },
    "engagement_today": {"opened": 4, "replied": 2},
    "holds": [
        {"account": "c@example.com", "until": "2026-12-02T09:00:00+01:00", "reason": "421 busy"}
    ],
}

ACCOUNTS: list[dict[str, Any]] = [
    {"email": "a@example.com", "timezone": "Asia/Kolkata", "warmup_day": 3, "target_today": 6,
     "sent_today": 4, "paused": None, "hold": None,
     "engagement_today": {"opened": 2, "replied": 1}},
    {"email": "b@example.com", "timezone": "America/New_York", "warmup_day": 1,
     "target_today": 2, "sent_today": 0, "paused": "bounce storm", "hold": None},
    {"email": "c@example.com", "timezone": "Europe/Paris", "warmup_day": 7, "target_today": 14,
     "sent_today": 3, "paused": None,
     "hold": {"until": "2026-12-02T09:00:00+01:00", "reason": "421 busy"}},
]

SCHEDULE: list[dict[str, Any]] = [
    {"id": 11, "at": "2026-12-01T09:12:40+05:30", "at_utc": "2026-12-01T03:42:40Z",
     "period": "peak", "recipient": "c@example.com", "message_id": "<m11@warmupd>",
     "status": "sent", "attempts": 1, "reason": None, "sent_at": "2026-12-01T09:12:41+05:30"},
    {"id": 12, "at": "2026-12-01T11:30:05+05:30", "at_utc": "2026-12-01T06:00:05Z",
     "period": "normal", "recipient": "b@example.com", "message_id": "<m12@warmupd>",
     "status": "failed", "attempts": 3, "reason": "550 5.1.1 mailbox unknown", "sent_at": None},
    {"id": 13, "at": "2026-12-01T14:03:12+05:30", "at_utc": "2026-12-01T08:33:12Z",
     "period": "peak", "recipient": "c@example.com", "message_id": "<m13@warmupd>",
     "status": "pending", "attempts": 0, "reason": None, "sent_at": None},
]

METRICS = "# HELP warmupd_sent_total Sent messages.\n# TYPE warmupd_sent_total counter\n" \
          'warmupd_sent_total{account="a@example.com"} 4\n'


class FakeHandler:
    """A test double of the daemon's ControlHandler."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.paused: dict[str, str | None] = {"b@example.com": "bounce storm"}
        self.explode = False
        self.unserializable = False
        self.reload_result: dict[str, Any] = {
            "ok": True, "changes": ["a@example.com: max_per_hour 0 -> 6"], "errors": []
        }
        self.status_delay = 0.0

    def _account(self, account: str) -> None:
        if account not in {a["email"] for a in ACCOUNTS}:
            raise ControlError(f"unknown account {account}")

    async def cmd_status(self) -> dict:
        self.calls.append(("status",))
        if self.explode:
            raise RuntimeError("detail that must not reach the client")
        if self.unserializable:
            return {"when": object()}
        if self.status_delay:
            await asyncio.sleep(self.status_delay)
        return copy.deepcopy(STATUS)

    async def cmd_accounts(self) -> list[dict]:
        self.calls.append(("accounts",))
        return copy.deepcopy(ACCOUNTS)

    async def cmd_schedule(self, account: str, date: str | None) -> list[dict]:
        self.calls.append(("schedule", account, date))
        self._account(account)
        if date is not None:
            try:
                dt.date.fromisoformat(date)
            except ValueError:
                raise ControlError(f"bad date {date!r}: use YYYY-MM-DD") from None
        return copy.deepcopy(SCHEDULE)

    async def cmd_pause(self, account: str, reason: str | None) -> dict:
        self.calls.append(("pause", account, reason))
        self._account(account)
        self.paused[account] = reason
        return {"account": account, "paused": True, "reason": reason}

    async def cmd_resume(self, account: str) -> dict:
        self.calls.append(("resume", account))
        self._account(account)
        was = account in self.paused
        self.paused.pop(account, None)
        return {"account": account, "paused": False, "was_paused": was}

    async def cmd_reload(self) -> dict:
        self.calls.append(("reload",))
        return copy.deepcopy(self.reload_result)

    async def cmd_metrics(self) -> str:
        self.calls.append(("metrics",))
        return METRICS

    async def cmd_version(self) -> dict:
        self.calls.append(("version",))
        return {"version": "0.1.0", "python": "3.11.7"}


_: type[ControlHandler] = FakeHandler  # the fake keeps to the Protocol


# --- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Short paths: AF_UNIX paths are limited to 107 bytes, pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="wuc", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def handler() -> FakeHandler:
    return FakeHandler()


@pytest.fixture
async def server(sock_dir: Path, handler: FakeHandler) -> AsyncIterator[ControlServer]:
    srv = ControlServer(sock_dir / "warmupd.sock", handler, idle_timeout=2.0, max_line=4096)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


async def ask(path: Path, req: Any) -> dict[str, Any]:
    """One request on a fresh connection; *req* may be raw bytes."""
    reader, writer = await asyncio.open_unix_connection(os.fspath(path))
    try:
        data = req if isinstance(req, bytes) else json.dumps(req).encode() + b"\n"
        writer.write(data)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
        return json.loads(line)
    finally:
        writer.close()


async def read_eof(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything until the server closes (a reset or broken pipe counts as closed)."""
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except ConnectionError:
        return b""


# --- protocol ------------------------------------------------------------------------------


async def test_status_round_trip(server: ControlServer, handler: FakeHandler) -> None:
    reply = await ask(server.path, {"cmd": "status"})
    assert reply == {"ok": True, "result": STATUS}
    assert handler.calls == [("status",)]


async def test_every_command(server: ControlServer, handler: FakeHandler) -> None:
    p = server.path
    assert (await ask(p, {"cmd": "accounts"}))["result"] == ACCOUNTS
    assert (await ask(p, {"cmd": "schedule", "account": "a@example.com",
                          "date": "2026-12-01"}))["result"] == SCHEDULE
    assert (await ask(p, {"cmd": "schedule", "account": "a@example.com"}))["ok"]
    assert (await ask(p, {"cmd": "pause", "account": "a@example.com", "reason": "x"}))["result"][
        "paused"] is True
    assert (await ask(p, {"cmd": "resume", "account": "a@example.com"}))["ok"]
    assert (await ask(p, {"cmd": "reload"}))["result"]["ok"] is True
    assert (await ask(p, {"cmd": "metrics"}))["result"] == METRICS
    assert (await ask(p, {"cmd": "version"}))["result"]["version"] == "0.1.0"
    assert handler.calls == [
        ("accounts",),
        ("schedule", "a@example.com", "2026-12-01"),
        ("schedule", "a@example.com", None),
        ("pause", "a@example.com", "x"),
        ("resume", "a@example.com"),
        ("reload",),
        ("metrics",),
        ("version",),
    ]


async def test_pipelined_requests_answered_in_order(server: ControlServer) -> None:
    reader, writer = await asyncio.open_unix_connection(os.fspath(server.path))
    reqs = [{"cmd": "version"}, {"cmd": "nope"}, {"cmd": "metrics"}, "[1]", {"cmd": "accounts"}]
    writer.write(b"".join(
        (r if isinstance(r, str) else json.dumps(r)).encode() + b"\n" for r in reqs
    ) + b"\n")  # a blank line is ignored
    await writer.drain()
    replies = [json.loads(await asyncio.wait_for(reader.readline(), 5)) for _ in reqs]
    assert [r["ok"] for r in replies] == [True, False, True, False, True]
    assert replies[2]["result"] == METRICS
    assert replies[4]["result"] == ACCOUNTS
    writer.close()


async def test_bad_json(server: ControlServer) -> None:
    reply = await ask(server.path, b'{"cmd": "status"\n')
    assert reply["ok"] is False
    assert reply["error"].startswith("bad JSON")


async def test_not_utf8(server: ControlServer) -> None:
    reply = await ask(server.path, b'{"cmd": "\xff"}\n')
    assert reply == {"ok": False, "error": "request is not valid UTF-8"}


async def test_json_array_is_not_an_object(server: ControlServer) -> None:
    reply = await ask(server.path, b'["status"]\n')
    assert reply["ok"] is False
    assert "JSON object" in reply["error"] and "array" in reply["error"]


async def test_unknown_command_lists_known_ones(server: ControlServer) -> None:
    reply = await ask(server.path, {"cmd": "explode"})
    assert reply["ok"] is False
    assert "unknown command 'explode'" in reply["error"]
    for name in COMMANDS:
        assert name in reply["error"]
    missing = await ask(server.path, {"command": "status"})
    assert missing["ok"] is False and '"cmd"' in missing["error"]


async def test_argument_validation(server: ControlServer, handler: FakeHandler) -> None:
    p = server.path
    assert await ask(p, {"cmd": "schedule"}) == {"ok": False, "error": 'schedule needs "account"'}
    assert await ask(p, {"cmd": "pause", "reason": "x"}) == {
        "ok": False, "error": 'pause needs "account"'}
    assert await ask(p, {"cmd": "resume"}) == {"ok": False, "error": 'resume needs "account"'}
    bad = await ask(p, {"cmd": "schedule", "account": 42})
    assert bad["ok"] is False and '"account" must be a non-empty string' in bad["error"]
    bad = await ask(p, {"cmd": "schedule", "account": "a@example.com", "date": 20261201})
    assert bad["ok"] is False and '"date" must be a string or null' in bad["error"]
    bad = await ask(p, {"cmd": "status", "verbose": True})
    assert bad["ok"] is False and "unknown argument" in bad["error"]
    assert handler.calls == []  # nothing invalid reached the handler


async def test_lone_surrogates_deep_json_and_huge_numbers_are_refused(
    server: ControlServer, handler: FakeHandler
) -> None:
    """JSON can escape a lone surrogate that no UTF-8 store, log or reply holds, nest
    deeper than the parser recurses, or carry a number longer than int() converts: each
    is an error reply naming the problem, before the handler is called, and the
    connection stays usable."""
    p = server.path
    lines = [
        (b'{"cmd": "pause", "account": "a@example.com", "reason": "x\\ud800"}',
         'pause: "reason" must be valid Unicode text: it holds a lone surrogate '
         "(\\ud800 at character 1)"),
        (b'{"cmd": "resume", "account": "\\udc00a@example.com"}',
         'resume: "account" must be valid Unicode text: it holds a lone surrogate '
         "(\\udc00 at character 0)"),
        (b'{"cmd": "schedule", "account": "a@example.com", "date": "\\udfff"}',
         'schedule: "date" must be valid Unicode text: it holds a lone surrogate '
         "(\\udfff at character 0)"),
        (b"[" * 3000, "bad JSON: nested too deeply"),
        (b'{"cmd": ' + b"1" * 4000 + b"}", "bad JSON: a number of 4000 digits (at most 100)"),
    ]
    reader, writer = await asyncio.open_unix_connection(os.fspath(p))
    try:
        for line, error in lines:
            writer.write(line + b"\n")
            await writer.drain()
            reply = json.loads(await asyncio.wait_for(reader.readline(), 5))
            assert reply == {"ok": False, "error": error}
        writer.write(b'{"cmd": "version"}\n')
        assert json.loads(await asyncio.wait_for(reader.readline(), 5))["ok"] is True
    finally:
        writer.close()
    assert handler.calls == [("version",)]
    assert handler.paused == {"b@example.com": "bounce storm"}  # nothing half applied
    # A surrogate in an error text (an unknown command's name) is escaped in the reply.
    reply = await ask(p, b'{"cmd": "\\ud800"}\n')
    assert reply["ok"] is False and "unknown command '\\ud800'" in reply["error"]


async def test_control_error_is_sent_as_is(server: ControlServer) -> None:
    reply = await ask(server.path, {"cmd": "schedule", "account": "zz@example.com"})
    assert reply == {"ok": False, "error": "unknown account zz@example.com"}
    reply = await ask(server.path, {"cmd": "schedule", "account": "a@example.com",
                                    "date": "2026-13-01"})
    assert reply == {"ok": False, "error": "bad date '2026-13-01': use YYYY-MM-DD"}


async def test_handler_exception_is_an_internal_error(
    server: ControlServer, handler: FakeHandler
) -> None:
    handler.explode = True
    reader, writer = await asyncio.open_unix_connection(os.fspath(server.path))
    writer.write(b'{"cmd": "status"}\n{"cmd": "version"}\n')
    first = json.loads(await asyncio.wait_for(reader.readline(), 5))
    second = json.loads(await asyncio.wait_for(reader.readline(), 5))
    writer.close()
    assert first == {"ok": False, "error": "internal error: RuntimeError"}
    assert "must not reach" not in json.dumps(first)
    assert second["ok"] is True  # same connection keeps working
    handler.explode = False
    assert (await ask(server.path, {"cmd": "status"}))["ok"] is True


async def test_unserializable_result_is_an_internal_error(
    server: ControlServer, handler: FakeHandler
) -> None:
    handler.unserializable = True
    assert await ask(server.path, {"cmd": "status"}) == {
        "ok": False, "error": "internal error: TypeError"}


async def test_last_line_without_newline_is_answered_at_eof(server: ControlServer) -> None:
    reader, writer = await asyncio.open_unix_connection(os.fspath(server.path))
    writer.write(b'{"cmd": "version"}')
    writer.write_eof()
    reply = json.loads(await asyncio.wait_for(reader.readline(), 5))
    assert reply["ok"] is True
    assert await read_eof(reader, 5) == b""
    writer.close()


# --- robustness ----------------------------------------------------------------------------


async def test_oversized_line_error_then_closed(server: ControlServer) -> None:
    reader, writer = await asyncio.open_unix_connection(os.fspath(server.path))
    writer.write(b'{"cmd": "status", "x": "' + b"a" * 20000 + b'"}\n{"cmd": "status"}\n')
    with contextlib.suppress(ConnectionError):  # the server may hang up before we are done
        await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 5)
    reply = json.loads(line)
    assert reply["ok"] is False
    assert "too long" in reply["error"] and "4096" in reply["error"]
    assert await read_eof(reader, 5) == b""  # no answer to the second request: closed
    writer.close()
    # the server itself is fine
    assert (await ask(server.path, {"cmd": "status"}))["ok"] is True


async def test_line_of_exactly_max_line_is_accepted(sock_dir: Path, handler: FakeHandler) -> None:
    async with ControlServer(sock_dir / "s", handler, max_line=64) as srv:
        line = b'{"cmd": "version"}'
        line = line[:-1] + b" " * (64 - len(line)) + b"}"
        assert len(line) == 64
        assert (await ask(srv.path, line + b"\n"))["ok"] is True
        reply = await ask(srv.path, line[:-1] + b" }\n")
        assert reply["ok"] is False and "too long" in reply["error"]


async def test_silent_client_is_dropped(sock_dir: Path, handler: FakeHandler) -> None:
    async with ControlServer(sock_dir / "s", handler, idle_timeout=0.3) as srv:
        reader, writer = await asyncio.open_unix_connection(os.fspath(srv.path))
        t0 = time.monotonic()
        assert await read_eof(reader, 5) == b""
        assert 0.2 <= time.monotonic() - t0 < 3
        writer.close()
        assert srv.active_clients == 0


async def test_half_line_is_dropped(sock_dir: Path, handler: FakeHandler) -> None:
    async with ControlServer(sock_dir / "s", handler, idle_timeout=0.3) as srv:
        reader, writer = await asyncio.open_unix_connection(os.fspath(srv.path))
        writer.write(b'{"cmd": "sta')
        await writer.drain()
        t0 = time.monotonic()
        assert await read_eof(reader, 5) == b""  # dropped without a reply
        assert time.monotonic() - t0 < 3
        writer.close()
        assert handler.calls == []


async def test_slow_drip_client_is_dropped(sock_dir: Path, handler: FakeHandler) -> None:
    # idle_timeout bounds the whole line, not the gap between bytes.
    async with ControlServer(sock_dir / "s", handler, idle_timeout=0.4) as srv:
        reader, writer = await asyncio.open_unix_connection(os.fspath(srv.path))
        t0 = time.monotonic()
        with contextlib.suppress(ConnectionError):
            for ch in b'{"cmd": "status"}':  # 17 bytes, 0.1 s apart
                writer.write(bytes([ch]))
                await writer.drain()
                await asyncio.sleep(0.1)
        assert time.monotonic() - t0 < 3
        assert await read_eof(reader, 5) == b""
        writer.close()


async def test_fifty_concurrent_clients(server: ControlServer, handler: FakeHandler) -> None:
    handler.status_delay = 0.05  # keep them all connected at the same time
    replies = await asyncio.gather(*(ask(server.path, {"cmd": "status"}) for _ in range(50)))
    assert all(r == {"ok": True, "result": STATUS} for r in replies)
    assert len(handler.calls) == 50


async def test_connection_cap(sock_dir: Path, handler: FakeHandler) -> None:
    async with ControlServer(sock_dir / "s", handler, max_clients=2, idle_timeout=5) as srv:
        held = [await asyncio.open_unix_connection(os.fspath(srv.path)) for _ in range(2)]
        for _r, w in held:  # make sure both are being served
            w.write(b'{"cmd": "version"}\n')
        for r, _w in held:
            assert json.loads(await asyncio.wait_for(r.readline(), 5))["ok"]
        reader, writer = await asyncio.open_unix_connection(os.fspath(srv.path))
        reply = json.loads(await asyncio.wait_for(reader.readline(), 5))
        assert reply == {"ok": False, "error": "too many control connections (max 2)"}
        assert await read_eof(reader, 5) == b""
        writer.close()
        held[0][1].close()
        for _ in range(100):
            if srv.active_clients < 2:
                break
            await asyncio.sleep(0.02)
        assert (await ask(srv.path, {"cmd": "version"}))["ok"] is True
        held[1][1].close()


async def test_close_drops_connected_clients(sock_dir: Path, handler: FakeHandler) -> None:
    srv = ControlServer(sock_dir / "s", handler, idle_timeout=30)
    await srv.start()
    reader, writer = await asyncio.open_unix_connection(os.fspath(srv.path))
    writer.write(b'{"cmd": "version"}\n')
    assert json.loads(await asyncio.wait_for(reader.readline(), 5))["ok"]
    t0 = time.monotonic()
    await asyncio.wait_for(srv.close(), 5)
    assert time.monotonic() - t0 < 2
    assert await read_eof(reader, 5) == b""
    writer.close()
    assert not srv.path.exists()


# --- the socket file ----------------------------------------------------------------------


async def test_socket_mode_and_group(sock_dir: Path, handler: FakeHandler) -> None:
    gid = os.getgroups()[-1] if os.getgroups() else os.getgid()
    async with ControlServer(sock_dir / "s", handler, group=gid) as srv:
        st = os.stat(srv.path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == gid
    assert not (sock_dir / "s").exists()


async def test_socket_mode_under_permissive_umask(sock_dir: Path, handler: FakeHandler) -> None:
    old = os.umask(0)
    try:
        async with ControlServer(sock_dir / "s", handler) as srv:
            assert stat.S_IMODE(os.stat(srv.path).st_mode) == 0o660
            assert os.umask(0) == 0  # our umask was restored after bind
    finally:
        os.umask(old)


async def test_stale_socket_is_replaced(sock_dir: Path, handler: FakeHandler) -> None:
    path = sock_dir / "s"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(os.fspath(path))  # a crashed daemon: the file stays, nobody listens
    dead.close()
    assert path.exists()
    async with ControlServer(path, handler) as srv:
        assert (await ask(srv.path, {"cmd": "version"}))["ok"] is True


async def test_live_socket_raises_socket_in_use(server: ControlServer, handler: FakeHandler) -> None:
    other = ControlServer(server.path, FakeHandler())
    with pytest.raises(SocketInUse) as ei:
        await other.start()
    assert str(ei.value) == (
        f"{server.path} is in use by a running warmupd (another daemon on the same state?): "
        "stop it first"
    )
    await other.close()  # harmless, and must not remove the live daemon's socket
    assert server.path.exists()
    assert (await ask(server.path, {"cmd": "version"}))["ok"] is True


async def test_regular_file_is_not_replaced(sock_dir: Path, handler: FakeHandler) -> None:
    path = sock_dir / "s"
    path.write_text("not a socket")
    with pytest.raises(SocketInUse, match="not a socket"):
        await ControlServer(path, handler).start()
    assert path.read_text() == "not a socket"


async def test_close_leaves_a_foreign_socket_file(sock_dir: Path, handler: FakeHandler) -> None:
    srv = ControlServer(sock_dir / "s", handler)
    await srv.start()
    os.unlink(srv.path)  # someone else took the path over meanwhile
    srv.path.write_text("theirs")
    await srv.close()
    assert srv.path.read_text() == "theirs"


async def test_too_long_path(sock_dir: Path, handler: FakeHandler) -> None:
    with pytest.raises(ControlSocketError, match="too long"):
        await ControlServer(sock_dir / ("x" * 120), handler).start()


async def test_parent_directory_is_created(sock_dir: Path, handler: FakeHandler) -> None:
    async with ControlServer(sock_dir / "run" / "s", handler) as srv:
        assert (await ask(srv.path, {"cmd": "version"}))["ok"] is True


async def test_flood_is_capped_and_loop_stays_responsive(
    sock_dir: Path, handler: FakeHandler
) -> None:
    lags: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:  # stands in for the daemon's timers
        while not stop.is_set():
            t = time.monotonic()
            await asyncio.sleep(0.005)
            lags.append(time.monotonic() - t - 0.005)

    async with ControlServer(sock_dir / "s", handler, max_clients=8, idle_timeout=1) as srv:
        ticker = asyncio.create_task(probe())
        # (100: below the listen backlog, or asyncio's own unix connect misbehaves)
        conns = await asyncio.gather(
            *(asyncio.open_unix_connection(os.fspath(srv.path)) for _ in range(100))
        )
        assert srv.active_clients <= 8
        # 8 are served (and dropped as idle after 1 s), the other 92 refused at once.
        first = await asyncio.gather(*(asyncio.wait_for(r.readline(), 5) for r, _w in conns))
        refused = [x for x in first if x]
        assert len(refused) == 92 and first.count(b"") == 8
        assert all(json.loads(x)["error"] == "too many control connections (max 8)"
                   for x in refused)
        before = len(lags)
        for _r, w in conns:
            w.close()
        await asyncio.sleep(0.05)
        # One client pipelining a burst is served, but not in one go.
        reader, writer = await asyncio.open_unix_connection(os.fspath(srv.path))
        writer.write(b'{"cmd": "version"}\n' * 2000)
        replies = [await asyncio.wait_for(reader.readline(), 5) for _ in range(2000)]
        assert all(json.loads(x)["ok"] for x in replies)
        writer.close()
        stop.set()
        await ticker
    assert len(lags) > before
    assert max(lags) < 0.5
