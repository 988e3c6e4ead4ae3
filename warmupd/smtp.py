"""Build a warmup message, send it over SMTP, classify the outcome.

The session is opened ahead of the planned instant (connect, EHLO, STARTTLS,
AUTH) and MAIL FROM is issued at the instant itself, so the server sees the
send at its jittered moment and not a connection set-up later.

Outcome rules (the state machine in daemon.py acts on them):

* no reply yet, or a 4xx reply, a refused/reset connection or a timeout
  before the DATA mark: the message cannot have been delivered -> RETRY;
* a 5xx reply at any step -> FAILED (535 at AUTH also pauses the account);
* ``auth = "oauth"``: AUTH XOAUTH2 (OAUTHBEARER where only that is offered) with the
  current access token; a rejected token is refreshed once and tried again at once,
  a second rejection is a 535 as above; no token to be had -> RETRY (the token
  endpoint is down) or FAILED (the grant was refused; oauth.py pauses the account);
* a 4xx/5xx reply to the end of DATA: the server answered, so it did not
  take the message -> RETRY / FAILED;
* a timeout or a dropped connection after the DATA mark: the server may
  have the message -> UNCERTAIN, never resent automatically.
"""

from __future__ import annotations

import asyncio
import enum
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, formataddr

import aiosmtplib

from .calendar import zone
from .config import Account, Server, name_from_address
from .oauth import TokenError, oauthbearer, xoauth2
from .templates import compose

# Gives a valid access token; called again with the token the server rejected.
TokenSource = Callable[[str | None], Awaitable[str]]


class Outcome(enum.Enum):
    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"
    UNCERTAIN = "uncertain"
    MISSED = "missed"  # the session was ready only after the latest moment: nothing was sent


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    reply: str  # the server's reply, or what went wrong, one line
    code: int | None = None
    auth_failed: bool = False
    mail_from_at: float | None = None  # when MAIL FROM was written


def build_message(account: Account, recipient: str, message_id: str, send_id: int, at: float,
                  rng: random.Random, *, subject: str | None = None, body: str | None = None,
                  in_reply_to: str | None = None, references: str | None = None,
                  recipient_name: str | None = None) -> bytes:
    """The RFC 5322 message: plain text, no links, no images, no tracking. From and To
    carry display names (``recipient_name``, else one derived from the address)."""
    to_name = recipient_name or name_from_address(recipient)
    if subject is None or body is None:
        subject, body = compose(rng, account.email, recipient, account.templates,
                                sender_name=account.display_name, recipient_name=to_name)
    if account.tag and not subject.startswith(account.tag):
        subject = f"{account.tag} {subject}"
    date = format_datetime(datetime.fromtimestamp(at, zone(account.timezone)))
    headers = [("From", formataddr((account.display_name, account.email))),
               ("To", formataddr((to_name, recipient))), ("Subject", subject),
               # The Date a person's mail client would write: the sender's local time.
               ("Date", date), ("Message-ID", message_id)]
    if in_reply_to:
        headers += [("In-Reply-To", in_reply_to), ("References", references or in_reply_to)]
    headers.append(("X-Warmup-Id", str(send_id)))
    return _render(headers, body)


def _render(headers: list[tuple[str, str]], body: str) -> bytes:
    """Write the message directly: the email package's header machinery costs
    about half a millisecond a message, more than the whole SMTP exchange.
    Anything outside plain short ASCII takes the email package's path."""
    text = body.replace("\r\n", "\n").replace("\r", "\n")
    simple = (text.isascii() and all(len(line) <= 998 for line in text.split("\n"))
              and all(v.isascii() and "\n" not in v and "\r" not in v and len(k) + len(v) < 78
                      for k, v in headers))
    if not simple:
        msg = EmailMessage(policy=SMTP_POLICY)
        for k, v in headers:
            msg[k] = " ".join(v.split())
        msg.set_content(body)
        return msg.as_bytes()
    lines = [f"{k}: {v}" for k, v in headers]
    lines += ['Content-Type: text/plain; charset="utf-8"', "Content-Transfer-Encoding: 7bit",
              "MIME-Version: 1.0", ""]
    if not text.endswith("\n"):
        text += "\n"
    return ("\r\n".join(lines) + "\r\n" + text.replace("\n", "\r\n")).encode("ascii")


