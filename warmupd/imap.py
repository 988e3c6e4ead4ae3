"""Engagement over IMAP: watch each pool account's INBOX and junk folder, note where
warmup mail landed, and act on it like a person would (open, rescue, reply, archive).

One aioimaplib connection per account with ``imap``. It IDLEs on INBOX where the
server offers IDLE (else it polls every ``imap.poll``, jittered) and looks at the
junk folder (SPECIAL-USE ``\\Junk`` or ``imap.junk_folder``) on every wake-up and
at least every ``imap.poll``. A connection that fails is re-opened with exponential
backoff and jitter; each account has its own task, so a dead or slow server only
holds up its own account. Actions are run on the same connection, between IDLEs.

Recognition: the ``X-Warmup-Id`` header (the send's id; its Message-ID must match),
else the Message-ID of a planned send of the sender named in ``From``. Headers are
read with ``BODY.PEEK`` so scanning never marks anything seen. Each warmup message
is recorded once (table ``received``) with its placement, and its actions are
planned in the same transaction (table ``actions``), each after a heavy-tailed
human delay inside ``engagement.delay_min..delay_max`` and moved into the
receiver's own windows and sending days. Actions sit in the timers (firing.py)
(kind ACTION) and are re-armed from the table after a restart. Every action is
idempotent on the server (setting flags, moving only what is still in junk, a
reply keyed by a Message-ID derived from the action), and ``done`` is committed
right after it, so an action that happened is not repeated.

Protection (the decisions are thresholds.py's): a delivery status notification
that reports a failure for a warmup send marks it bounced; a sender whose last 50
sends (at least ``bounce_min_sample`` of them) bounced more than
``bounce_pause_rate`` is paused. Over its last 3 sending days (at least
``hold_min_sample`` messages received), a sender with more than ``hold_junk_rate``
of its mail in junk gets its ramp held for 3 days; above ``cut_junk_rate`` the
day's target is cut by half too (today's pending sends and the held days' plans);
above ``pause_junk_rate`` it is paused. The last verdict of each shows in
``warmupctl accounts`` (``thresholds``).
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import hashlib
import math
import os
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from email.message import EmailMessage, Message
from email.utils import parseaddr
from typing import Any, Protocol

import aioimaplib

from . import faults
from .calendar import day_bounds, is_sending_day, iso_utc, local_date, window_spans
from .config import Account, Server
from .logs import get_logger
from .oauth import TokenError
from .planner import PlannedSend, day_target
from .smtp import build_message
from .store import AccountState, ActionRow, SendRow, Store
from .templates import first_name
from .thresholds import CUT_FACTOR, Verdict, bounce_verdict, junk_verdict
from .timers import ACTION, SEND

IDLE_MAX = 29 * 60.0  # RFC 2177: re-issue IDLE at least every 29 minutes
SCAN_SINCE_DAYS = 3  # on (re)start, messages of the last days are looked at
HOLD_DAYS = 3
BOUNCE_WINDOW = 50
ACTION_MAX_ATTEMPTS = 5
FOLDERS_TRIED = ("Junk", "Spam", "Junk E-mail", "Junk Email", "INBOX.Junk", "INBOX.Spam", "[Gmail]/Spam")
SENT_TRIED = ("Sent", "Sent Items", "Sent Messages", "INBOX.Sent", "[Gmail]/Sent Mail")
TRASH_TRIED = ("Trash", "Deleted Items", "Deleted Messages", "INBOX.Trash", "[Gmail]/Trash")
HYGIENE_EVERY = 6 * 3600.0
HYGIENE_FIRST = 60.0  # seconds after start: the connections are up, the start-up work done
FETCH_HEADERS = "X-WARMUP-ID MESSAGE-ID IN-REPLY-TO REFERENCES SUBJECT FROM CONTENT-TYPE"

REPLY_LINES = (
    "Thanks, that's helpful.",
    "Got it, thanks!",
    "Sounds good to me.",
    "Thanks for the update, I'll take a look this week.",
    "Appreciate it, talk soon.",
    "Great, thanks for sending this over.",
    "Noted, thank you!",
    "Perfect, that works for me.",
    "Thanks! Let me think about it and get back to you.",
)
SIGN_OFFS = ("Cheers", "Best", "Thanks again", "Talk soon", "Regards")


class ConnectionLost(Exception):
    """The account's IMAP connection is gone or did not answer in time."""


class NotConnected(Exception):
    """The account's IMAP connection is not up right now."""


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


# ---------------------------------------------------------------- timing


def human_delay(delay_min: float, delay_max: float, rng: random.Random) -> float:
    """A person's reaction time: log-normal, median at the geometric middle of the
    range, clipped to [delay_min, delay_max] (a few redraws before clipping keep
    the ends from piling up)."""
    lo, hi = max(0.001, delay_min), max(delay_min, delay_max)
    if hi <= lo:
        return lo
    mu = (math.log(lo) + math.log(hi)) / 2
    sigma = (math.log(hi) - math.log(lo)) / 4  # the range is about +-2 sigma
    for _ in range(4):
        d = rng.lognormvariate(mu, sigma)
        if lo <= d <= hi:
            return d
    return min(hi, max(lo, d))


def next_window(account: Account, t: float, rng: random.Random, *, spread: float = 0.0,
                days: int = 21) -> float:
    """``t`` if it lies in one of the account's windows on a sending day, else the
    next window opening after it (plus a random part of ``spread``, kept inside
    that window), so no action happens outside the receiver's own hours."""
    sched = account.schedule
    day = local_date(account.timezone, t)
    for i in range(-1, days):
        d = day + timedelta(days=i)
        if not is_sending_day(sched, d):
            continue
        for s, e in window_spans(sched, d):
            if e <= t:
                continue
            if s <= t:
                return t
            room = max(0.0, min(spread, e - s - 0.001))
            return s + rng.random() * room
    return t  # no window in three weeks: the config makes no sense, act anyway


# ---------------------------------------------------------------- IMAP parsing helpers


def plan_actions(receiver: Account, placement: str, depth: int, now: float,
                 rng: random.Random) -> list[tuple[str, int, str | None]]:
    """What ``receiver`` does with a warmup message that landed in ``placement`` at
    ``now``: (kind, due_ms, detail) in order, each after a human delay inside its windows.
    Pure (the simulator plays the same decisions)."""
    eng = receiver.engagement

    def later(t: float) -> float:
        return next_window(receiver, t + human_delay(eng.delay_min, eng.delay_max, rng), rng,
                           spread=eng.delay_min)

    acts: list[tuple[str, int, str | None]] = []
    t = now
    if placement == "junk":
        t = later(t)
        acts.append(("rescue", int(t * 1000), None))
    t = later(t)
    acts.append(("open", int(t * 1000), "important" if rng.random() < eng.important_rate else None))
    if depth < eng.max_thread_depth and rng.random() < eng.reply_rate:
        t = later(t)
        acts.append(("reply", int(t * 1000), None))
    if eng.archive_folder:
        t = later(t)
        acts.append(("archive", int(t * 1000), None))
    return acts


