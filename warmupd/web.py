"""The live page: `[daemon] http = "127.0.0.1:8025"` serves the report (``/``, fresh on
each load, ``?days=N``) and ``/metrics`` (the Prometheus text of `warmupctl metrics`).

Read-only: GET and HEAD only, nothing it serves changes state. HTTP/1.1 through h11
(sans-IO) over asyncio streams: a small server with its own bounds (connections at
once, request size, idle and request timeouts). Bound to loopback unless the config
says ``http_allow_remote = true``; the page has no authentication of its own, so a
non-loopback address belongs behind a reverse proxy that authenticates.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import h11

from .control import ControlError
from .logs import get_logger

log = get_logger("warmupd.web")

MAX_CONNECTIONS = 32
MAX_REQUEST = 16 * 1024  # bytes of request line and headers
IDLE_TIMEOUT = 30.0  # seconds a kept-alive connection may wait for its next request
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class PageSource(Protocol):
    """What the page serves (commands.Commands)."""

    async def cmd_report(self, days: str | None = None) -> dict[str, Any]: ...
    async def cmd_metrics(self) -> str: ...


class LivePage:
    """The HTTP server. ``await start()``, ``await close()``."""

    def __init__(self, host: str, port: int, source: PageSource) -> None:
        self.host, self.port = host, port
        self.source = source
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_client, self.host, self.port)
        sock = self._server.sockets[0].getsockname() if self._server.sockets else (self.host, self.port)
        self.port = int(sock[1])
        log.info("live page listening", url=f"http://{self.host if ':' not in self.host else f'[{self.host}]'}"
                                           f":{self.port}/")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._clients):
                t.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            if self._slots.locked():  # busy: answer at once rather than queue
                await self._send_simple(writer, 503, "too many connections; try again")
                return
            async with self._slots:
                await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("live page connection failed")
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
        while True:
            try:
                event = await self._next(conn, reader)
            except h11.RemoteProtocolError as e:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await self._respond(conn, writer, e.error_status_hint, "text/plain; charset=utf-8",
                                        f"bad request: {e}\n".encode(), head=False)
                return
            if not isinstance(event, h11.Request):
                return  # the client closed, or went idle past the timeout
            status, ctype, body = await self._answer(event)
            # Drain the request's body (a GET has none; a client may still send one).
            while not isinstance(await self._next(conn, reader), h11.EndOfMessage | h11.ConnectionClosed):
                pass
            await self._respond(conn, writer, status, ctype, body, head=event.method == b"HEAD")
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _next(self, conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await asyncio.wait_for(reader.read(65536), IDLE_TIMEOUT)
            conn.receive_data(data)

    async def _answer(self, req: h11.Request) -> tuple[int, str, bytes]:
        if req.method not in (b"GET", b"HEAD"):
            return 405, "text/plain; charset=utf-8", b"read-only: GET or HEAD\n"
        url = urlsplit(req.target.decode("ascii", "replace"))
        try:
            if url.path in ("/", "/report", "/index.html"):
                days = parse_qs(url.query).get("days", [None])[0]
                result = await self.source.cmd_report(days)
                return 200, "text/html; charset=utf-8", str(result["html"]).encode()
            if url.path == "/metrics":
                return 200, METRICS_TYPE, (await self.source.cmd_metrics()).encode()
        except ControlError as e:  # still starting, or a bad ?days=
            return (400 if "days" in str(e) else 503), "text/plain; charset=utf-8", f"{e}\n".encode()
        return 404, "text/plain; charset=utf-8", b"not found: / (the report) and /metrics\n"

    async def _respond(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, ctype: str,
                       body: bytes, *, head: bool) -> None:
        headers = [("content-type", ctype), ("content-length", str(len(body))), ("cache-control", "no-store"),
                   ("x-content-type-options", "nosniff"),
                   ("content-security-policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:")]
        writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
        if not head:
            writer.write(conn.send(h11.Data(data=body)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await asyncio.wait_for(writer.drain(), IDLE_TIMEOUT)  # a client that stops reading is dropped

    async def _send_simple(self, writer: asyncio.StreamWriter, status: int, text: str) -> None:
        body = (text + "\n").encode()
        writer.write(f"HTTP/1.1 {status} Busy\r\ncontent-type: text/plain\r\ncontent-length: {len(body)}\r\n"
                     "connection: close\r\n\r\n".encode() + body)
        await writer.drain()