def _cert_error(e: BaseException | None) -> ssl.SSLCertVerificationError | None:
    """The certificate failure behind ``e`` (aiosmtplib wraps it for implicit TLS)."""
    for _ in range(5):
        if e is None or isinstance(e, ssl.SSLCertVerificationError):
            return e
        e = e.__cause__ or e.__context__
    return None


_NAME_MISMATCH = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH / X509_V_ERR_IP_ADDRESS_MISMATCH


def _cert_hint(server: Server, cert: ssl.SSLCertVerificationError) -> str:
    """What the operator can do about a certificate that was not trusted."""
    if cert.verify_code in _NAME_MISMATCH:
        return "; the certificate is for another name: set host to a name it covers"
    if server.ca_file is not None:
        return f"; it is not signed by the CA in ca_file {server.ca_file}"
    return "; for a private CA set ca_file in the smtp table"


def _describe(e: BaseException) -> str:
    """One line for a connection error, with its cause when aiosmtplib's own text is
    empty or ends in a colon (a TLS handshake reset says nothing by itself)."""
    text = " ".join(str(e).split())
    what = f"{type(e).__name__}: {text}" if text else type(e).__name__
    cause = e.__cause__
    if cause is not None and (not text or text.endswith(":")):
        what += f" {_describe(cause)}"
    return what


def _reply_text(code: int | None, message: str) -> str:
    text = " ".join(str(message).split())
    return f"{code} {text}" if code else text


async def _sleep_until(at: float, now: Callable[[], float]) -> None:
    # Never early: the loop's timers may round down by up to a millisecond.
    while True:
        delay = at - now()
        if delay <= 0:
            return
        await asyncio.sleep(delay if delay > 0.002 else 0.0005)


async def _oauth_login(client: aiosmtplib.SMTP, server: Server, token: str,
                       tokens: TokenSource) -> None:
    """AUTH with an access token; a rejected token is replaced once (raises
    SMTPAuthenticationError on a second rejection, TokenError without a token)."""
    if client.is_ehlo_or_helo_needed:
        await client.ehlo()
    methods = {m.lower() for m in client.server_auth_methods}
    if "xoauth2" in methods:
        mech = b"XOAUTH2"
    elif "oauthbearer" in methods:
        mech = b"OAUTHBEARER"
    else:
        offered = " ".join(sorted(methods)).upper() or "no AUTH"
        raise aiosmtplib.SMTPAuthenticationError(
            535, f"{server.host} offers neither XOAUTH2 nor OAUTHBEARER (it offers {offered}): "
                 'set auth = "password" or use the provider\'s OAuth SMTP host')
    for attempt in (1, 2):
        initial = (xoauth2(server.username, token) if mech == b"XOAUTH2"
                   else oauthbearer(server.username, token, server.host, server.port))
        resp = await client.execute_command(b"AUTH", mech, initial.encode("ascii"))
        if resp.code == 334:
            # The rejection comes as a challenge with a JSON error; an empty line ends it.
            resp = await client.execute_command(b"")
        if resp.code == 235:
            return
        if not (500 <= resp.code < 600) or attempt == 2:
            raise aiosmtplib.SMTPAuthenticationError(resp.code, resp.message)
        token = await tokens(token)


_local_hostname: list[str] = []  # this host's EHLO name, once looked up


async def local_hostname() -> str:
    """The name this host gives in EHLO: ``socket.getfqdn()``, as aiosmtplib would use,
    but looked up once per process (in a thread) instead of once per session: aiosmtplib
    starts a thread and a reverse lookup for every connection without it, thousands a
    minute at a large pool, each one CPU taken from the event loop."""
    if not _local_hostname:
        _local_hostname.append(await asyncio.to_thread(socket.getfqdn))
    return _local_hostname[0]


