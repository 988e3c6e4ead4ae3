"""SMTP servers that misbehave: the real daemon against real aiosmtpd servers told to.

One daemon run (a module fixture) holds every scenario at once. Each faulty account
sends through its own misbehaving server (tests/rig/smtp_server.py, in-process), while
two healthy accounts send through a healthy server in its own process every 0.25 s
over the whole time the faults happen. The tests then check, for each fault, that its
rows end in the state the state machine says (README "State machine", warmupd/smtp.py),
with the reason recorded; that no Message-ID arrived twice anywhere; and that every
healthy send's MAIL FROM reached its server no more than 50 ms after its planned
instant.

Faults (one server each, fault for every session unless "once"):

=================  =====================================================  ===========
account            the server                                             final state
=================  =====================================================  ===========
greet421-once      421 instead of the 220 greeting, once                  sent (2nd)
greet421           421 instead of the greeting, always                    skipped
rcpt451-once       451 to RCPT TO, once                                   sent (2nd)
rcpt451            451 to RCPT TO, always                                 skipped
data552            552 to the end of DATA                                 failed
auth535            535 to AUTH                                            failed, paused
data-reset         TCP RST after 100 bytes of the message were read       uncertain
dot-stall          takes the final dot, never answers (1 h stall)         uncertain
tarpit             every reply one byte a second, from the greeting on    skipped
tarpit-data        the reply to the final dot one byte a second           uncertain
tls-fail           implicit TLS, handshake aborted with an alert          skipped
tls-on-plain       a plaintext server behind ``security = "tls"``         skipped
wrong-name-stls    STARTTLS, private CA's cert for another host name      failed
wrong-name-tls     implicit TLS, the same certificate                     failed
tls-good           implicit TLS, the CA's cert for localhost (control)    sent
=================  =====================================================  ===========

"skipped" is "gave up after 3 attempts" (max_attempts = 3, retries 1 s x 2^n apart).
``pytest --long`` gives every faulty account 4 sends 15 s apart (a "once" fault is
set again 3 s before each), and the healthy accounts a minute of sends, instead of one.
The tests named ``test_rig_*`` check the new rig modes themselves with aiosmtplib.
"""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import signal
import sqlite3
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from tests.daemon_helpers import (
    ALL_WEEKDAYS,
    FINAL,
    DaemonProc,
    Seeded,
    account_row,
    all_final,
    db_path,
    seed_plan,
    send_rows,
    skip_near_midnight,
    utc_today,
    wait_rows,
    window_covering_now,
)
from tests.rig.fixtures import RIG_USERS
from tests.rig.smtp_server import SMTPServer, SMTPServerProcess

HEALTHY = ("alice@warmup.test", "bob@warmup.test")
LATE_MAX = 0.050  # a healthy send's MAIL FROM at most this long after its instant
DOMAIN = "faulty.test"
GAVE_UP = "gave up after 3 attempts: "
NOT_TRUSTED = "TLS certificate of localhost:"
MISMATCH = "Hostname mismatch, certificate is not valid for 'localhost'"


@dataclass(frozen=True)
class Scenario:
    name: str  # the account is name@faulty.test, on a server of its own
    faults: tuple[tuple[str, dict[str, Any]], ...]  # set_fault(mode, **kw) on that server
    status: str  # the final status of each of its sends
    texts: tuple[str, ...]  # in the reason (skipped) or last_error (failed, uncertain)
    attempts: int
    arrivals: int  # how many times each of its Message-IDs reaches the server
    data_mark: int
    retry_text: str | None = None  # in the last_error of every "send pending" of it
    fired_per_send: int | None = None  # faults the server fired for each send
    once: bool = False  # the fault fires once per send (count=1, set again before each)
    followers: int = 0  # more sends right after the first one (1 s apart)
    # when set, every send after the first ends so (535: the account is paused)
    follower_status: str | None = None
    server: dict[str, Any] = field(default_factory=dict)  # SMTPServer(tls=..., cert=...)
    security: str = "none"
    host: str = "127.0.0.1"
    ca_file: bool = False
    timeout: str = "2s"

    @property
    def email(self) -> str:
        return f"{self.name}@{DOMAIN}"


