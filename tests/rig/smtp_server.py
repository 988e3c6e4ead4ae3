"""A real aiosmtpd SMTP server for the tests and benchmarks, with fault injection.

Two forms share one handler:

* in-process: ``SMTPServer(users=...).start()`` runs the server on its own event
  loop in a daemon thread (so sync and async tests alike can use it) and keeps
  every accepted message in a thread-safe list (``messages``, ``wait_for``);
* subprocess: ``python -m tests.rig.smtp_server --port P --users a@x:pw,...
  --record FILE.jsonl [--control-port C] [--fast]``, driven with the
  ``SMTPServerProcess`` wrapper or the ``control()`` client helpers over a
  line-based JSON control port.

Every accepted message is recorded as one JSON object (one line in the record
file, flushed at once) with ``mail_from_at`` / ``data_at`` (``time.time()``
when MAIL FROM arrived / when the DATA terminator was read), ``mail_from``,
``rcpt_tos``, ``message_id``, ``x_warmup_id``, ``subject``, ``auth_login`` (the
SASL user), ``auth_mechanism`` ("PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"; None
without AUTH) and ``raw`` (the message as str).

OAuth (``SMTPServer(..., oauth_introspection_url=URL)``, ``--oauth-introspection-url``
for the subprocess, ``MailRig(oauth_introspection_url=...)``): AUTH XOAUTH2
(``user=U\x01auth=Bearer T\x01\x01``) and OAUTHBEARER (RFC 7628,
``n,a=U,\x01auth=Bearer T\x01\x01``) are offered beside PLAIN and LOGIN. Each token
is posted to the RFC 7662 introspection endpoint (in a thread, never cached: a
revoked token is refused at once); it is good when the answer is active and its
``username`` is U, or when it is an app token whose ``app_mailboxes`` hold U.
A refused token gets Google's and Microsoft's answer: ``334`` + base64 JSON
(``{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}`` for
XOAUTH2, status ``invalid_token`` for OAUTHBEARER), the client's empty (or
``\x01``) line, then ``535 5.7.8 Username and Password not accepted``. An
introspection endpoint that does not answer gives ``454 4.7.0``.

Faults (``set_fault(mode, count=None, sender=None, seconds=..., at=None)``):

========== ============================================= ===============
mode       effect                                        stage (``at``)
========== ============================================= ===============
"421"      reply 421 then close the connection           mail|rcpt|data
"451"      reply 451 (temporary failure)                 mail|rcpt|data
"550"      reply 550 (permanent failure)                 mail|rcpt|data
"535"      reject AUTH with 535 even for good passwords  auth (fixed;
           (counts once per session, whatever the        one count per
           client retries with other mechanisms) or      session; per
           good OAuth tokens (the 334 JSON error, then   attempt for
           535, as for a dead token): with               XOAUTH2 and
           ``sender=USER, count=1`` it refuses USER's    OAUTHBEARER)
           next good token once:
           ``faults.reject_token(USER, times=1)``
"drop"     close the connection without any reply        mail|rcpt|data
"stall"    sleep ``seconds`` without answering, then     mail|rcpt|data
           carry on normally
"stall_before"  = "stall" at "mail" (default) or "rcpt"
"stall_after"   = "stall" at "data": the message is
           received *and recorded*, only the answer is
           late (a client that times out has an
           ambiguous delivery, as with a real server)
"552"      reply 552 (storage/size limit exceeded)       mail|rcpt|data
"reset"    abort the connection with a TCP RST           greeting|mail|
           (SO_LINGER 0, then close): at "data" in the   rcpt|data
           middle of the message, once ``after_bytes``
           (default 100) of its content were read and
           never its final dot
"tarpit"   write every reply from this point of the      greeting|mail|
           session on byte by byte, ``seconds``          rcpt|data
           (default 1.0) of silence before each byte;
           at "data" the message is recorded first (a
           client that times out has an ambiguous
           delivery)
"tls_fail" abort the TLS handshake with a                tls (fixed)
           handshake_failure alert (servers started
           with ``tls=``; implicit TLS and STARTTLS)
========== ============================================= ===============

The default stage is "mail" (MAIL FROM), "greeting" for "tarpit". The
"greeting" stage acts when a client connects, instead of (or before) the 220
greeting: a 421/451/550/552 reply is written in its place and the connection
closed; "drop" and "reset" close it without a word; "stall" waits, then greets.
``count`` is how many times the fault fires before it clears itself (``None``:
until ``reset()``). ``sender`` restricts it to one MAIL FROM address (for
"535": to one AUTH login); the "greeting" and "tls" stages come before any
sender is known, so their faults take no ``sender``. A sender-specific fault
wins over a global one. Setting a fault replaces any earlier fault with the
same ``sender``. A "data"-stage 421/451/550/552/drop rejects the message after
its data was received, a "data"-stage reset before it was all read: neither is
recorded.

TLS: ``SMTPServer(tls="starttls" | "implicit", certfile=..., keyfile=...)``
offers STARTTLS, or speaks TLS from the first byte (the in-process form only).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from typing import IO, Any, TextIO

from aiosmtpd.smtp import (
    MISSING,
    SMTP,
    AuthResult,
    Envelope,
    LoginPassword,
    Session,
    TLSSetupException,
)

__all__ = [
    "FAULT_MODES",
    "Fault",
    "FaultTable",
    "OAUTH_MECHANISMS",
    "OAuthLogin",
    "Recorder",
    "RigHandler",
    "RigSMTP",
    "SMTPServer",
    "SMTPServerProcess",
    "ServerThread",
    "control",
    "introspect_token",
    "make_smtp_factory",
    "parse_users",
    "remote_reset",
    "remote_set_fault",
    "remote_stats",
    "reset_connection",
    "scan_headers",
    "server_tls_context",
    "token_allows",
]

FAULT_MODES = (
    "421",
    "451",
    "550",
    "535",
    "drop",
    "stall",
    "stall_before",
    "stall_after",
    "552",
    "reset",
    "tarpit",
    "tls_fail",
)
STAGES = ("mail", "rcpt", "data")
GREETING_MODES = ("421", "451", "550", "552", "drop", "reset", "stall", "tarpit")
DEFAULT_RESET_AFTER = 100  # bytes of the message a mid-DATA reset lets the server read
OAUTH_MECHANISMS = ("XOAUTH2", "OAUTHBEARER")
OAUTH_SCOPE = "https://mail.google.com/"
OAUTH_REFUSED = "535 5.7.8 Username and Password not accepted"
RIG_HOSTNAME = "rig.warmup.test"  # never let aiosmtpd call socket.getfqdn() per connection
REPO_ROOT = Path(__file__).resolve().parents[2]


class _DropRigNoise(logging.Filter):
    """Drop aiosmtpd's per-connection warnings that the rig triggers on purpose."""

    NOISE = ("Session.login_data is deprecated",)  # aiosmtpd itself sets it on AUTH

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if any(n in msg for n in self.NOISE):
            return False
        # A STARTTLS handshake that failed (the "tls_fail" fault, or a client that did not
        # trust the certificate): aiosmtpd logs a whole traceback as a session exception.
        # One line says as much.
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, TLSSetupException):
            cause = exc.__cause__
            record.msg = f"%r STARTTLS handshake failed: {type(cause).__name__}: {cause}"
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.args = (peer,)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


