"""SMTP over STARTTLS and implicit TLS against a real aiosmtpd server with a private CA."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from warmupd.config import ConfigError, Server, load_config
from warmupd.smtp import Outcome, deliver


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


class Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bool]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.content, session.ssl is not None))
        return "250 2.0.0 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=["starttls", "tls"])
def tls_server(request: pytest.FixtureRequest, cert: tuple[Path, Path]) -> Iterator[tuple[str, int, Recorder]]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    rec = Recorder()
    port = _free_port()
    if request.param == "starttls":
        ctrl = Controller(rec, hostname="127.0.0.1", port=port, tls_context=ctx, require_starttls=True)
    else:
        ctrl = Controller(rec, hostname="127.0.0.1", port=port, ssl_context=ctx)
    ctrl.start()
    try:
        yield request.param, port, rec
    finally:
        ctrl.stop()


async def _nothing() -> None:
    return None


MESSAGE = b"From: a@warmup.test\r\nTo: b@warmup.test\r\nSubject: hi\r\n\r\nhello\r\n"


async def test_private_ca_in_ca_file_is_trusted(tls_server: tuple[str, int, Recorder], cert: tuple[Path, Path]) -> None:
    security, port, rec = tls_server
    srv = Server("127.0.0.1", port, security, "a@warmup.test", None, 5.0, ca_file=cert[0])
    result = await deliver(srv, "a@warmup.test", "b@warmup.test", MESSAGE, at=time.time(),
                           on_data_mark=_nothing)
    assert result.outcome is Outcome.SENT, result
    assert len(rec.messages) == 1
    content, starttls_done = rec.messages[0]
    # An implicit-TLS listener speaks nothing but TLS; on the other, STARTTLS must have run.
    assert starttls_done or security == "tls"
    assert b"hello" in content


async def test_untrusted_certificate_fails_without_sending(tls_server: tuple[str, int, Recorder]) -> None:
    security, port, rec = tls_server
    srv = Server("127.0.0.1", port, security, "a@warmup.test", None, 5.0)
    result = await deliver(srv, "a@warmup.test", "b@warmup.test", MESSAGE, at=time.time(),
                           on_data_mark=_nothing)
    # A certificate problem does not pass by itself: failed with a hint, not retried.
    assert result.outcome is Outcome.FAILED, result
    assert "not trusted" in result.reply and "ca_file" in result.reply
    assert rec.messages == []


def test_ca_file_must_be_a_readable_bundle(tmp_path: Path) -> None:
    (tmp_path / "bogus.pem").write_text("not a certificate\n")
    for name, expect in (("missing.pem", "cannot load CA bundle"), ("bogus.pem", "cannot load CA bundle")):
        cfg = tmp_path / "config.toml"
        cfg.write_text(f"""
[[accounts]]
email = "a@warmup.test"
start_date = "2026-12-01"
smtp = {{ host = "127.0.0.1", port = 465, security = "tls", ca_file = "{name}" }}
[[accounts]]
email = "b@warmup.test"
start_date = "2026-12-01"
smtp = {{ host = "127.0.0.1", port = 465, security = "tls" }}
""")
        with pytest.raises(ConfigError) as info:
            load_config(cfg)
        assert any(p.startswith("accounts[0].smtp.ca_file: " + expect) for p in info.value.problems), \
            info.value.problems
