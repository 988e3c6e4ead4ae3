"""The local control socket: newline-delimited JSON over a Unix stream socket.

One request per line, exactly one reply line per request, in order::

    -> {"cmd": "schedule", "account": "a@example.com", "date": "2026-12-01"}
    <- {"ok": true, "result": [...]}
    <- {"ok": false, "error": "unknown account a@example.com"}

The server only parses and validates requests; the daemon implements :class:`ControlHandler`.
It is built to be harmless to the event loop it shares with the sender: connections are capped
(extra ones get an error line and are closed), a client gets ``idle_timeout`` seconds to send
each complete line, lines are bounded by ``max_line`` bytes, and the loop is yielded to after
every request so one client pipelining thousands of requests cannot hog it.

The socket file is created with mode 0660 (bound under a umask of 0o117, then chmod-ed, so
there is no window of wider access), optionally handed to a group, and removed on close only
if it is still the file we bound (same device and inode).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any, Protocol

from .logs import get_logger

__all__ = [
    "COMMANDS",
    "ControlError",
    "ControlHandler",
    "ControlServer",
    "ControlSocketError",
    "SocketInUse",
    "SOCKET_MODE",
]

log = get_logger("warmupd.control")

SOCKET_MODE = 0o660
_BIND_UMASK = 0o117  # bind() creates the file as 0777 & ~umask = 0660
_MAX_PATH = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux


class ControlError(Exception):
    """A user-facing error from a command: its message is sent to the client as-is."""


class ControlSocketError(Exception):
    """The control socket path cannot be used (its message is ready for the operator).

    Other failures of ``bind`` (permissions, a missing parent that cannot be created) are
    raised as the plain ``OSError``.
    """


class SocketInUse(ControlSocketError):
    """Another process owns the socket path (a live daemon answers on it)."""


class ControlHandler(Protocol):
    """What the daemon implements; every method is called from the daemon's event loop."""

    async def cmd_status(self) -> dict[str, Any]: ...

    async def cmd_accounts(self) -> list[dict[str, Any]]: ...

    async def cmd_schedule(self, account: str, date: str | None) -> list[dict[str, Any]]: ...

    async def cmd_pause(self, account: str, reason: str | None) -> dict[str, Any]: ...

    async def cmd_resume(self, account: str) -> dict[str, Any]: ...

    async def cmd_reload(self) -> dict[str, Any]: ...

    async def cmd_metrics(self) -> str: ...

    async def cmd_version(self) -> dict[str, Any]: ...

    async def cmd_report(self, days: str | None) -> dict[str, Any]: ...


# command -> (required string args, optional string-or-null args)
COMMANDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "status": ((), ()),
    "accounts": ((), ()),
    "schedule": (("account",), ("date",)),
    "pause": (("account",), ("reason",)),
    "resume": (("account",), ()),
    "reload": ((), ()),
    "metrics": ((), ()),
    "version": ((), ()),
    "report": ((), ("days",)),
}
# Commands that change something: logged at info with the peer's uid.
_MUTATING = frozenset({"pause", "resume", "reload"})


class _BadRequest(ControlError):
    """A request that is refused before any command runs (its text is the reply)."""


# A request line is at most max_line (64 KiB) bytes; nothing the commands take comes near
# these, and they keep json.loads from recursing (RecursionError) or converting a number
# of thousands of digits (ValueError past sys.int_info.default_max_str_digits).
_MAX_NUMBER_DIGITS = 100


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_NUMBER_DIGITS:
        raise _BadRequest(f"bad JSON: a number of {len(text.lstrip('-'))} digits "
                          f"(at most {_MAX_NUMBER_DIGITS})")
    return int(text)


def _json_default(o: Any) -> Any:
    if isinstance(o, datetime | date):
        return o.isoformat()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, set | frozenset):
        return sorted(o, key=str)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _encode(obj: dict[str, Any]) -> bytes:
    text = json.dumps(obj, ensure_ascii=False, default=_json_default)
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate somewhere in the reply: the escaped form is still valid JSON.
        return (json.dumps(obj, ensure_ascii=True, default=_json_default) + "\n").encode("ascii")


def _error(msg: str) -> bytes:
    return _encode({"ok": False, "error": msg})