logging.getLogger("mail.log").addFilter(_DropRigNoise())


# --------------------------------------------------------------------------- faults


@dataclass
class Fault:
    mode: str  # one of "421", "451", "550", "552", "535", "drop", "reset", "stall", "tarpit", "tls_fail"
    # "greeting", "tls", "auth", "mail", "rcpt", "data", or "data_content" (a reset
    # set "at" data: it acts while the message is read, not after)
    stage: str
    remaining: int | None  # None: until reset
    sender: str | None  # lower-cased MAIL FROM (or AUTH login for 535); None: everyone
    seconds: float = 0.0  # for "stall"; for "tarpit" the silence before each byte
    after_bytes: int = 0  # for a "data" reset: bytes of the message read before the RST


def _normalise_fault(
    mode: str,
    count: int | None,
    sender: str | None,
    seconds: float | None,
    at: str | None,
    after_bytes: int | None = None,
) -> Fault:
    mode = str(mode)
    if mode not in FAULT_MODES:
        raise ValueError(f"unknown fault mode {mode!r}; expected one of {FAULT_MODES}")
    if count is not None and count < 1:
        raise ValueError("count must be >= 1 or None")
    if after_bytes is not None and (mode != "reset" or at != "data"):
        raise ValueError("after_bytes is for a reset at 'data' only")
    if at in ("greeting", "tls") and sender:
        raise ValueError(f"a fault at {at!r} comes before any sender is known: no sender")
    if mode == "tls_fail":
        if at not in (None, "tls"):
            raise ValueError("tls_fail is at the TLS handshake ('tls') only")
        if sender:
            raise ValueError("tls_fail comes before any sender is known: no sender")
        stage = "tls"
    elif at == "greeting":
        if mode not in GREETING_MODES:
            raise ValueError(f"fault {mode} cannot act at the greeting; one of {GREETING_MODES}")
        stage = "greeting"
    elif mode == "tarpit":
        stage = at or "greeting"
        if stage not in ("greeting", *STAGES):
            raise ValueError(f"unknown stage {stage!r}; expected greeting or one of {STAGES}")
        if stage == "greeting" and sender:
            raise ValueError("a tarpit from the greeting on takes no sender (use a later stage)")
    elif mode == "reset":
        stage = at or "mail"
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected greeting or one of {STAGES}")
        if stage == "data":
            stage = "data_content"
            if after_bytes is None:
                after_bytes = DEFAULT_RESET_AFTER
            if after_bytes < 0:
                raise ValueError("after_bytes must be >= 0")
    elif mode == "535":
        if at not in (None, "auth"):
            raise ValueError("fault 535 applies to AUTH only")
        stage = "auth"
    elif mode == "stall_after":
        if at not in (None, "data"):
            raise ValueError("stall_after is at DATA")
        mode, stage = "stall", "data"
    elif mode == "stall_before":
        stage = at or "mail"
        if stage not in ("mail", "rcpt"):
            raise ValueError("stall_before is at 'mail' or 'rcpt'")
        mode = "stall"
    else:
        stage = at or "mail"
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    if mode == "stall" and (seconds is None or seconds < 0):
        raise ValueError("a stall fault needs seconds >= 0")
    if mode == "tarpit":
        seconds = 1.0 if seconds is None else seconds
        if seconds < 0:
            raise ValueError("a tarpit needs seconds >= 0 (the pause before each byte)")
    return Fault(
        mode=mode,
        stage=stage,
        remaining=count,
        sender=sender.lower() if sender else None,
        seconds=float(seconds or 0.0),
        after_bytes=int(after_bytes or 0),
    )