def quote_mailbox(name: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_./&+-]+", name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_LIST_RE = re.compile(rb'^\((?P<flags>[^)]*)\) (?:"(?:[^"\\]|\\.)*"|NIL) (?P<name>.+)$')
_FETCH_RE = re.compile(rb"^\d+ FETCH \(")
_UID_RE = re.compile(rb"UID (\d+)")
_FLAGS_RE = re.compile(rb"FLAGS \(([^)]*)\)")


def parse_list(lines: list[Any]) -> list[tuple[set[str], str]]:
    out = []
    for line in lines:
        if not isinstance(line, bytes | bytearray):
            continue
        m = _LIST_RE.match(bytes(line))
        if not m:
            continue
        name = m["name"].decode(errors="replace").strip()
        if name.startswith('"') and name.endswith('"'):
            name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        out.append((set(m["flags"].decode().split()), name))
    return out


def parse_fetch(lines: list[Any]) -> list[tuple[int, set[str], bytes]]:
    """(uid, flags, literal) per message of an aioimaplib FETCH response."""
    out = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if isinstance(line, bytes | bytearray) and _FETCH_RE.match(bytes(line)):
            head = bytes(line)
            body = b""
            if i + 1 < len(lines) and isinstance(lines[i + 1], bytearray):
                body = bytes(lines[i + 1])
                i += 1
                # items after the literal (e.g. a FLAGS sent late) are on the closing line
                if i + 1 < len(lines) and isinstance(lines[i + 1], bytes):
                    head += b" " + lines[i + 1]
            um = _UID_RE.search(head)
            fm = _FLAGS_RE.search(head)
            if um:
                out.append((int(um.group(1)), set(fm.group(1).decode().split()) if fm else set(), body))
        i += 1
    return out


def parse_uids(resp: Any) -> list[int]:
    if not resp.lines:
        return []
    first = bytes(resp.lines[0])
    if first.upper().startswith(b"SEARCH"):
        first = first[6:]
    return [int(x) for x in first.split() if x.isdigit()]


def _resp_code(lines: list[Any], code: bytes) -> bytes | None:
    for line in lines:
        if isinstance(line, bytes | bytearray):
            m = re.search(rb"\[" + code + rb" ([^\]]*)\]", bytes(line))
            if m:
                return m.group(1)
    return None


def _headers(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=email.policy.default)


def _h(msg: Message, name: str) -> str:
    try:
        v = msg.get(name)
    except Exception:  # a malformed header: treat as absent
        return ""
    return str(v).strip() if v is not None else ""


def is_dsn(hdrs: Message) -> bool:
    ctype = _h(hdrs, "Content-Type").lower()
    if "multipart/report" in ctype and "delivery-status" in ctype:
        return True
    sender = parseaddr(_h(hdrs, "From"))[1].lower()
    local = sender.partition("@")[0]
    return local in ("mailer-daemon", "postmaster") or "mailer-daemon" in _h(hdrs, "From").lower()


def dsn_failure(raw: bytes) -> tuple[bool, list[int], list[str]]:
    """(reports a failure, X-Warmup-Ids, Message-IDs) of a delivery status notification."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    actions: list[str] = []
    for part in msg.walk():
        if part.get_content_type() == "message/delivery-status":
            text = part.as_string()
            actions += [a.strip().lower() for a in re.findall(r"(?im)^action:\s*(\S+)", text)]
    failed = any(a == "failed" for a in actions) or not actions
    _, _, body = raw.partition(b"\r\n\r\n")
    if not body:
        _, _, body = raw.partition(b"\n\n")
    text = body.decode("utf-8", errors="replace")
    ids = [int(x) for x in re.findall(r"(?im)^X-Warmup-Id:\s*(\d+)\s*$", text)]
    mids = re.findall(r"(?im)^Message-ID:\s*(<[^>\s]+>)", text)
    return failed, ids, mids


# ---------------------------------------------------------------- one account's connection


Op = Callable[["Watcher"], Awaitable[Any]]


@dataclass
class Folders:
    inbox: str = "INBOX"
    junk: str | None = None
    archive: str | None = None
    sent: str | None = None  # where the provider saves what the account sends (hygiene.py)
    trash: str | None = None


class Watcher:
    """One account's IMAP connection: scan, IDLE/poll, reconnect, run queued operations."""

    def __init__(self, eng: Engagement, account: Account) -> None:
        assert account.imap is not None
        self.eng = eng
        self.account = account
        self.server: Server = account.imap
        self.log = eng.log.bind(account=account.email)
        self.client: aioimaplib.IMAP4 | None = None
        self.connected = False
        self.folders = Folders()
        self.caps: set[str] = set()
        self.keywords_ok = False
        self.selected: str | None = None
        self.last_uid: dict[str, int] = {}
        self.validity: dict[str, bytes] = {}
        self.requests: list[tuple[Op, asyncio.Future[Any]]] = []
        self.wake = asyncio.Event()
        self.lost = asyncio.Event()
        self.up = asyncio.Event()  # set while connected
        self.task: asyncio.Task[None] | None = None
        self.connects = 0
        self.failures = 0
        self.last_error: str | None = None

    # -------------------------------------------------------- life cycle

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"imap-{self.account.email}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        client, self.client = self.client, None
        if client is not None and self.connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.logout(), 2.0)
        self._close(client)
        self.connected = False

    async def run(self) -> None:
        attempt = 0
        while not self.eng.stopping:
            try:
                await self._connect()
                attempt = 0
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any failure of this account's server: back off and retry
                self.last_error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                if self.connected:
                    self.log.warning("imap connection lost", error=self.last_error)
                else:
                    self.log.warning("imap connection failed", host=self.server.host, port=self.server.port,
                                     error=self.last_error)
            finally:
                was = self.connected
                self.connected = False
                self.up.clear()
                self._close(self.client)
                self.client = None
                self._fail_requests(NotConnected(self.last_error or "connection closed"))
                if was:
                    self.selected = None
            if self.eng.stopping:
                return
            attempt += 1
            self.failures += 1
            delay = min(self.eng.reconnect_max, self.eng.reconnect_base * 2 ** (attempt - 1)
                        * (0.5 + self.eng.rng.random()))
            self.log.info("imap reconnect", attempt=attempt, retry_in=round(delay, 3))
            await asyncio.sleep(delay)

    def _close(self, client: aioimaplib.IMAP4 | None) -> None:
        if client is None:
            return
        transport = getattr(client.protocol, "transport", None)
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()
        for t in list(getattr(client, "tasks", ())) + list(getattr(client.protocol, "tasks", ())):
            t.cancel()

    def _fail_requests(self, exc: Exception) -> None:
        reqs, self.requests = self.requests, []
        for _, fut in reqs:
            if not fut.done():
                fut.set_exception(exc)

    async def _cmd(self, aw: Awaitable[Any], timeout: float | None = None) -> Any:
        """One IMAP command, raced against the loss of the connection and the timeout."""
        task = asyncio.ensure_future(aw)
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            done, _ = await asyncio.wait({task, lost}, timeout=timeout or self.server.timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            lost.cancel()
        if task in done:
            return task.result()
        task.cancel()
        raise ConnectionLost("connection lost" if lost in done else
                             f"no answer within {timeout or self.server.timeout:g}s")

    async def _connect(self) -> None:
        srv = self.server
        self.lost = asyncio.Event()
        lost = self.lost

        def on_lost(exc: Exception | None) -> None:
            lost.set()

        if srv.security == "tls":
            client: aioimaplib.IMAP4 = aioimaplib.IMAP4_SSL(
                srv.host, srv.port, timeout=srv.timeout, ssl_context=srv.tls_context(),
                conn_lost_cb=on_lost)
        else:
            client = aioimaplib.IMAP4(srv.host, srv.port, timeout=srv.timeout, conn_lost_cb=on_lost)
        self.client = client
        await self._cmd(client.wait_hello_from_server())
        if srv.security == "starttls":
            await self._starttls(client)
        if srv.auth == "oauth":
            await self._oauth_login(client)
        else:
            password = srv.password.reveal() if srv.password is not None else ""
            resp = await self._cmd(client.login(srv.username, password))
            if resp.result != "OK":
                text = b" ".join(bytes(x) for x in resp.lines).decode(errors="replace")
                raise ConnectionLost(f"login as {srv.username} refused: {text}")
        self.caps = {c.upper() for c in client.protocol.capabilities}
        await self._find_folders()
        self.connected = True
        self.up.set()
        self.connects += 1
        self.log.info("imap connected", host=srv.host, port=srv.port, idle="IDLE" in self.caps,
                      junk=self.folders.junk, archive=self.folders.archive, connects=self.connects)

    async def _oauth_login(self, client: aioimaplib.IMAP4) -> None:
        """AUTHENTICATE XOAUTH2 (aioimaplib's) with the account's access token; a
        rejected token is replaced once and tried again at once. Every connection
        asks for the token anew, so a reconnect never reuses an expired one."""
        srv = self.server
        try:
            token = await self.eng.host.token(self.account.email, None)
            for attempt in (1, 2):
                resp = await self._cmd(client.xoauth2(srv.username, token))
                if resp.result == "OK":
                    return
                if attempt == 1:
                    token = await self.eng.host.token(self.account.email, token)
        except TokenError as e:
            raise ConnectionLost(str(e)) from None
        text = b" ".join(bytes(x) for x in resp.lines).decode(errors="replace")
        raise ConnectionLost(f"XOAUTH2 login as {srv.username} refused twice: {text}")

    async def _starttls(self, client: aioimaplib.IMAP4) -> None:
        proto = client.protocol
        resp = await self._cmd(proto.execute(aioimaplib.Command("STARTTLS", proto.new_tag(), loop=proto.loop)))
        if resp.result != "OK":
            raise ConnectionLost(f"STARTTLS refused: {resp.lines}")
        loop = asyncio.get_running_loop()
        transport = await self._cmd(loop.start_tls(proto.transport, proto, self.server.tls_context(),
                                                   server_hostname=self.server.host))
        proto.transport = transport
        await self._cmd(proto.capability())

    async def _find_folders(self) -> None:
        assert self.client is not None
        resp = await self._cmd(self.client.list('""', '"*"'))
        boxes = parse_list(resp.lines)
        names = {n for _, n in boxes}
        f = Folders()
        want = self.server.junk_folder
        if want:
            f.junk = want if want in names else None
            if f.junk is None:
                self.log.warning("imap junk folder not found", junk_folder=want)
        else:
            f.junk = next((n for fl, n in boxes if "\\Junk" in fl), None) or \
                next((n for n in FOLDERS_TRIED if n in names), None)
        f.sent = next((n for fl, n in boxes if "\\Sent" in fl), None) or \
            next((n for n in SENT_TRIED if n in names), None)
        f.trash = next((n for fl, n in boxes if "\\Trash" in fl), None) or \
            next((n for n in TRASH_TRIED if n in names), None)
        arch = self.account.engagement.archive_folder
        if arch:
            f.archive = arch if arch in names else None
            if f.archive is None:
                self.log.warning("imap archive folder not found", archive_folder=arch)
        self.folders = f

    # -------------------------------------------------------- the session

    async def _session(self) -> None:
        await self.scan_all()
        while not self.eng.stopping:
            if self.requests:
                await self._run_requests()
                await self.scan_all()
                continue
            why = await self._wait()
            if why == "lost":
                raise ConnectionLost("connection lost")
            if why != "request":
                await self.scan_all()

    async def _run_requests(self) -> None:
        while self.requests:
            op, fut = self.requests.pop(0)
            if fut.done():
                continue
            try:
                res = await op(self)
            except (TimeoutError, ConnectionLost, OSError, aioimaplib.AioImapException) as e:
                if not fut.done():
                    fut.set_exception(NotConnected(str(e) or type(e).__name__))
                raise
            except Exception as e:
                if not fut.done():
                    fut.set_exception(e)
                continue
            if not fut.done():
                fut.set_result(res)

    async def _wait(self) -> str:
        """Wait for new mail (IDLE, or a jittered poll), a queued operation or a lost connection."""
        client = self.client
        assert client is not None
        rng = self.eng.rng
        cycle = min(IDLE_MAX, self.server.poll) * (0.8 + 0.4 * rng.random())
        self.wake.clear()
        if self.requests:
            return "request"
        if "IDLE" not in self.caps:
            waits = {asyncio.ensure_future(self.wake.wait()), asyncio.ensure_future(self.lost.wait())}
            done, pending = await asyncio.wait(waits, timeout=cycle, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
            if self.lost.is_set():
                return "lost"
            if self.wake.is_set():
                return "request"
            await self._cmd(client.noop())
            return "poll"
        await self.select(self.folders.inbox)
        idle = await self._cmd(client.idle_start(timeout=cycle))
        push = asyncio.ensure_future(client.wait_server_push(timeout=cycle + 5))
        wake = asyncio.ensure_future(self.wake.wait())
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            done, _ = await asyncio.wait({push, wake, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (push, wake, lost):
                if not t.done():
                    t.cancel()
        if lost in done:
            return "lost"
        why = "request" if wake in done else "push"
        if push in done and not push.cancelled() and push.exception() is None:
            if any(b"BYE" in bytes(x) for x in push.result() if isinstance(x, bytes | bytearray)):
                return "lost"
        if client.has_pending_idle():
            client.idle_done()
        await self._cmd(asyncio.shield(idle))
        q = client.protocol.idle_queue
        while not q.empty():
            q.get_nowait()
        return why

    async def call(self, op: Op) -> Any:
        """Run ``op(self)`` on this connection between two IDLEs."""
        if not self.connected:  # (re)connecting, e.g. just after start-up: wait a little
            try:
                await asyncio.wait_for(self.up.wait(), self.server.timeout)
            except TimeoutError:
                raise NotConnected(self.last_error or "not connected") from None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.requests.append((op, fut))
        self.wake.set()
        try:
            return await asyncio.wait_for(fut, self.server.timeout * 4)
        except TimeoutError:
            raise NotConnected("operation timed out") from None

    # -------------------------------------------------------- commands

    async def select(self, folder: str) -> Any:
        assert self.client is not None
        resp = await self._cmd(self.client.select(quote_mailbox(folder)))
        if resp.result != "OK":
            self.selected = None
            raise FolderError(f"cannot select {folder}: {resp.lines}")
        self.selected = folder
        perm = _resp_code(resp.lines, b"PERMANENTFLAGS")
        self.keywords_ok = bool(perm and b"\\*" in perm)
        return resp

    async def fetch(self, uids: list[int], items: str) -> list[tuple[int, set[str], bytes]]:
        assert self.client is not None
        out = []
        for i in range(0, len(uids), 200):
            chunk = ",".join(str(u) for u in uids[i:i + 200])
            resp = await self._cmd(self.client.uid("fetch", chunk, items))
            out += parse_fetch(resp.lines)
        return out

    async def search(self, *criteria: str) -> list[int]:
        assert self.client is not None
        resp = await self._cmd(self.client.uid_search(*criteria))
        return parse_uids(resp) if resp.result == "OK" else []

    async def store_flags(self, uid: int, op: str, flags: str) -> None:
        assert self.client is not None
        await self._cmd(self.client.uid("store", str(uid), op, f"({flags})"))

    async def move(self, uid: int, dest: str) -> None:
        assert self.client is not None
        c = self.client
        if "MOVE" in self.caps:
            resp = await self._cmd(c.uid("move", str(uid), quote_mailbox(dest)))
            if resp.result != "OK":
                raise FolderError(f"MOVE to {dest} refused: {resp.lines}")
            return
        resp = await self._cmd(c.uid("copy", str(uid), quote_mailbox(dest)))
        if resp.result != "OK":
            raise FolderError(f"COPY to {dest} refused: {resp.lines}")
        await self.store_flags(uid, "+FLAGS.SILENT", "\\Deleted")
        if "UIDPLUS" in self.caps:
            await self._cmd(c.uid("expunge", str(uid)))
        else:
            await self._cmd(c.expunge())

    async def delete(self, uids: Sequence[int]) -> None:
        """Flag these messages of the selected folder \\Deleted and expunge just them
        (UID EXPUNGE; without UIDPLUS a plain EXPUNGE, which also removes what others flagged)."""
        assert self.client is not None
        if not uids:
            return
        uid_set = ",".join(str(u) for u in uids)
        await self._cmd(self.client.uid("store", uid_set, "+FLAGS.SILENT", "(\\Deleted)"))
        if "UIDPLUS" in self.caps:
            await self._cmd(self.client.uid("expunge", uid_set))
        else:
            await self._cmd(self.client.expunge())

    async def locate(self, send_id: int, message_id: str, folders: list[str | None]) -> tuple[str, int] | None:
        """(folder, uid) of the message of a send among ``folders``."""
        for folder in folders:
            if not folder:
                continue
            await self.select(folder)
            uids = await self.search("HEADER", "X-Warmup-Id", quote(str(send_id)))
            if not uids and message_id:
                uids = await self.search("HEADER", "Message-ID", quote(message_id))
            if not uids:
                continue
            for uid, _, raw in await self.fetch(uids, f"(UID BODY.PEEK[HEADER.FIELDS ({FETCH_HEADERS})])"):
                h = _headers(raw)
                wid, mid = _h(h, "X-Warmup-Id"), _h(h, "Message-ID")
                if wid == str(send_id) or (message_id and mid == message_id):
                    return folder, uid
        return None

    # -------------------------------------------------------- scanning

    async def scan_all(self) -> None:
        await self.scan(self.folders.inbox, "inbox")
        if self.folders.junk:
            await self.scan(self.folders.junk, "junk")

    async def scan(self, folder: str, placement: str) -> None:
        resp = await self.select(folder)
        validity = _resp_code(resp.lines, b"UIDVALIDITY") or b""
        nxt = _resp_code(resp.lines, b"UIDNEXT")
        uidnext = int(nxt) if nxt and nxt.isdigit() else None
        if self.validity.get(folder) != validity:
            self.validity[folder] = validity
            self.last_uid.pop(folder, None)
        last = self.last_uid.get(folder)
        if last is None:
            since = date.fromtimestamp(self.eng.host.now()) - timedelta(days=SCAN_SINCE_DAYS)
            uids = await self.search("SINCE", since.strftime("%d-%b-%Y"))
        elif uidnext is not None and uidnext - 1 <= last:
            return
        else:
            uids = [u for u in await self.search("UID", f"{last + 1}:*") if u > last]
        if uids:
            for uid, _, raw in await self.fetch(uids, f"(UID BODY.PEEK[HEADER.FIELDS ({FETCH_HEADERS})])"):
                try:
                    await self.eng.on_message(self, folder, placement, uid, _headers(raw))
                except (TimeoutError, ConnectionLost, OSError, aioimaplib.AioImapException):
                    raise
                except Exception as e:  # one odd message must not stop the scan
                    self.log.error("imap message not handled", folder=folder, uid=uid, error=repr(e),
                                   exc_info=e)
        top = max(uids) if uids else (last or 0)
        if uidnext is not None:
            top = max(top, uidnext - 1)
        self.last_uid[folder] = top


class FolderError(Exception):
    """A folder cannot be selected, or a message not moved there."""


# ---------------------------------------------------------------- the engagement


class EngagementHost(Protocol):
    """The few things engagement needs of the daemon (daemon.py implements it)."""

    store: Store
    rng: random.Random

    def now(self) -> float: ...
    def today(self, account: Account) -> date: ...
    @property
    def accounts(self) -> Sequence[Account]: ...
    def account(self, email: str) -> Account | None: ...
    def state(self, email: str) -> AccountState | None: ...
    def schedule(self, due_ms: int, ident: int, kind: int = ...) -> None: ...
    def cancel(self, ident: int, kind: int = ...) -> None: ...
    async def pause(self, email: str, reason: str) -> None: ...
    async def token(self, email: str, rejected: str | None) -> str: ...


class Engagement:
    """All accounts' IMAP engagement; created by the daemon when any account has ``imap``."""

    reconnect_base = _env_float("WARMUPD_IMAP_RECONNECT_BASE", 2.0)
    reconnect_max = _env_float("WARMUPD_IMAP_RECONNECT_MAX", 600.0)
    action_retry_base = _env_float("WARMUPD_ACTION_RETRY_BASE", 60.0)
    refresh_interval = 30.0

    def __init__(self, host: EngagementHost) -> None:
        self.host = host
        self.log = get_logger("warmupd.imap")
        self.rng = host.rng
        self.watchers: dict[str, Watcher] = {}
        self.stopping = False
        self._cache: dict[str, dict[str, Any]] = {}
        self._refreshing: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.counters: dict[tuple[str, str], int] = {}
        self.verdicts: dict[tuple[str, str], Verdict] = {}  # (sender, bounces | junk): the last one

    @property
    def store(self) -> Store:
        return self.host.store

    def _account(self, email_: str) -> Account | None:
        return self.host.account(email_)

    def _count(self, account: str, what: str, n: int = 1) -> None:
        self.counters[(account, what)] = self.counters.get((account, what), 0) + n

    def _spawn(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # -------------------------------------------------------- daemon hooks

    async def start(self) -> None:
        """Re-arm pending actions, open one connection per IMAP account."""
        pending = await self.store.pending_actions()
        for act in pending:
            self.host.schedule(act.due_ms, act.id, ACTION)
        if pending:
            self.log.info("engagement actions recovered", pending=len(pending))
        self.sync_accounts()
        for a in self.host.accounts:
            if a.imap is not None:
                await self.refresh(a.email)
        self._spawn(self._refresh_loop())
        self._spawn(self._hygiene_loop())

    def sync_accounts(self) -> None:
        """Start watchers for accounts that gained ``imap`` (after a reload), stop the others."""
        want = {a.email: a for a in self.host.accounts if a.imap is not None}
        for email_, w in list(self.watchers.items()):
            if email_ not in want or want[email_].imap != w.server or want[email_] != w.account:
                self.watchers.pop(email_)
                self._spawn(w.stop())
        for email_, a in want.items():
            if email_ not in self.watchers:
                w = Watcher(self, a)
                self.watchers[email_] = w
                w.start()

    async def stop(self) -> None:
        self.stopping = True
        await asyncio.gather(*(w.stop() for w in self.watchers.values()), return_exceptions=True)
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)

    # -------------------------------------------------------- received mail

    async def on_message(self, w: Watcher, folder: str, placement: str, uid: int, hdrs: Message) -> None:
        if is_dsn(hdrs):
            await self._on_dsn(w, folder, uid)
            return
        found = await self._identify(hdrs)
        if found is None:
            return
        row, depth = found
        receiver = w.account
        if row.account.lower() == receiver.email.lower():
            return  # our own mail (e.g. a copy to self): not engagement
        if await self.store.was_received(row.id, receiver.email):
            return
        now = self.host.now()
        acts = plan_actions(receiver, placement, depth, now, self.rng)
        sent_ms = row.sent_at_ms or row.at_ms
        delay_ms = max(0, int(now * 1000) - sent_ms)
        day = local_date(receiver.timezone, now).isoformat()
        rows = await self.store.record_received(row.id, receiver.email, folder, placement, day,
                                                int(now * 1000), delay_ms, depth, acts,
                                                message_id=row.message_id, sender=row.account)
        if rows is None:
            return
        self._count(receiver.email, "received")
        self._count(receiver.email, placement)
        self.log.info("warmup mail received", account=receiver.email, send_id=row.id, sender=row.account,
                      folder=folder, placement=placement, depth=depth, delay_s=round(delay_ms / 1000, 3),
                      actions=[f"{r.kind}@{iso_utc(r.due_ms / 1000)}" for r in rows])
        for r in rows:
            self.host.schedule(r.due_ms, r.id, ACTION)
        self._schedule_refresh(receiver.email)
        await self._check_hold(row)

    async def _identify(self, hdrs: Message) -> tuple[SendRow, int] | None:
        """The warmup send a message is, with its thread depth; None when it is not one."""
        wid = _h(hdrs, "X-Warmup-Id")
        mid = _h(hdrs, "Message-ID")
        row: SendRow | None = None
        if wid.isdigit():
            r = await self.store.get_send(int(wid))
            if r is not None and (r.message_id == mid or not mid):
                row = r
        if row is None and mid:
            sender = self._account(parseaddr(_h(hdrs, "From"))[1])
            if sender is not None:
                today = local_date(sender.timezone, self.host.now())
                dates = [(today - timedelta(days=d)).isoformat() for d in range(-1, SCAN_SINCE_DAYS + 1)]
                row = await self.store.by_message_id(mid, sender.email, dates)
        if row is None:
            return None
        links = await self.store.send_links(row.id)
        return row, (links[1] if links else 1)

    async def _on_dsn(self, w: Watcher, folder: str, uid: int) -> None:
        got = await w.fetch([uid], "(UID BODY.PEEK[])")
        if not got:
            return
        failed, ids, mids = dsn_failure(got[0][2])
        if not failed:
            return
        row: SendRow | None = None
        for i in ids:
            r = await self.store.get_send(i)
            if r is not None and (not mids or r.message_id in mids):
                row = r
                break
        if row is None and mids:
            # No id in the report: look the Message-IDs up among the last week's sends of
            # the whole pool, in one query (not one per account).
            today = date.fromtimestamp(self.host.now())
            dates = [(today - timedelta(days=d)).isoformat() for d in range(-1, 9)]
            row = await self.store.by_message_ids(mids, dates)
        if row is None or not await self.store.mark_bounced(row.id):
            return
        sender = self._account(row.account)
        self._count(row.account, "bounced")
        self.log.warning("warmup send bounced", account=row.account, send_id=row.id, recipient=row.recipient,
                         seen_by=w.account.email, folder=folder)
        self._schedule_refresh(row.account)
        if sender is None:
            return
        st = self.host.state(sender.email)
        if st is not None and st.paused_reason:
            return
        since = (self.host.today(sender) - timedelta(days=30)).isoformat()
        bounced, total = await self.store.bounce_window(sender.email, since, BOUNCE_WINDOW)
        verdict = bounce_verdict(bounced, total, sender.engagement)
        self.verdicts[(sender.email, "bounces")] = verdict
        if verdict.band == "pause":
            await self.host.pause(sender.email, verdict.reason())
        elif verdict.band == "below_min_sample" and bounced:
            self.log.info("bounce pause not applied: sample too small", account=sender.email,
                          bounced=bounced, sends=total, bounce_min_sample=verdict.min_sample)

    async def _check_hold(self, row: SendRow) -> None:
        """Hold the sender's ramp when too much of its mail landed in junk lately."""
        sender = self._account(row.account)
        if sender is None:
            return
        st = self.host.state(sender.email)
        if st is None:
            return
        today = self.host.today(sender)
        if st.hold_until and st.hold_until > today.isoformat():
            return
        dates = await self.store.sent_dates(sender.email, (today - timedelta(days=60)).isoformat(),
                                            today.isoformat())
        days = sorted({*dates, row.local_date})[-HOLD_DAYS:]
        counts = await self.store.placement_counts(sender.email, days)
        verdict = junk_verdict(counts.get("junk", 0), sum(counts.values()), sender.engagement)
        self.verdicts[(sender.email, "junk")] = verdict
        if verdict.band in ("none", "below_min_sample"):
            return
        if verdict.band == "pause":
            if not st.paused_reason:
                await self.host.pause(sender.email, "junk: " + verdict.reason(len(days)))
            return
        st.hold_until = (today + timedelta(days=HOLD_DAYS)).isoformat()
        st.hold_reason = verdict.reason(len(days)) + ("; the day's target cut by half" if verdict.band == "cut"
                                                      else "; ramp held")
        st.hold_cut = CUT_FACTOR if verdict.band == "cut" else 1.0
        await self.store.upsert_account(st)
        skipped: list[int] = []
        if verdict.band == "cut":
            pending = [r.id for r in await self.store.day_rows(sender.email, today.isoformat())
                       if r.status == "pending"]
            cut = len(pending) - round(len(pending) * CUT_FACTOR)
            if cut:
                skipped = await self.store.skip_ids(sender.email, self.rng.sample(pending, cut), "hold: target cut")
            for i in skipped:
                self.host.cancel(i)
        self.log.warning("ramp held", account=sender.email, band=verdict.band, hold_until=st.hold_until,
                         reason=st.hold_reason, skipped_today=len(skipped))

    def thresholds(self, email_: str) -> dict[str, Any]:
        """The last bounce and junk verdicts of a sender, with their numbers."""
        out: dict[str, Any] = {}
        for kind in ("bounces", "junk"):
            v = self.verdicts.get((email_, kind))
            out[kind] = v.to_json() if v is not None else None
        return out

    # -------------------------------------------------------- actions

    async def fire(self, ident: int, due_ms: int) -> None:
        action = await self.store.get_action(ident)
        if action is None or action.status != "pending":
            return
        account = self._account(action.account)
        if account is None or account.imap is None:
            await self._finish(action, "skipped", "account no longer engages over IMAP")
            return
        now = self.host.now()
        at = next_window(account, now, self.rng, spread=account.engagement.delay_min)
        if at > now + 1.0:  # outside the receiver's hours (e.g. recovered after a restart)
            action.due_ms = int(at * 1000)
            await self.store.update_action(action)
            self.host.schedule(action.due_ms, action.id, ACTION)
            return
        w = self.watchers.get(account.email)
        try:
            if w is None:
                raise NotConnected("no IMAP connection for the account")
            status, detail = await self._perform(w, account, action)
        except NotConnected as e:
            await self._retry(account, action, str(e))
            return
        except Exception as e:  # a bug or an odd server answer: give up on this action
            self.log.error("engagement action failed", account=account.email, action_id=action.id,
                           kind=action.kind, error=repr(e), exc_info=e)
            await self._finish(action, "failed", f"{type(e).__name__}: {e}")
            return
        if status is not None:
            faults.point("imap.action")
            await self._finish(action, status, detail)

    async def _retry(self, account: Account, action: ActionRow, error: str) -> None:
        action.attempts += 1
        if action.attempts >= ACTION_MAX_ATTEMPTS:
            await self._finish(action, "failed", f"gave up after {action.attempts} attempts: {error}")
            return
        base = self.action_retry_base * 2 ** (action.attempts - 1) * (0.5 + self.rng.random())
        at = next_window(account, self.host.now() + base, self.rng)
        action.due_ms = int(at * 1000)
        action.detail = f"retry: {error}"
        await self.store.update_action(action)
        self.host.schedule(action.due_ms, action.id, ACTION)
        self.log.info("engagement action retry", account=account.email, action_id=action.id, kind=action.kind,
                      attempts=action.attempts, retry_at=iso_utc(at), error=error)

    async def _finish(self, action: ActionRow, status: str, detail: str | None) -> None:
        action.status = status
        action.detail = detail
        await self.store.update_action(action)
        if status == "done":
            self._count(action.account, {"open": "opened", "rescue": "rescued", "reply": "replied",
                                         "archive": "archived"}.get(action.kind, action.kind))
        level = "info" if status == "done" else "warning" if status == "failed" else "info"
        getattr(self.log, level)("engagement " + action.kind, account=action.account, action_id=action.id,
                                 send_id=action.send_id, status=status, detail=detail)
        self._schedule_refresh(action.account)

    async def _perform(self, w: Watcher, account: Account, action: ActionRow) -> tuple[str | None, str | None]:
        send = await self.store.get_send(action.send_id)
        if send is None:
            return "skipped", "the send is gone from the database"
        if action.kind == "reply":
            return await self._reply(w, account, action, send)
        f = w.folders

        async def op(w: Watcher) -> tuple[str, str]:
            if action.kind == "open":
                loc = await w.locate(send.id, send.message_id, [f.inbox, f.junk, f.archive])
                if loc is None:
                    return "skipped", "message not found"
                flags = "\\Seen \\Flagged" if action.detail == "important" else "\\Seen"
                await w.select(loc[0])
                await w.store_flags(loc[1], "+FLAGS.SILENT", flags)
                return "done", f"{flags} in {loc[0]}" + (" (important)" if "Flagged" in flags else "")
            if action.kind == "rescue":
                loc = await w.locate(send.id, send.message_id, [f.junk, f.inbox])
                if loc is None:
                    return "skipped", "message not found"
                if loc[0] != f.junk:
                    return "done", f"already in {loc[0]}"
                if w.keywords_ok:
                    await w.store_flags(loc[1], "+FLAGS.SILENT", "$NotJunk")
                    await w.store_flags(loc[1], "-FLAGS.SILENT", "$Junk")
                await w.move(loc[1], f.inbox)
                return "done", f"moved from {loc[0]} to {f.inbox}"
            if action.kind == "archive":
                if not f.archive:
                    return "skipped", "no archive folder"
                loc = await w.locate(send.id, send.message_id, [f.inbox, f.archive])
                if loc is None:
                    return "skipped", "message not found in INBOX"
                if loc[0] == f.archive:
                    return "done", f"already in {f.archive}"
                await w.move(loc[1], f.archive)
                return "done", f"moved to {f.archive}"
            return "skipped", f"unknown action {action.kind!r}"

        done: tuple[str | None, str | None] = await w.call(op)
        return done

    async def _reply(self, w: Watcher, account: Account, action: ActionRow,
                     original: SendRow) -> tuple[str | None, str | None]:
        st = self.host.state(account.email)
        if st is not None and st.paused_reason:
            return "skipped", f"paused: {st.paused_reason}"
        if account.smtp is None:
            return "skipped", "no SMTP account to reply from"
        today = self.host.today(account)
        day = today.isoformat()
        if await self.store.unplanned([(account.email, day)]):
            return "skipped", "the day is not planned (yet)"
        links = await self.store.send_links(original.id)
        depth = links[1] if links else 1
        if depth >= account.engagement.max_thread_depth:
            return "skipped", f"thread depth {depth} reached max_thread_depth"
        wday = st.warmup_day if st else 1
        target = day_target(account, wday, bool(st and st.graduated))
        mid = self._reply_mid(account, action, original)
        existing = await self._find_reply(account, mid, today)
        if existing is None:
            total = await self.store.day_total(account.email, day)
            if total + 1 > target:
                return "skipped", f"day total {total} already at the ramp target {target}"

        async def op(w: Watcher) -> tuple[str, bytes] | None:
            f = w.folders
            loc = await w.locate(original.id, original.message_id, [f.inbox, f.archive, f.junk])
            if loc is None:
                return None
            await w.select(loc[0])
            got = await w.fetch([loc[1]], "(UID BODY.PEEK[])")
            return (loc[0], got[0][2]) if got else None

        fetched = await w.call(op)
        if fetched is None:
            return "skipped", "original message not found"
        orig = email.message_from_bytes(fetched[1], policy=email.policy.default)
        assert isinstance(orig, EmailMessage)
        subject, body, refs = compose_reply(orig, account, self.rng)
        now = self.host.now()
        if existing is None:
            ps = PlannedSend(round(now, 3), "reply", original.account, mid)
            made = await self.store.insert_reply(action.id, account.email, day, wday, target, ps,
                                                 original.id, depth + 1, subject, body,
                                                 original.message_id, refs)
            if made is None:
                return None, None  # the action was settled meanwhile (e.g. skipped by a pause)
            at_ms, reply_id = made
            status = "pending"
        else:  # planned before, its action not marked done (a crash in between): link it again
            reply_id, at_ms, status = existing.id, existing.due_ms, existing.status
            if not await self.store.link_reply(action.id, reply_id, original.id, depth + 1, subject, body,
                                               original.message_id, refs):
                return None, None
        action.status, action.detail = "done", f"reply send {reply_id}"
        self._count(account.email, "replied")
        self.log.info("engagement reply", account=account.email, action_id=action.id, send_id=original.id,
                      reply_send_id=reply_id, recipient=original.account, depth=depth + 1,
                      at=iso_utc(at_ms / 1000))
        if status == "pending":
            self.host.schedule(at_ms, reply_id, SEND)
        self._schedule_refresh(account.email)
        return None, None  # already committed with the reply

    def _reply_mid(self, account: Account, action: ActionRow, original: SendRow) -> str:
        """The reply's Message-ID, the same on every attempt of the action."""
        h = hashlib.sha256(f"{account.email}|{action.id}|{original.message_id}".encode()).hexdigest()
        return f"<{action.created_ms:x}.{h[:16]}@{account.domain}>"

    async def _find_reply(self, account: Account, mid: str, today: date) -> SendRow | None:
        for d in (today, today - timedelta(days=1)):
            for r in await self.store.day_rows(account.email, d.isoformat()):
                if r.message_id == mid:
                    return r
        return None

    async def build_reply(self, account: Account, row: SendRow, instant: float) -> bytes:
        """The message of a planned reply (called by the daemon when it sends one)."""
        text = await self.store.reply_text(row.id)
        rcpt = self._account(row.recipient)
        name = rcpt.display_name if rcpt is not None else None
        if text is None:  # no text on record: a plain warmup message rather than nothing
            return build_message(account, row.recipient, row.message_id, row.id, instant, self.rng,
                                 recipient_name=name)
        subject, body, in_reply_to, refs = text
        return build_message(account, row.recipient, row.message_id, row.id, instant, self.rng,
                             subject=subject, body=body, in_reply_to=in_reply_to, references=refs,
                             recipient_name=name)

    # -------------------------------------------------------- counts

    def today(self, email_: str) -> dict[str, Any]:
        """Today's engagement counts of an account (its local day), from the last refresh."""
        account = self._account(email_)
        day = self.host.today(account).isoformat() if account else None
        c = self._cache.get(email_)
        if c is None or c.get("date") != day:
            self._schedule_refresh(email_)
            c = {"date": day, "sends": 0, "received": 0, "inbox": 0, "junk": 0, "rescued": 0,
                 "opened": 0, "replied": 0, "bounced": 0, "inbox_rate": None}
        return dict(c)

    def totals_today(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for a in self.host.accounts:
            if a.imap is None:
                continue
            for k, v in self.today(a.email).items():
                if isinstance(v, int):
                    out[k] = out.get(k, 0) + v
        out["inbox_rate"] = out["inbox"] / out["received"] if out.get("received") else None
        return out

    async def refresh(self, email_: str) -> dict[str, Any]:
        """Recount an account's day from the database (what ``today`` returns)."""
        account = self._account(email_)
        if account is None:
            return {}
        day = self.host.today(account)
        start, end = day_bounds(account.timezone, day)
        c: dict[str, Any] = await self.store.engagement_day(account.email, day.isoformat(),
                                                            int(start * 1000), int(end * 1000))
        c["date"] = day.isoformat()
        c["inbox_rate"] = c["inbox"] / c["received"] if c["received"] else None
        self._cache[account.email] = c
        return dict(c)

    def _schedule_refresh(self, email_: str) -> None:
        if email_ in self._refreshing or self.stopping:
            return
        self._refreshing.add(email_)

        async def later() -> None:
            try:
                await asyncio.sleep(0.05)
                await self.refresh(email_)
            finally:
                self._refreshing.discard(email_)

        self._spawn(later())

    async def _refresh_loop(self) -> None:
        while not self.stopping:
            await asyncio.sleep(self.refresh_interval)
            for a in self.host.accounts:
                if a.imap is not None:
                    with contextlib.suppress(Exception):
                        await self.refresh(a.email)

    async def _hygiene_loop(self) -> None:
        await asyncio.sleep(_env_float("WARMUPD_HYGIENE_FIRST", HYGIENE_FIRST))
        while not self.stopping:
            await self.hygiene()
            await asyncio.sleep(_env_float("WARMUPD_HYGIENE_INTERVAL", HYGIENE_EVERY))

    async def hygiene(self) -> dict[str, int]:
        """Clean old warmup mail out of every connected account's folders (hygiene.py);
        {account: messages cleaned}."""
        from .hygiene import clean

        done: dict[str, int] = {}
        for email_, w in list(self.watchers.items()):
            eng = w.account.engagement
            if eng.hygiene == "off" or eng.keep_days <= 0 or not w.connected:
                continue

            async def op(w: Watcher, eng: Any = eng, email_: str = email_) -> Any:
                f = w.folders
                folders = [(x, "received") for x in dict.fromkeys([f.inbox, f.junk, f.archive]) if x]
                if f.sent:
                    folders.append((f.sent, "sent"))
                return await clean(w, self.store, email_, folders, f.trash, eng.hygiene, eng.keep_days,
                                   self.host.now(), _headers)

            try:
                res = await w.call(op)
            except Exception as e:  # a server that refuses: try again at the next round
                self.log.warning("mailbox hygiene failed", account=email_, error=f"{type(e).__name__}: {e}")
                continue
            if res.total:
                self.log.info("mailbox hygiene", account=email_, cleaned=res.by_folder, mode=eng.hygiene,
                              keep_days=eng.keep_days)
            done[email_] = res.total
        return done

    def status(self) -> dict[str, Any]:
        """Each IMAP account's connection state."""
        return {e: {"connected": w.connected, "connects": w.connects, "failures": w.failures,
                    "last_error": w.last_error, "junk": w.folders.junk} for e, w in self.watchers.items()}

    def metrics_lines(self) -> list[str]:
        lines = ["# HELP warmupd_imap_connected 1 while the account's IMAP connection is up.",
                 "# TYPE warmupd_imap_connected gauge"]
        for e, w in sorted(self.watchers.items()):
            lines.append(f'warmupd_imap_connected{{account="{e}"}} {int(w.connected)}')
        lines += ["# HELP warmupd_imap_connection_failures_total IMAP connections that failed or were lost.",
                  "# TYPE warmupd_imap_connection_failures_total counter"]
        for e, w in sorted(self.watchers.items()):
            lines.append(f'warmupd_imap_connection_failures_total{{account="{e}"}} {w.failures}')
        lines += ["# HELP warmupd_engagement_today Engagement counts of the account's local day.",
                  "# TYPE warmupd_engagement_today gauge"]
        for e in sorted(self.watchers):
            for k, v in self.today(e).items():
                if isinstance(v, int):
                    lines.append(f'warmupd_engagement_today{{account="{e}",count="{k}"}} {v}')
        lines += ["# HELP warmupd_inbox_placement_ratio Share of the account's received warmup mail "
                  "that landed in the inbox today.", "# TYPE warmupd_inbox_placement_ratio gauge"]
        for e in sorted(self.watchers):
            rate = self.today(e).get("inbox_rate")
            if rate is not None:
                lines.append(f'warmupd_inbox_placement_ratio{{account="{e}"}} {rate:.4f}')
        return lines


# ---------------------------------------------------------------- reply text


def _text_of(msg: EmailMessage) -> str:
    try:
        part = msg.get_body(preferencelist=("plain",))
        if part is not None:
            return str(part.get_content())
    except Exception:  # an undecodable body: quote nothing rather than fail
        pass
    return ""


def compose_reply(orig: EmailMessage, account: Account, rng: random.Random) -> tuple[str, str, str]:
    """(subject, body, References) of a short human reply quoting ``orig``."""
    subject = _h(orig, "Subject") or "(no subject)"
    if account.tag and subject.startswith(account.tag):
        subject = subject[len(account.tag):].lstrip()
    if not re.match(r"(?i)^re:", subject):
        subject = f"Re: {subject}"
    sender_name, sender_addr = parseaddr(_h(orig, "From"))
    first = (sender_name or sender_addr.partition("@")[0]).split()[0] if (sender_name or sender_addr) else ""
    first = re.split(r"[._+-]", first)[0].capitalize() if first else ""
    greeting = f"Hi {first}," if first else "Hi,"
    quoted = "\n".join(("> " + ln) if ln.strip() else ">" for ln in _text_of(orig).rstrip().splitlines())
    when = _h(orig, "Date") or "earlier"
    body = (f"{greeting}\n\n{rng.choice(REPLY_LINES)}\n\n{rng.choice(SIGN_OFFS)},\n"
            f"{first_name(account.display_name)}\n\n"
            f"On {when}, {sender_name or sender_addr or 'you'} wrote:\n{quoted}\n")
    mid = _h(orig, "Message-ID")
    old = re.findall(r"<[^<>\s]+>", _h(orig, "References"))
    chain = [*old[-9:], mid] if mid else old[-10:]
    return subject, body, " ".join(chain)


__all__ = ["Engagement", "Watcher", "compose_reply", "dsn_failure", "human_delay", "next_window"]