def _parse(line: bytes) -> tuple[str, dict[str, Any]]:
    """A request line -> (command, arguments); raises _BadRequest with the reply text."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise _BadRequest("request is not valid UTF-8") from None
    try:
        req = json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as e:
        raise _BadRequest(f"bad JSON: {e.msg} at column {e.colno}") from None
    except RecursionError:
        raise _BadRequest("bad JSON: nested too deeply") from None
    if not isinstance(req, dict):
        raise _BadRequest(
            f'request must be a JSON object like {{"cmd": "status"}}, not a {_json_type(req)}'
        )
    known = ", ".join(COMMANDS)
    cmd = req.get("cmd")
    if cmd is None:
        raise _BadRequest(f'request needs "cmd" (one of: {known})')
    if not isinstance(cmd, str):
        raise _BadRequest(f'"cmd" must be a string (one of: {known})')
    if cmd not in COMMANDS:
        raise _BadRequest(f"unknown command {cmd!r} (known: {known})")
    required, optional = COMMANDS[cmd]
    args: dict[str, Any] = {}
    for name in required:
        value = req.get(name)
        if value is None:
            raise _BadRequest(f'{cmd} needs "{name}"')
        if not isinstance(value, str) or not value.strip():
            raise _BadRequest(f'{cmd}: "{name}" must be a non-empty string')
        _check_text(cmd, name, value)
        args[name] = value.strip()
    for name in optional:
        value = req.get(name)
        if value is not None and not isinstance(value, str):
            raise _BadRequest(f'{cmd}: "{name}" must be a string or null')
        if value is not None:
            _check_text(cmd, name, value)
        args[name] = value
    extra = sorted(set(req) - {"cmd", *required, *optional})
    if extra:
        allowed = ", ".join(f'"{a}"' for a in (*required, *optional)) or "none"
        raise _BadRequest(
            f"{cmd}: unknown argument(s) {', '.join(repr(x) for x in extra)} (allowed: {allowed})"
        )
    return cmd, args


def _check_text(cmd: str, name: str, value: str) -> None:
    """Refuse a string argument that is not Unicode text: JSON lets a request escape a
    lone surrogate ("\\ud800"), which no UTF-8 store, log or reply can hold. Refused
    here, before the command runs, so nothing is half applied."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _BadRequest(
            f'{cmd}: "{name}" must be valid Unicode text: it holds a lone surrogate '
            f"(\\u{ord(value[e.start]):04x} at character {e.start})"
        ) from None


def _json_type(v: Any) -> str:
    if isinstance(v, list):
        return "JSON array"
    if isinstance(v, str):
        return "JSON string"
    if isinstance(v, bool):
        return "JSON boolean"
    if isinstance(v, int | float):
        return "JSON number"
    if v is None:
        return "JSON null"
    return type(v).__name__


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    opt = getattr(socket, "SO_PEERCRED", None)
    if sock is None or opt is None:
        return None
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, opt, 12))
    except (OSError, struct.error):
        return None
    return int(uid)