class FaultTable:
    """Thread-safe set of active faults: at most one per sender key (None = all)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: dict[str | None, Fault] = {}
        self.fired = 0  # how many times any fault fired since the last reset
        # (mode, stage) of every fault fired since the last reset, in order
        self.history: list[tuple[str, str]] = []
        # for every mid-DATA reset: how many bytes of the message the server had read
        self.reset_after_bytes: list[int] = []

    def set(
        self,
        mode: str,
        count: int | None = None,
        sender: str | None = None,
        seconds: float | None = None,
        at: str | None = None,
        after_bytes: int | None = None,
    ) -> Fault:
        fault = _normalise_fault(mode, count, sender, seconds, at, after_bytes)
        with self._lock:
            self._faults[fault.sender] = fault
        return fault

    def reject_token(self, user: str, times: int = 1) -> Fault:
        """Refuse ``user``'s next ``times`` AUTH attempts even with a good token or password
        (the "535" fault for that login)."""
        return self.set("535", count=times, sender=user)

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self.fired = 0
            self.history = []
            self.reset_after_bytes = []

    def active(self) -> list[Fault]:
        with self._lock:
            return [Fault(**asdict(f)) for f in self._faults.values()]

    def take(self, stage: str, who: str | None) -> Fault | None:
        """The fault to apply now at ``stage`` for sender/login ``who``, consuming one count."""
        if not self._faults:  # fast path, no lock: the common case in benchmarks
            return None
        key = who.lower() if who else None
        with self._lock:
            for k in (key, None) if key is not None else (None,):
                fault = self._faults.get(k)
                if fault is None or fault.stage != stage:
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        del self._faults[k]
                self.fired += 1
                self.history.append((fault.mode, fault.stage))
                return fault
        return None


# --------------------------------------------------------------------------- recording


def scan_headers(raw: bytes) -> dict[str, str]:
    """Quick scan of the header block for Message-ID, X-Warmup-Id and Subject.

    No MIME decoding (an encoded Subject stays encoded); folded lines are unfolded.
    Only the first occurrence of each header counts.
    """
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    head = raw if end < 0 else raw[:end]
    wanted = {b"message-id": "message_id", b"x-warmup-id": "x_warmup_id", b"subject": "subject"}
    out: dict[str, str] = {}
    current: str | None = None
    for line in head.splitlines():
        if line[:1] in (b" ", b"\t"):  # continuation of a folded header
            if current is not None:
                out[current] += " " + line.strip().decode("utf-8", "replace")
            continue
        name, sep, value = line.partition(b":")
        field = wanted.get(name.strip().lower()) if sep else None
        if field is not None and field not in out:
            out[field] = value.strip().decode("utf-8", "replace")
            current = field
        else:
            current = None
        if len(out) == 3 and current is None:
            break
    return out


def _parse_headers_full(raw: bytes) -> dict[str, str]:
    msg = BytesHeaderParser(policy=default_policy).parsebytes(raw)
    out: dict[str, str] = {}
    for field, header in (
        ("message_id", "Message-ID"),
        ("x_warmup_id", "X-Warmup-Id"),
        ("subject", "Subject"),
    ):
        value = msg.get(header)
        if value is not None:
            out[field] = str(value).strip()
    return out


class Recorder:
    """Keeps accepted messages (optionally) in memory and (optionally) in a JSONL file."""

    def __init__(self, path: str | os.PathLike[str] | None = None, keep: bool = True) -> None:
        self._cond = threading.Condition()
        self._records: list[dict[str, Any]] = []
        self._keep = keep
        self.count = 0
        self._file: TextIO | None = None
        if path is not None:
            self._file = open(path, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115

    def add(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            # One line per message, flushed at once so a reader never waits for a buffer.
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._file.flush()
        with self._cond:
            self.count += 1
            if self._keep:
                self._records.append(record)
            self._cond.notify_all()

    @property
    def messages(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self._records)

    def clear(self) -> None:
        with self._cond:
            self._records.clear()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Block until at least ``count`` messages are kept; return them (TimeoutError if not)."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._records) >= count, timeout):
                raise TimeoutError(
                    f"expected {count} messages within {timeout}s, got {len(self._records)}"
                )
            return list(self._records)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# --------------------------------------------------------------------------- handler


class RigHandler:
    """aiosmtpd handler: envelope checks, fault injection, recording.

    Subclasses may override ``check_rcpt`` (return an error reply or None) and
    ``deliver`` (return an error reply or None once the message is stored).
    """

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        faults: FaultTable | None = None,
        recorder: Recorder | None = None,
        fast: bool = False,
        *,
        oauth_introspection_url: str | None = None,
    ) -> None:
        self.users = {k.lower(): v for k, v in (users or {}).items()}
        self.faults = faults if faults is not None else FaultTable()
        self.recorder = recorder if recorder is not None else Recorder()
        self.fast = fast
        # None: no XOAUTH2/OAUTHBEARER (make_smtp_factory leaves them out of EHLO)
        self.oauth_introspection_url = oauth_introspection_url

    # -- AUTH (aiosmtpd "authenticator" callable, synchronous) -------------------------

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        session.rig_auth_mechanism = mechanism  # type: ignore[attr-defined]
        # handled=False + no message => aiosmtpd answers "535 5.7.8 Authentication credentials invalid".
        # A 535 fault counts once per session: clients such as aiosmtplib retry
        # with the next mechanism (PLAIN, then LOGIN), which must fail as well.
        if getattr(session, "rig_auth_faulted", False) or self.faults.take("auth", login):
            session.rig_auth_faulted = True  # type: ignore[attr-defined]
            return AuthResult(success=False, handled=False)
        if self.users:  # no table => any credentials are fine
            expected = self.users.get(login.lower())
            if expected is None or auth_data.password.decode("utf-8", "replace") != expected:
                return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=auth_data)

    # -- AUTH XOAUTH2 / OAUTHBEARER (aiosmtpd's handler ``auth_<MECH>`` hooks) ---------

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802
        return await self._oauth(server, args, "XOAUTH2")

    async def auth_OAUTHBEARER(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802
        return await self._oauth(server, args, "OAUTHBEARER")

    async def _oauth(self, server: SMTP, args: list[str], mechanism: str) -> AuthResult:
        if len(args) > 1:  # initial response on the AUTH line
            try:
                blob: bytes = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        else:
            answer = await server.challenge_auth("")
            if answer is MISSING:  # "*" or bad base64: aiosmtpd has replied
                return AuthResult(success=False, handled=True)
            assert isinstance(answer, bytes)
            blob = answer
        parsed = parse_oauth_response(mechanism, blob)
        if parsed is None:
            await server.push(f"501 5.5.2 Malformed {mechanism} initial response")
            return AuthResult(success=False, handled=True)
        user, token = parsed
        url = self.oauth_introspection_url
        assert url is not None  # the mechanisms are offered only with a URL
        # A fault refuses a good token: one count per attempt (a client that got a
        # new token and tries again should get in once the count is spent).
        good = False
        if self.faults.take("auth", user or None) is None:
            try:
                info = await asyncio.to_thread(introspect_token, url, token)
            except Exception as exc:  # noqa: BLE001 - an endpoint that fails is temporary
                reason = f"{type(exc).__name__}: {exc}"[:200]
                await server.push(f"454 4.7.0 Temporary authentication failure ({reason})")
                return AuthResult(success=False, handled=True)
            user = user or str(info.get("username") or "")
            good = bool(user) and token_allows(info, user)
        if not good:
            status = "401" if mechanism == "XOAUTH2" else "invalid_token"
            error = {"status": status, "schemes": "bearer", "scope": OAUTH_SCOPE}
            reply = await server.challenge_auth(json.dumps(error, separators=(",", ":")))
            if reply is MISSING:  # the client aborted with "*": aiosmtpd has replied
                return AuthResult(success=False, handled=True)
            return AuthResult(success=False, handled=False, message=OAUTH_REFUSED)
        server.session.rig_auth_mechanism = mechanism  # type: ignore[union-attr]
        return AuthResult(
            success=True,
            message="235 2.7.0 Accepted",
            auth_data=OAuthLogin(login=user.encode(), mechanism=mechanism),
        )

    # -- faults ---------------------------------------------------------------------

    async def _apply(self, server: SMTP, fault: Fault) -> str | None:
        """Apply a fault; returns the reply to send, or None to carry on normally."""
        if fault.mode == "stall":
            # Say nothing for a while. If the client gives up and disconnects,
            # aiosmtpd cancels this coroutine: nothing more happens.
            await asyncio.sleep(fault.seconds)
            return None
        if fault.mode == "451":
            return "451 4.3.0 Temporary failure, try again later (rig fault)"
        if fault.mode == "550":
            return "550 5.7.1 Message rejected (rig fault)"
        if fault.mode == "552":
            return "552 5.3.4 Message size exceeds fixed maximum message size (rig fault)"
        if fault.mode == "tarpit":
            # Every reply from here on (this one included) trickles out (RigSMTP.push).
            server.rig_tarpit = fault.seconds  # type: ignore[attr-defined]
            return None
        if fault.mode == "reset":
            reset_connection(server)
            await asyncio.sleep(3600)
            return None  # pragma: no cover
        if fault.mode == "421":
            # A 421 ends the session: reply ourselves, then close.
            await server.push("421 4.3.2 Service shutting down, closing channel (rig fault)")
        # "421" and "drop": close the transport (a plain FIN, no reply for "drop"),
        # then wait to be cancelled: connection_lost() cancels the handler task, so
        # aiosmtpd never tries to push a reply on the closed connection.
        if server.transport is not None:
            server.transport.close()
        await asyncio.sleep(3600)
        return None  # pragma: no cover

    # -- SMTP hooks -----------------------------------------------------------------

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        # Timestamp first: benchmarks measure send lateness from this moment.
        envelope.mail_from_at = time.time()  # type: ignore[attr-defined]
        fault = self.faults.take("mail", address)
        if fault is not None:
            reply = await self._apply(server, fault)
            if reply is not None:
                return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        fault = self.faults.take("rcpt", envelope.mail_from)
        if fault is not None:
            reply = await self._apply(server, fault)
            if reply is not None:
                return reply
        error = self.check_rcpt(address)
        if error is not None:
            return error
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data_at = time.time()
        raw = envelope.original_content or b""
        fault = self.faults.take("data", envelope.mail_from)
        if fault is not None and fault.mode not in ("stall", "tarpit"):
            reply = await self._apply(server, fault)
            assert reply is not None
            return reply
        error = await self.deliver(envelope, raw)
        if error is not None:
            return error
        self._record(session, envelope, raw, data_at)
        if fault is not None:  # stall or tarpit after DATA: stored, but the answer comes late
            await self._apply(server, fault)
        return "250 2.0.0 OK: queued"

    # -- extension points -------------------------------------------------------------

    def check_rcpt(self, address: str) -> str | None:
        return None

    async def deliver(self, envelope: Envelope, raw: bytes) -> str | None:
        return None

    def _record(self, session: Session, envelope: Envelope, raw: bytes, data_at: float) -> None:
        headers = scan_headers(raw) if self.fast else _parse_headers_full(raw)
        login = getattr(session.auth_data, "login", None)  # LoginPassword or OAuthLogin
        self.recorder.add(
            {
                "mail_from_at": getattr(envelope, "mail_from_at", data_at),
                "data_at": data_at,
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "message_id": headers.get("message_id"),
                "x_warmup_id": headers.get("x_warmup_id"),
                "subject": headers.get("subject"),
                "auth_login": login.decode("utf-8", "replace")
                if isinstance(login, bytes)
                else None,
                "auth_mechanism": getattr(session, "rig_auth_mechanism", None),
                "raw": raw.decode("utf-8", "replace"),
            }
        )


@dataclass(frozen=True)
class OAuthLogin:
    """``session.auth_data`` after a good XOAUTH2/OAUTHBEARER exchange (``login`` as
    aiosmtpd's LoginPassword has it)."""

    login: bytes
    mechanism: str


def parse_oauth_response(mechanism: str, blob: bytes) -> tuple[str, str] | None:
    """(user, token) from a client's XOAUTH2 or OAUTHBEARER response; None if malformed.

    XOAUTH2: ``user=U\x01auth=Bearer T\x01\x01``. OAUTHBEARER (RFC 7628): a GS2 header
    ``n,a=U,`` (U may be absent: then it is the token's user, "" here) followed by
    ``\x01key=value`` pairs and ``\x01\x01``."""
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError:
        return None
    user = ""
    if mechanism == "OAUTHBEARER":
        gs2, sep, text = text.partition("\x01")
        parts = gs2.split(",")
        if not sep or len(parts) < 3 or parts[0] not in ("n", "y"):
            return None
        if parts[1].startswith("a="):
            user = parts[1][2:].replace("=2C", ",").replace("=3D", "=")
    fields = dict(kv.partition("=")[::2] for kv in text.split("\x01") if kv)
    if mechanism == "XOAUTH2":
        user = fields.get("user", "")
        if not user:
            return None
    scheme, _, token = fields.get("auth", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return user, token.strip()


def introspect_token(url: str, token: str, timeout: float = 5.0) -> dict[str, Any]:
    """The RFC 7662 answer for ``token``, posted as Dovecot does (blocking: run it in a thread)."""
    import httpx2

    resp = httpx2.post(
        url, data={"token": token, "client_id": "", "client_secret": ""}, timeout=timeout
    )
    resp.raise_for_status()
    answer = resp.json()
    if not isinstance(answer, dict):
        raise ValueError(f"introspection answered {answer!r}, not a JSON object")
    return answer


def token_allows(info: Mapping[str, Any], user: str) -> bool:
    """Whether an introspection answer lets its bearer act as ``user``: a live user token
    of that user, or a live app token whose ``app_mailboxes`` hold it."""
    if info.get("active") is not True:
        return False
    who = user.lower()
    username = info.get("username")
    if isinstance(username, str) and username:
        return username.lower() == who
    mailboxes = info.get("app_mailboxes")
    return isinstance(mailboxes, list) and who in {str(m).lower() for m in mailboxes}


def reset_connection(server: SMTP) -> None:
    """Abort ``server``'s connection with a TCP RST: SO_LINGER 0, then close at once."""
    # After STARTTLS the TCP transport is the original one, under the TLS layer.
    transport: Any = getattr(server, "_original_transport", None) or server.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    app: Any = server.transport
    if app is not None and app is not transport:
        app.abort()


class RigSMTP(SMTP):
    """aiosmtpd's SMTP with the rig's session-level faults: at the greeting (a reply in
    place of the 220, a drop, a reset, a stall, a tarpit), a tarpit (every reply written
    byte by byte) and a TCP reset in the middle of DATA (``data_received`` counts the
    message's bytes). The handler's faults at the other stages work with the plain class."""

    def __init__(self, handler: RigHandler, *args: Any, **kwargs: Any) -> None:
        super().__init__(handler, *args, **kwargs)
        self.rig_faults = handler.faults
        self.rig_tarpit: float | None = None  # seconds before each byte of every reply
        self._rig_reset_after: int | None = None  # armed by a mid-DATA reset: bytes left
        self._rig_read = 0  # bytes of the message fed to the DATA loop since it was armed

    async def _handle_client(self) -> None:
        fault = self.rig_faults.take("greeting", None)
        if fault is not None:
            handler: RigHandler = self.event_handler
            reply = await handler._apply(self, fault)  # 421, drop, reset: never return
            if reply is not None:  # 451/550/552 instead of the greeting, then close
                await self.push(reply)
                if self.transport is not None:
                    self.transport.close()
                return
        await super()._handle_client()

    async def push(self, status: Any) -> None:
        delay = self.rig_tarpit
        if delay is None:
            await super().push(status)
            return
        response = status.encode("utf-8") if isinstance(status, str) else bytes(status)
        payload = response + b"\r\n"
        for i in range(len(payload)):
            await asyncio.sleep(delay)
            if self.transport is None or self.transport.is_closing():
                return  # the client gave up; connection_lost cancels the session
            self._writer.write(payload[i : i + 1])
            await self._writer.drain()

    async def smtp_DATA(self, arg: str) -> None:
        envelope = self.envelope
        if envelope is not None and envelope.rcpt_tos and not arg:
            fault = self.rig_faults.take("data_content", envelope.mail_from)
            if fault is not None:
                self._rig_reset_after = fault.after_bytes
                self._rig_read = 0
        try:
            await super().smtp_DATA(arg)
        finally:
            self._rig_reset_after = None

    def data_received(self, data: bytes) -> None:
        left = self._rig_reset_after
        if left is None:
            super().data_received(data)
            return
        # Never let the server see the final dot: cut before the end-of-data line.
        end = (b"\r\n" + data).find(b"\r\n.\r\n")
        cut = left if end < 0 else min(left, end)
        if len(data) < cut:
            self._rig_reset_after = left - len(data)
            self._rig_read += len(data)
            super().data_received(data)
            return
        self._rig_reset_after = None
        if cut:
            super().data_received(data[:cut])  # the DATA loop reads these lines first...
        with self.rig_faults._lock:
            self.rig_faults.reset_after_bytes.append(self._rig_read + cut)
        self.loop.call_soon(reset_connection, self)  # ...then the connection is reset


def make_smtp_factory(
    handler: RigHandler, *, timeout: float = 300.0, tls_context: ssl.SSLContext | None = None
) -> Any:
    """A protocol factory for ``loop.create_server``: AUTH PLAIN/LOGIN without TLS
    (with ``tls_context``: STARTTLS offered, not required), XOAUTH2/OAUTHBEARER too when
    the handler has an introspection URL."""
    oauth = handler.oauth_introspection_url is not None
    auth_required = bool(handler.users) or oauth

    def factory() -> SMTP:
        smtp = RigSMTP(
            handler,
            hostname=RIG_HOSTNAME,
            ident="warmupd-test-rig",
            decode_data=False,
            authenticator=handler.authenticate,
            auth_required=False,
            auth_require_tls=False,  # loopback only
            auth_exclude_mechanism=() if oauth else OAUTH_MECHANISMS,
            timeout=timeout,
            tls_context=tls_context,
        )
        # aiosmtpd warns (warnings.warn + log) on *every connection* built with
        # auth_required=True and auth_require_tls=False; a warnings filter does
        # not survive pytest's per-test catch_warnings. Set the flag afterwards.
        smtp._auth_required = auth_required
        return smtp

    return factory


# --------------------------------------------------------------------------- in-process


class ServerThread:
    """Runs ``loop.create_server(factory, host, port)`` on a private loop in a daemon thread.

    Unlike aiosmtpd's Controller this supports port 0 (the bound port is read back).
    """

    def __init__(
        self,
        factory: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._factory = factory
        self.host = host
        self.port = port
        self.ssl_context = ssl_context  # implicit TLS: every connection starts with a handshake
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> None:
        assert self._thread is None, "already running"
        ready = threading.Event()
        errors: list[BaseException] = []
        loop = asyncio.new_event_loop()
        self.loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                server = loop.run_until_complete(
                    loop.create_server(
                        self._factory,
                        self.host,
                        self.port,
                        reuse_address=True,
                        ssl=self.ssl_context,
                    )
                )
            except BaseException as exc:  # noqa: BLE001 - handed back to start()
                errors.append(exc)
                ready.set()
                loop.close()
                return
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.close()
                tasks = asyncio.all_tasks(loop)
                for task in tasks:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.run_until_complete(server.wait_closed())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"rig-smtp-{id(self):x}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("SMTP server thread did not start")
        if errors:
            self._thread.join()
            self._thread = None
            raise errors[0]

    def stop(self) -> None:
        if self._thread is None or self.loop is None:
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self._thread = None


def server_tls_context(
    certfile: str | os.PathLike[str],
    keyfile: str | os.PathLike[str] | None,
    faults: FaultTable,
) -> ssl.SSLContext:
    """A server context whose handshakes the "tls_fail" fault of ``faults`` aborts.

    OpenSSL calls the server-name callback on every ClientHello (``name`` is None when
    the client sent no SNI, as for an IP address); returning an alert ends the
    handshake with it."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(certfile), str(keyfile) if keyfile is not None else None)

    def on_client_hello(sslobj: Any, name: str | None, context: ssl.SSLContext) -> int | None:
        if faults.take("tls", None) is not None:
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        return None

    ctx.sni_callback = on_client_hello
    return ctx


class SMTPServer:
    """In-process SMTP server for tests.

    >>> srv = SMTPServer(users={"alice@warmup.test": "alice-pw"}).start()
    >>> srv.set_fault("451", count=2); ...; srv.wait_for(1); srv.stop()

    ``tls="starttls"`` offers STARTTLS, ``tls="implicit"`` speaks TLS from the first
    byte (port 465 style), both with ``certfile``/``keyfile`` (PEM; the certificate
    file may hold the chain). The "tls_fail" fault aborts their handshakes.
    ``oauth_introspection_url`` offers AUTH XOAUTH2 and OAUTHBEARER (module docstring);
    ``srv.reject_token(user)`` refuses that user's next good token once.
    """

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        record_path: str | os.PathLike[str] | None = None,
        fast: bool = False,
        handler: RigHandler | None = None,
        tls: str | None = None,
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
        oauth_introspection_url: str | None = None,
    ) -> None:
        self.recorder = Recorder(record_path)
        self.faults = FaultTable()
        if handler is None:
            handler = RigHandler(
                users,
                self.faults,
                self.recorder,
                fast=fast,
                oauth_introspection_url=oauth_introspection_url,
            )
        else:
            handler.faults, handler.recorder = self.faults, self.recorder
            if oauth_introspection_url is not None:
                handler.oauth_introspection_url = oauth_introspection_url
        self.handler = handler
        self.users = dict(handler.users)
        self.tls = tls
        context = None
        if tls is not None:
            if tls not in ("starttls", "implicit"):
                raise ValueError(f"tls must be 'starttls' or 'implicit', got {tls!r}")
            if certfile is None:
                raise ValueError("a TLS server needs certfile (and keyfile)")
            context = server_tls_context(certfile, keyfile, self.faults)
        self.tls_context = context
        self._thread = ServerThread(
            make_smtp_factory(handler, tls_context=context if tls == "starttls" else None),
            host,
            port,
            ssl_context=context if tls == "implicit" else None,
        )

    @property
    def host(self) -> str:
        return self._thread.host

    @property
    def port(self) -> int:
        return self._thread.port

    def start(self) -> SMTPServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()
        self.recorder.close()

    def __enter__(self) -> SMTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # recording
    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.recorder.messages

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        return self.recorder.wait_for(count, timeout)

    def clear(self) -> None:
        self.recorder.clear()

    # faults
    def set_fault(
        self,
        mode: str,
        count: int | None = None,
        sender: str | None = None,
        seconds: float | None = None,
        at: str | None = None,
        after_bytes: int | None = None,
    ) -> Fault:
        return self.faults.set(
            mode, count=count, sender=sender, seconds=seconds, at=at, after_bytes=after_bytes
        )

    def reject_token(self, user: str, times: int = 1) -> Fault:
        """Refuse ``user``'s next ``times`` AUTH attempts, good token or not."""
        return self.faults.reject_token(user, times)

    def reset(self) -> None:
        """Clear all faults (recorded messages are kept; see clear())."""
        self.faults.reset()

    @property
    def faults_fired(self) -> int:
        return self.faults.fired


# --------------------------------------------------------------------------- control port


def control(
    port: int, command: Mapping[str, Any], host: str = "127.0.0.1", timeout: float = 5.0
) -> dict[str, Any]:
    """Send one JSON command line to a subprocess server's control port; return its reply."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(json.dumps(dict(command)).encode() + b"\n")
        with sock.makefile("rb") as f:
            line = f.readline()
    if not line:
        raise ConnectionError("control port closed without a reply")
    reply: dict[str, Any] = json.loads(line)
    if not reply.get("ok"):
        raise RuntimeError(f"control command {dict(command)!r} failed: {reply.get('error')}")
    return reply


def remote_set_fault(
    port: int,
    mode: str,
    count: int | None = None,
    sender: str | None = None,
    seconds: float | None = None,
    at: str | None = None,
    after_bytes: int | None = None,
) -> dict[str, Any]:
    cmd: dict[str, Any] = {"fault": mode, "count": count, "sender": sender, "seconds": seconds}
    if at is not None:
        cmd["at"] = at
    if after_bytes is not None:
        cmd["after_bytes"] = after_bytes
    return control(port, cmd)


def remote_reset(port: int) -> dict[str, Any]:
    return control(port, {"reset": True})


def remote_stats(port: int) -> dict[str, Any]:
    """``{"ok": true, "accepted": N, "faults_fired": N, "faults": [...]}``"""
    return control(port, {"stats": True})


async def _serve_control(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: RigHandler
) -> None:
    try:
        while line := await reader.readline():
            try:
                cmd = json.loads(line)
                if "fault" in cmd:
                    handler.faults.set(
                        cmd["fault"],
                        count=cmd.get("count"),
                        sender=cmd.get("sender"),
                        seconds=cmd.get("seconds"),
                        at=cmd.get("at"),
                        after_bytes=cmd.get("after_bytes"),
                    )
                    reply: dict[str, Any] = {"ok": True}
                elif cmd.get("reset"):
                    handler.faults.reset()
                    reply = {"ok": True}
                elif cmd.get("stats") or cmd.get("ping"):
                    reply = {
                        "ok": True,
                        "accepted": handler.recorder.count,
                        "faults_fired": handler.faults.fired,
                        "faults": [asdict(f) for f in handler.faults.active()],
                    }
                else:
                    reply = {"ok": False, "error": f"unknown command {cmd!r}"}
            except (ValueError, TypeError, KeyError) as exc:
                reply = {"ok": False, "error": str(exc)}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


# --------------------------------------------------------------------------- subprocess


def parse_users(spec: str | None) -> dict[str, str]:
    """``"alice@x:pw,bob@x:pw2"`` -> dict (the password may contain ':', not ',')."""
    users: dict[str, str] = {}
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        user, sep, password = item.partition(":")
        if not sep:
            raise ValueError(f"bad user spec {item!r}: expected user:password")
        users[user] = password
    return users


async def _amain(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    recorder = Recorder(args.record, keep=False)  # the file is the record here
    handler = RigHandler(
        parse_users(args.users),
        FaultTable(),
        recorder,
        fast=args.fast,
        oauth_introspection_url=args.oauth_introspection_url,
    )
    smtp = await loop.create_server(
        make_smtp_factory(handler), args.host, args.port, reuse_address=True
    )
    ctl = None
    ctl_port = 0
    if args.control_port is not None:
        ctl = await asyncio.start_server(
            lambda r, w: _serve_control(r, w, handler), "127.0.0.1", args.control_port
        )
        ctl_port = ctl.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = smtp.sockets[0].getsockname()[1]
    # The one line SMTPServerProcess waits for (ports are useful when 0 was asked).
    print(f"READY smtp_port={port} control_port={ctl_port}", flush=True)
    await stop.wait()
    smtp.close()
    if ctl is not None:
        ctl.close()
    recorder.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.rig.smtp_server", description=__doc__.split("\n")[0]
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--port", type=int, default=0, help="0 picks a free port (printed in READY line)"
    )
    p.add_argument("--users", default="", help="user:password,... (empty: no AUTH required)")
    p.add_argument("--record", default=None, help="append one JSON line per accepted message")
    p.add_argument("--control-port", type=int, default=None, help="JSON control port (0: pick)")
    p.add_argument("--fast", action="store_true", help="quick header scan instead of email parser")
    p.add_argument(
        "--oauth-introspection-url",
        default=None,
        help="offer AUTH XOAUTH2/OAUTHBEARER, checking tokens at this RFC 7662 endpoint",
    )
    args = p.parse_args(argv)
    try:
        import uvloop  # type: ignore[import-not-found]

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    asyncio.run(_amain(args))
    return 0


class SMTPServerProcess:
    """Spawns ``python -m tests.rig.smtp_server`` and drives it over its control port.

    >>> with SMTPServerProcess(users={...}, record=tmp / "rec.jsonl") as srv:
    ...     srv.port, srv.control_port; srv.set_fault("451", count=2); srv.records()
    """

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        *,
        record: str | os.PathLike[str] | None = None,
        fast: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        control_port: int = 0,
        python: str = sys.executable,
        oauth_introspection_url: str | None = None,
    ) -> None:
        self.users = dict(users or {})
        self.oauth_introspection_url = oauth_introspection_url
        self.record = Path(record) if record is not None else None
        self.fast = fast
        self.host = host
        self.port = port
        self.control_port = control_port
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> SMTPServerProcess:
        cmd = [
            self.python, "-m", "tests.rig.smtp_server",
            "--host", self.host, "--port", str(self.port),
            "--control-port", str(self.control_port),
        ]  # fmt: skip
        if self.users:
            cmd += ["--users", ",".join(f"{u}:{p}" for u, p in self.users.items())]
        if self.record is not None:
            cmd += ["--record", str(self.record)]
        if self.fast:
            cmd.append("--fast")
        if self.oauth_introspection_url is not None:
            cmd += ["--oauth-introspection-url", self.oauth_introspection_url]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, cwd=REPO_ROOT)
        assert self.proc.stdout is not None
        line = _readline_with_timeout(self.proc.stdout, timeout)
        if not line.startswith(b"READY"):
            self.stop()
            raise RuntimeError(f"smtp_server subprocess did not start (got {line!r})")
        fields = dict(kv.split("=") for kv in line.decode().split()[1:])
        self.port = int(fields["smtp_port"])
        self.control_port = int(fields["control_port"])
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> SMTPServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_fault(
        self,
        mode: str,
        count: int | None = None,
        sender: str | None = None,
        seconds: float | None = None,
        at: str | None = None,
        after_bytes: int | None = None,
    ) -> dict[str, Any]:
        return remote_set_fault(self.control_port, mode, count, sender, seconds, at, after_bytes)

    def reject_token(self, user: str, times: int = 1) -> dict[str, Any]:
        """Refuse ``user``'s next ``times`` AUTH attempts, good token or not."""
        return self.set_fault("535", count=times, sender=user)

    def reset(self) -> dict[str, Any]:
        return remote_reset(self.control_port)

    def stats(self) -> dict[str, Any]:
        return remote_stats(self.control_port)

    def records(self) -> list[dict[str, Any]]:
        """Parse the record file (complete lines only)."""
        if self.record is None or not self.record.exists():
            return []
        return list(_iter_jsonl(self.record))


def _iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n"):
                yield json.loads(line)


def _readline_with_timeout(stream: IO[bytes], timeout: float) -> bytes:
    result: list[bytes] = []
    t = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else b""


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