SCENARIOS = (
    Scenario("greet421-once", (("421", {"at": "greeting"}),), "sent", (), 2, 1, 1,
             retry_text="421 4.3.2", fired_per_send=1, once=True),
    Scenario("greet421", (("421", {"at": "greeting"}),), "skipped", (GAVE_UP, "421 4.3.2"),
             3, 0, 0, retry_text="421 4.3.2", fired_per_send=3),
    Scenario("rcpt451-once", (("451", {"at": "rcpt"}),), "sent", (), 2, 1, 1,
             retry_text="451 4.3.0", fired_per_send=1, once=True),
    Scenario("rcpt451", (("451", {"at": "rcpt"}),), "skipped", (GAVE_UP, "451 4.3.0"), 3, 0, 0,
             retry_text="451 4.3.0", fired_per_send=3),
    Scenario("data552", (("552", {"at": "data"}),), "failed", ("552 5.3.4",), 1, 0, 1,
             fired_per_send=1, followers=1),
    Scenario("auth535", (("535", {}),), "failed", ("535",), 1, 0, 0, followers=2,
             follower_status="skipped"),
    Scenario("data-reset", (("reset", {"at": "data", "after_bytes": 100}),), "uncertain",
             ("after DATA: ", "SMTPServerDisconnected"), 1, 0, 1, fired_per_send=1),
    Scenario("dot-stall", (("stall_after", {"seconds": 3600}),), "uncertain",
             ("after DATA: ", "Timed out"), 1, 1, 1, fired_per_send=1),
    Scenario("tarpit", (("tarpit", {"seconds": 1.0}),), "skipped",
             (GAVE_UP, "SMTPConnectTimeoutError"), 3, 0, 0, retry_text="Timed out",
             fired_per_send=3),
    Scenario("tarpit-data", (("tarpit", {"at": "data", "seconds": 1.0}),), "uncertain",
             ("after DATA: ", "Timed out"), 1, 1, 1, fired_per_send=1),
    Scenario("tls-fail", (("tls_fail", {}),), "skipped", (GAVE_UP, "SMTPConnectError"), 3, 0, 0,
             retry_text="SMTPConnectError", fired_per_send=3,
             server={"tls": "implicit", "cert": "good"}, security="tls", host="localhost",
             ca_file=True),
    Scenario("tls-on-plain", (), "skipped", (GAVE_UP, "WRONG_VERSION_NUMBER"), 3, 0, 0,
             retry_text="WRONG_VERSION_NUMBER", security="tls", host="localhost", ca_file=True),
    Scenario("wrong-name-stls", (), "failed", (NOT_TRUSTED, MISMATCH), 1, 0, 0,
             server={"tls": "starttls", "cert": "wrong"}, security="starttls",
             host="localhost", ca_file=True),
    Scenario("wrong-name-tls", (), "failed", (NOT_TRUSTED, MISMATCH), 1, 0, 0,
             server={"tls": "implicit", "cert": "wrong"}, security="tls", host="localhost",
             ca_file=True),
    Scenario("tls-good", (), "sent", (), 1, 1, 1, server={"tls": "implicit", "cert": "good"},
             security="tls", host="localhost", ca_file=True),
)
BY_NAME = {s.name: s for s in SCENARIOS}