class ControlServer:
    """Serve a :class:`ControlHandler` on a Unix stream socket at *path*."""

    def __init__(
        self,
        path: Path,
        handler: ControlHandler,
        *,
        max_line: int = 65536,
        idle_timeout: float = 10.0,
        group: int | None = None,
        max_clients: int = 64,
    ) -> None:
        if max_line < 16:
            raise ValueError("max_line must be at least 16 bytes")
        if idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        self.path = Path(path)
        self.handler = handler
        self.max_line = max_line
        self.idle_timeout = idle_timeout
        self.group = group
        self.max_clients = max_clients
        self._server: asyncio.AbstractServer | None = None
        self._ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the file we bound
        self._tasks: set[asyncio.Task[Any]] = set()
        self._refused = 0
        self._refused_logged_at = 0.0

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def active_clients(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("control server already started")
        path = self.path
        if len(os.fsencode(path)) > _MAX_PATH:
            raise ControlSocketError(
                f"control socket path is too long ({len(os.fsencode(path))} bytes, "
                f"at most {_MAX_PATH}): {path}",
            )
        await self._clear_stale(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(_BIND_UMASK)
            try:
                sock.bind(os.fspath(path))
            finally:
                os.umask(old)
            st = os.stat(path)
            self._ident = (st.st_dev, st.st_ino)
            os.chmod(path, SOCKET_MODE)
            if self.group is not None:
                os.chown(path, -1, self.group)
            sock.setblocking(False)
            # listen() happens here: nobody can connect before mode and group are final.
            self._server = await asyncio.start_unix_server(
                self._on_client, sock=sock, limit=self.max_line, backlog=128
            )
        except BaseException:
            sock.close()
            self._unlink_if_ours()
            raise
        log.info("control socket listening", path=str(path), group=self.group)

    async def _clear_stale(self, path: Path) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketInUse(f"{path} exists and is not a socket: refusing to replace it")
        loop = asyncio.get_running_loop()
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(probe, os.fspath(path)), 2.0)
        except ConnectionRefusedError:
            pass  # a stale file left by a crash: nobody listens
        except FileNotFoundError:
            return  # vanished meanwhile
        except (TimeoutError, BlockingIOError):
            # A listener whose backlog is full: alive, just busy.
            raise SocketInUse(
                f"{path} is in use by a running warmupd (another daemon on the same state?): "
                "stop it first",
            ) from None
        except OSError as e:
            raise SocketInUse(
                f"{path} exists and cannot be checked ({e.strerror or e}): "
                "remove it if no warmupd is running",
            ) from None
        else:
            raise SocketInUse(
                f"{path} is in use by a running warmupd (another daemon on the same state?): "
                "stop it first",
            )
        finally:
            probe.close()
        log.warning("removing stale control socket", path=str(path))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5.0)
        self._unlink_if_ours()
        log.info("control socket closed", path=str(self.path))

    def _unlink_if_ours(self) -> None:
        ident, self._ident = self._ident, None
        if ident is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == ident:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not remove control socket", path=str(self.path), error=str(e))

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- connections ---------------------------------------------------------------------

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None or len(self._tasks) >= self.max_clients:
            self._note_refused()
            with contextlib.suppress(Exception):
                writer.write(_error(f"too many control connections (max {self.max_clients})"))
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            # close() (or loop shutdown) hung up on this client.  The task is a leaf that only
            # close() awaits; ending it normally keeps asyncio's streams callback (3.11) from
            # logging the cancellation as an error.
            pass
        except (ConnectionError, TimeoutError):
            pass  # client went away, or would not read its replies
        except Exception:
            log.exception("control connection failed")
        finally:
            self._tasks.discard(task)
            writer.close()

    def _note_refused(self) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_logged_at >= 60.0:
            log.warning(
                "control connections refused: too many clients",
                refused=self._refused,
                max_clients=self.max_clients,
            )
            self._refused_logged_at = now
            self._refused = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid = _peer_uid(writer)
        while True:
            try:
                line = await asyncio.wait_for(reader.readuntil(b"\n"), self.idle_timeout)
            except TimeoutError:
                log.debug("control client idle, dropped", timeout=self.idle_timeout)
                return
            except asyncio.IncompleteReadError as e:
                # EOF. A last request without its newline is still answered.
                line = e.partial
                if not line.strip():
                    return
                await self._answer(line, writer, uid)
                return
            except asyncio.LimitOverrunError:
                # The rest of the line is still unread: the stream is out of sync, hang up.
                await self._send(writer, _error(f"request line too long (max {self.max_line} bytes)"))
                return
            if not line.strip():
                continue  # blank lines (interactive use) are ignored
            await self._answer(line, writer, uid)
            # Never process a pipelined burst without giving the rest of the daemon a turn.
            await asyncio.sleep(0)

    async def _answer(self, line: bytes, writer: asyncio.StreamWriter, uid: int | None) -> None:
        await self._send(writer, await self._dispatch(line, uid))

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await asyncio.wait_for(writer.drain(), self.idle_timeout)

    async def _dispatch(self, line: bytes, uid: int | None) -> bytes:
        try:
            cmd, args = _parse(line.strip())
        except _BadRequest as e:
            return _error(str(e))
        if cmd in _MUTATING:
            log.info("control command", cmd=cmd, peer_uid=uid, **args)
        else:
            log.debug("control command", cmd=cmd, peer_uid=uid, **args)
        call = self._method(cmd, args)
        try:
            result = await call()
            return _encode({"ok": True, "result": result})
        except ControlError as e:
            return _error(str(e) or type(e).__name__)
        except Exception as e:
            log.exception("control command failed", cmd=cmd)
            return _error(f"internal error: {type(e).__name__}")

    def _method(self, cmd: str, args: dict[str, Any]) -> Callable[[], Awaitable[Any]]:
        h = self.handler
        if cmd == "schedule":
            return lambda: h.cmd_schedule(args["account"], args["date"])
        if cmd == "pause":
            return lambda: h.cmd_pause(args["account"], args["reason"])
        if cmd == "resume":
            return lambda: h.cmd_resume(args["account"])
        if cmd == "report":
            return lambda: h.cmd_report(args["days"])
        method: Callable[[], Awaitable[Any]] = getattr(h, f"cmd_{cmd}")
        return method