async def deliver(server: Server, sender: str, recipient: str, message: bytes, *, at: float,
                  on_data_mark: Callable[[], Awaitable[None]],
                  now: Callable[[], float] = time.time,
                  tls_context: ssl.SSLContext | None = None, latest: float | None = None,
                  tokens: TokenSource | None = None) -> Result:
    """One SMTP transaction; MAIL FROM at ``at``, and not after ``latest``: a session
    that becomes ready only later (a slow server, the process stopped meanwhile) is
    closed without sending (``Outcome.MISSED``). ``tokens`` serves ``auth = "oauth"``
    servers. Never raises for mail errors."""
    token: str | None = None
    if server.auth == "oauth":
        if tokens is None:
            return Result(Outcome.FAILED, "OAuth server but no token source (a wiring bug)")
        try:
            # Refreshed in the background ahead of expiry: normally no wait at all.
            token = await tokens(None)
        except TokenError as e:
            return Result(Outcome.FAILED if e.refused else Outcome.RETRY, str(e))
    client = aiosmtplib.SMTP(
        hostname=server.host, port=server.port, timeout=server.timeout, local_hostname=await local_hostname(),
        use_tls=server.security == "tls",
        start_tls=True if server.security == "starttls" else False,
        tls_context=tls_context or (server.tls_context() if server.security != "none" else None),
    )
    marked = False
    mail_from_at: float | None = None
    try:
        await client.connect()
        if token is not None and tokens is not None:
            await _oauth_login(client, server, token, tokens)
        elif server.password is not None:
            await client.login(server.username, server.password.reveal())
        await _sleep_until(at, now)
        mail_from_at = now()
        if latest is not None and mail_from_at > latest:
            client.close()
            late = mail_from_at - at
            return Result(Outcome.MISSED, f"missed: the session was ready {late:.1f} s after the send's moment")
        await client.mail(sender)
        await client.rcpt(recipient)
        # The DATA mark: from here on the server may end up with the message.
        await on_data_mark()
        marked = True
        code, text = await client.data(message)
        try:
            await client.quit(timeout=min(5.0, server.timeout))
        except Exception:  # the message is in; a failed QUIT changes nothing
            client.close()
        return Result(Outcome.SENT, _reply_text(code, text), code, mail_from_at=mail_from_at)
    except aiosmtplib.SMTPAuthenticationError as e:
        client.close()
        outcome = Outcome.RETRY if 400 <= e.code < 500 else Outcome.FAILED
        return Result(outcome, _reply_text(e.code, e.message), e.code,
                      auth_failed=e.code == 535 or (500 <= e.code < 600), mail_from_at=mail_from_at)
    except aiosmtplib.SMTPResponseException as e:
        client.close()
        outcome = Outcome.RETRY if 400 <= e.code < 500 else Outcome.FAILED
        return Result(outcome, _reply_text(e.code, e.message), e.code, mail_from_at=mail_from_at)
    except (TimeoutError, aiosmtplib.SMTPException, OSError) as e:
        client.close()
        cert = _cert_error(e)
        if cert is not None:
            # Not a passing fault: every retry would fail alike until the operator acts.
            return Result(Outcome.FAILED, f"TLS certificate of {server.host}:{server.port} not trusted "
                          f"({cert.verify_message}){_cert_hint(server, cert)}")
        what = _reply_text(None, _describe(e))
        if marked:
            return Result(Outcome.UNCERTAIN, f"after DATA: {what}", mail_from_at=mail_from_at)
        return Result(Outcome.RETRY, what, mail_from_at=mail_from_at)
    except TokenError as e:  # a rejected token, and no other to be had
        client.close()
        return Result(Outcome.FAILED if e.refused else Outcome.RETRY, str(e), mail_from_at=mail_from_at)
    except asyncio.CancelledError:
        client.close()
        raise