# ---------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Certs:
    ca: Path
    good: tuple[Path, Path]  # localhost / 127.0.0.1
    wrong: tuple[Path, Path]  # mail.elsewhere.test only


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certs(d: Path) -> Certs:
    """A private CA and two server certificates it signed: one for localhost, one whose
    only name (SAN) is another host."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"), "-subj", "/CN=warmupd rig CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    out = {}
    for name, san in (("good", "DNS:localhost,IP:127.0.0.1"), ("wrong", "DNS:mail.elsewhere.test")):
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
                                       "extendedKeyUsage=serverAuth\n")
        cn = san.split(",")[0].removeprefix("DNS:")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / f"{name}.key"),
                 "-out", str(d / f"{name}.csr"), "-subj", f"/CN={cn}")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"),
                 "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
                 "-out", str(d / f"{name}.pem"), "-extfile", str(d / f"{name}.ext"))
        out[name] = (d / f"{name}.pem", d / f"{name}.key")
    return Certs(d / "ca.pem", out["good"], out["wrong"])


# ---------------------------------------------------------------- the config


@dataclass(frozen=True)
class AccountCfg:
    email: str
    password: str
    port: int
    host: str = "127.0.0.1"
    security: str = "none"
    ca_file: Path | None = None
    timeout: str = "10s"


def write_config(tmp: Path, sock_dir: Path, accounts: list[AccountCfg]) -> Path:
    """tests/daemon_helpers.write_config's file, with a host, security and ca_file per
    account (and accounts outside the rig's three). The accounts start far in the future:
    only the seeded sends go out."""
    start = utc_today().replace(year=utc_today().year + 1)
    lines = [
        "[daemon]", 'state_dir = "state"', f"socket = {json.dumps(str(sock_dir / 'w.sock'))}",
        'grace = "30s"', 'log_format = "json"', 'log_level = "info"', 'shutdown_timeout = "15s"',
        "", "[defaults]", 'timezone = "UTC"', f"weekdays = {json.dumps(ALL_WEEKDAYS)}",
        'jitter = "1s"', 'micro_jitter = "0s"', 'min_gap = "2s"', "max_attempts = 3", "",
        "[defaults.periods]", f'peak = {{ windows = ["{window_covering_now()}"], weight = 1.0 }}',
        "", "[defaults.ramp]", "start = 2", "step = 2", "max = 40", "",
    ]
    for a in accounts:
        pw = tmp / f"{a.email.split('@')[0]}.pw"
        pw.write_text(a.password + "\n")
        pw.chmod(0o600)
        ca = f", ca_file = {json.dumps(str(a.ca_file))}" if a.ca_file else ""
        lines += ["[[accounts]]", f'email = "{a.email}"', f'start_date = "{start.isoformat()}"',
                  f'smtp = {{ host = "{a.host}", port = {a.port}, security = "{a.security}", '
                  f'username = "{a.email}", password_file = "{pw.name}", '
                  f'timeout = "{a.timeout}"{ca} }}', ""]
    path = tmp / "config.toml"
    path.write_text("\n".join(lines))
    return path


# ---------------------------------------------------------------- the run


@dataclass
class Run:
    tmp: Path
    long: bool
    seeded: list[Seeded]
    rows: dict[int, dict[str, Any]]
    daemon: DaemonProc
    rc: int
    servers: dict[str, SMTPServer]  # by scenario name
    healthy_messages: list[dict[str, Any]]
    fault_span: tuple[float, float]  # first and last state change of a faulty send
    elapsed: float

    def of(self, email: str) -> list[dict[str, Any]]:
        return sorted((r for r in self.rows.values() if r["account"] == email),
                      key=lambda r: (r["at_ms"], r["id"]))

    def all_messages(self) -> list[dict[str, Any]]:
        out = list(self.healthy_messages)
        for srv in self.servers.values():
            out += srv.messages
        return out

    def arrivals(self, message_id: str) -> int:
        return sum(1 for m in self.all_messages() if m["message_id"] == message_id)


def _fault_span(tmp: Path, emails: list[str]) -> tuple[float, float]:
    con = sqlite3.connect(f"file:{db_path(tmp)}?mode=ro", uri=True, timeout=5)
    try:
        lo, hi = con.execute(
            f"SELECT min(at_ms), max(at_ms) FROM events WHERE send_id IS NOT NULL AND account IN "
            f"({','.join('?' * len(emails))})", emails).fetchone()
    finally:
        con.close()
    return lo / 1000, hi / 1000


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        certs: Certs) -> Iterator[Run]:
    long = bool(request.config.getoption("--long"))
    per_account = 4 if long else 1  # sends of each faulty account, SPACING apart
    spacing = 15.0  # longer than a send's whole retry cycle (3 x 2 s timeout + backoff)
    healthy_for = 62.0 if long else 14.0  # seconds of healthy sends, from t0
    skip_near_midnight(healthy_for + 240)
    tmp = tmp_path_factory.mktemp("smtp-faults")
    sock_dir = Path(tempfile.mkdtemp(prefix="wd-", dir="/tmp"))  # sun_path holds 107 bytes
    servers: dict[str, SMTPServer] = {}
    timers: list[threading.Timer] = []
    healthy = SMTPServerProcess(users={e: RIG_USERS[e] for e in HEALTHY}, record=tmp / "h.jsonl")
    d: DaemonProc | None = None
    try:
        healthy.start()
        accounts = [AccountCfg(e, RIG_USERS[e], healthy.port) for e in HEALTHY]
        for s in SCENARIOS:
            password = f"{s.name}-pw"
            kw: dict[str, Any] = {}
            if s.server:
                cert, key = getattr(certs, s.server["cert"])
                kw = {"tls": s.server["tls"], "certfile": cert, "keyfile": key}
            srv = servers[s.name] = SMTPServer(users={s.email: password}, **kw).start()
            for mode, fault in s.faults:
                srv.set_fault(mode, count=1 if s.once else None, **fault)
            accounts.append(AccountCfg(s.email, password, srv.port, s.host, s.security,
                                       certs.ca if s.ca_file else None, s.timeout))
        cfg = write_config(tmp, sock_dir, accounts)

        t0 = time.time() + 4.0  # the daemon is ready within about 1.5 s
        plan: dict[str, list[float]] = {e: [] for e in HEALTHY}
        for j in range(int(healthy_for / 0.25)):  # alternately, each account every 0.5 s
            plan[HEALTHY[j % 2]].append(t0 + 0.25 * j)
        for i, s in enumerate(SCENARIOS):
            first = t0 + 0.5 + 0.1 * i  # some on the healthy sends' own instants
            plan[s.email] = [first + spacing * k for k in range(per_account)]
            plan[s.email] += [first + 1.0 + k for k in range(s.followers)]
        seeded = seed_plan(tmp, plan)
        for s in SCENARIOS:  # a "once" fault again for each later send, 3 s before it
            for at in plan[s.email][1:per_account] if s.once else ():
                (mode, fault), = s.faults
                timer = threading.Timer(at - 3.0 - time.time(), functools.partial(
                    servers[s.name].set_fault, mode, count=1, **fault))
                timers.append(timer)
                timer.start()

        started = time.time()
        d = DaemonProc(cfg, tmp).start()
        ready = time.time()
        assert ready < t0 - 1.2, f"warmupd took {ready - started:.1f} s to be ready"
        last = max(t for ts in plan.values() for t in ts)
        wait_rows(tmp, all_final, last - time.time() + 30, "every send to reach a final status")
        time.sleep(0.5)
        d.send_signal(signal.SIGTERM)
        rc = d.wait(30)
        rows = {r["id"]: r for r in send_rows(tmp)}
        span = _fault_span(tmp, [s.email for s in SCENARIOS])
        yield Run(tmp, long, seeded, rows, d, rc, servers, healthy.records(), span,
                  time.time() - started)
    finally:
        for timer in timers:
            timer.cancel()
        if d is not None:
            d.close()
        for srv in servers.values():
            srv.stop()
        healthy.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


# ---------------------------------------------------------------- the new rig modes themselves

BODY = b"".join(b"line %03d of a message long enough to arrive in pieces\r\n" % i for i in range(40))
MESSAGE = b"From: a@x.test\r\nTo: b@x.test\r\nMessage-ID: <rig@x.test>\r\nSubject: s\r\n\r\n" + BODY


async def _session(port: int, *, host: str = "127.0.0.1", timeout: float = 3.0,
                   tls: str | None = None, ca: Path | None = None) -> BaseException | None:
    """One whole SMTP transaction; the exception it ended with, or None."""
    client = aiosmtplib.SMTP(
        hostname=host, port=port, timeout=timeout, use_tls=tls == "implicit",
        start_tls=tls == "starttls",
        tls_context=ssl.create_default_context(cafile=str(ca)) if ca else None)
    try:
        await client.connect()
        await client.mail("a@x.test")
        await client.rcpt("b@x.test")
        await client.data(MESSAGE)
        await client.quit()
        return None
    except (aiosmtplib.SMTPException, OSError) as e:
        client.close()
        return e


def _causes(e: BaseException | None) -> list[BaseException]:
    out = []
    while e is not None and len(out) < 6:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


async def test_rig_greeting_faults() -> None:
    with SMTPServer() as srv:
        for mode, code in (("421", 421), ("451", 451), ("552", 552), ("550", 550)):
            srv.set_fault(mode, count=1, at="greeting")
            e = await _session(srv.port)
            assert isinstance(e, aiosmtplib.SMTPConnectResponseError) and e.code == code, e
        srv.set_fault("reset", count=1, at="greeting")
        e = await _session(srv.port)
        assert isinstance(e, aiosmtplib.SMTPConnectError), e
        srv.set_fault("stall", count=1, at="greeting", seconds=0.3)
        t = time.monotonic()
        assert await _session(srv.port) is None
        assert time.monotonic() - t >= 0.3
        assert len(srv.messages) == 1 and srv.faults.fired == 6
        assert [m for m, _ in srv.faults.history] == ["421", "451", "552", "550", "reset", "stall"]


@pytest.mark.parametrize("form", ["thread", "process"])
async def test_rig_reset_in_the_middle_of_data(form: str, tmp_path: Path) -> None:
    if form == "thread":
        srv: Any = SMTPServer().start()
    else:  # uvloop there, when installed
        srv = SMTPServerProcess(record=tmp_path / "rec.jsonl").start()
    try:
        srv.set_fault("reset", count=1, at="data", after_bytes=300)
        e = await _session(srv.port)
        # An RST, not a FIN: the client's read failed with ECONNRESET.
        assert isinstance(e, aiosmtplib.SMTPServerDisconnected), e
        assert any(isinstance(c, ConnectionResetError) for c in _causes(e)), _causes(e)
        srv.set_fault("reset", count=1, at="data", after_bytes=10 ** 6)  # more than it has
        e = await _session(srv.port)
        assert isinstance(e, aiosmtplib.SMTPServerDisconnected), e
        assert await _session(srv.port) is None  # the faults are spent
        if form == "thread":
            # 300 bytes read, then everything but the final dot of the second message.
            assert srv.faults.reset_after_bytes == [300, len(MESSAGE)]
            assert len(srv.messages) == 1
        else:
            assert srv.stats()["accepted"] == 1
    finally:
        srv.stop()


async def test_rig_tarpit_writes_one_byte_at_a_time() -> None:
    with SMTPServer() as srv:
        srv.set_fault("tarpit", count=1, seconds=0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        t = [time.monotonic()]
        got = b""
        for _ in range(6):
            got += await reader.read(100)  # never more than one byte is there
            t.append(time.monotonic())
        writer.close()
        assert got == b"220 ri", got
        assert min(b - a for a, b in zip(t, t[1:], strict=False)) >= 0.04, t
        # At "data" the message is stored first; only the answer trickles (a client
        # that gives up meanwhile cannot know it was delivered).
        srv.set_fault("tarpit", count=1, at="data", seconds=1.0)
        e = await _session(srv.port, timeout=1.5)
        assert isinstance(e, aiosmtplib.SMTPReadTimeoutError), e
        assert len(srv.messages) == 1


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
async def test_rig_tls_fail_and_certificates(tls: str, certs: Certs) -> None:
    with SMTPServer(tls=tls, certfile=certs.good[0], keyfile=certs.good[1]) as srv:
        srv.set_fault("tls_fail", count=1)
        e = await _session(srv.port, host="localhost", tls=tls, ca=certs.ca)
        assert e is not None and not any(isinstance(c, ssl.SSLCertVerificationError)
                                         for c in _causes(e)), _causes(e)
        assert await _session(srv.port, host="localhost", tls=tls, ca=certs.ca) is None
        assert len(srv.messages) == 1
    with SMTPServer(tls=tls, certfile=certs.wrong[0], keyfile=certs.wrong[1]) as srv:
        e = await _session(srv.port, host="localhost", tls=tls, ca=certs.ca)
        (cert,) = [c for c in _causes(e) if isinstance(c, ssl.SSLCertVerificationError)]
        assert "Hostname mismatch" in cert.verify_message
        assert srv.messages == []


def test_rig_fault_arguments_are_checked() -> None:
    srv = SMTPServer()
    for mode, kw in (("421", {"at": "greeting", "sender": "a@x.test"}),
                     ("tarpit", {"sender": "a@x.test"}),  # from the greeting: no sender yet
                     ("tls_fail", {"at": "mail"}), ("535", {"at": "greeting"}),
                     ("451", {"after_bytes": 10}), ("reset", {"at": "mail", "after_bytes": 1}),
                     ("stall_after", {"at": "greeting", "seconds": 1})):
        with pytest.raises(ValueError):
            srv.set_fault(mode, **kw)
    assert srv.set_fault("reset", at="data").after_bytes == 100
    assert srv.set_fault("tarpit", at="rcpt", sender="a@x.test").seconds == 1.0
    srv.reset()


# ---------------------------------------------------------------- the checks


def test_the_daemon_ran_clean(run: Run) -> None:
    assert run.rc == 0, run.daemon.tail()
    assert not run.daemon.errors(), run.daemon.errors()
    assert all(r["status"] in FINAL for r in run.rows.values())
    assert len(run.rows) == len(run.seeded)


@pytest.mark.parametrize("name", [s.name for s in SCENARIOS])
def test_fault_ends_as_the_state_machine_says(run: Run, name: str) -> None:
    s = BY_NAME[name]
    rows = run.of(s.email)
    per_account = 4 if run.long else 1
    assert len(rows) == per_account + s.followers
    tried, rest = (rows, []) if s.follower_status is None else (rows[:1], rows[1:])
    for row in tried:
        ctx = f"{name}: {row}"
        assert row["status"] == s.status, ctx
        assert row["attempts"] == s.attempts, ctx
        assert row["data_mark"] == s.data_mark, ctx
        text = row["reason"] if s.status == "skipped" else row["last_error"]
        if s.status == "sent":
            assert row["last_error"] is None and row["reason"] is None, ctx
        else:
            assert text, ctx
            for t in s.texts:
                assert t in text, f"{t!r} not in {text!r}; {ctx}"
            if s.status == "skipped":
                assert text.startswith(GAVE_UP), ctx
                assert row["last_error"] and row["last_error"] in text, ctx
        if s.status in ("failed", "uncertain"):
            assert row["reason"] is None and row["retry_at_ms"] is None, ctx  # never retried
        if s.status == "uncertain":
            assert text.startswith("after DATA: "), ctx
        assert run.arrivals(row["message_id"]) == s.arrivals, ctx
        # Every retry came with the reason, and a retry reuses the Message-ID (one row).
        pending = run.daemon.find("send pending", run=1, send_id=row["id"])
        assert len(pending) == s.attempts - 1, (pending, ctx)
        for ev in pending:
            assert s.retry_text is not None and s.retry_text in ev["last_error"], (ev, ctx)
            assert ev["message_id"] == row["message_id"]
    for row in rest:
        # 535 paused the account: its other sends are skipped, never tried.
        ctx = f"{name}: {row}"
        assert row["status"] == s.follower_status == "skipped", ctx
        assert row["attempts"] == 0 and row["reason"].startswith("paused: "), ctx
        assert "535" in row["reason"], ctx
        assert run.arrivals(row["message_id"]) == 0, ctx
    paused = (account_row(run.tmp, s.email) or {}).get("paused_reason")
    if name == "auth535":
        assert paused and "SMTP authentication failed: 535" in paused, paused
        assert run.daemon.find("account paused", run=1, account=s.email)
        assert run.servers[name].faults.fired == 1  # one session: later sends never connected
    else:
        assert paused is None, f"{name} paused: {paused}"
    if s.fired_per_send is not None:
        assert run.servers[name].faults.fired == s.fired_per_send * len(rows), \
            run.servers[name].faults.history
    if name == "data-reset":
        # Reset in the middle of DATA: the server had read the message's first 100 bytes.
        assert run.servers[name].faults.reset_after_bytes == [100] * len(rows)


def test_no_message_id_arrived_twice(run: Run) -> None:
    counts = Counter(m["message_id"] for m in run.all_messages())
    assert counts and not [m for m, n in counts.items() if n > 1], counts.most_common(3)
    seeded = {s.message_id for s in run.seeded}
    assert set(counts) <= seeded


def test_healthy_accounts_send_on_time_meanwhile(run: Run) -> None:
    msgs = {m["message_id"]: m for m in run.healthy_messages}
    lateness = []
    instants = []
    lo, hi = run.fault_span
    for s in run.seeded:
        if s.account not in HEALTHY:
            continue
        row = run.rows[s.id]
        assert row["status"] == "sent" and row["attempts"] == 1, row
        msg = msgs[s.message_id]
        late = msg["mail_from_at"] - row["at_ms"] / 1000
        lateness.append(late)
        instants.append(row["at_ms"] / 1000)
    late_ones = [round(x * 1000, 1) for x in lateness if not 0 <= x <= LATE_MAX]
    during = sum(lo <= t <= hi for t in instants)
    print(f"\nhealthy sends: {len(lateness)} ({during} while faults happened, "
          f"{hi - lo:.1f} s of faults); lateness p50 {statistics.median(lateness) * 1000:.1f} ms, "
          f"max {max(lateness) * 1000:.1f} ms; run {run.elapsed:.1f} s")
    assert not late_ones, f"healthy sends outside [0, {LATE_MAX * 1000:.0f}] ms: {late_ones}"
    # The healthy sends span the faults: from the first faulty session (opened a second
    # ahead of its instant) to the last faulty send's final state, one every 0.25 s.
    instants.sort()
    assert instants[0] <= lo + 1.0 and instants[-1] >= hi, (instants[0], instants[-1], lo, hi)
    inside = [lo + 1.0, *(t for t in instants if lo + 1.0 < t < hi), hi]
    assert max(b - a for a, b in zip(inside, inside[1:], strict=False)) <= 0.3


def test_classification_table(run: Run) -> None:
    """Prints what each fault ended as (``pytest -rP`` shows it)."""
    lines = ["fault -> final status (attempts): reason"]
    for s in SCENARIOS:
        row = run.of(s.email)[0]
        why = row["reason"] or row["last_error"] or "-"
        lines.append(f"{s.name:16} -> {row['status']:9} ({row['attempts']}): {why}")
        for f in run.of(s.email)[1:1 + s.followers]:
            why = f["reason"] or f["last_error"] or "-"
            lines.append(f"{'':16}    {f['status']:9} ({f['attempts']}): {why}")
    table = "\n".join(lines)
    (run.tmp / "classification.txt").write_text(table + "\n")
    print("\n" + table)
    assert len(lines) == 1 + len(SCENARIOS) + sum(s.followers for s in SCENARIOS)
