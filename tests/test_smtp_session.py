"""The SMTP session against a real aiosmtpd server: the name given in EHLO."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from warmupd.config import Server
from warmupd.smtp import Outcome, deliver

MESSAGE = b"From: a@warmup.test\r\nTo: b@warmup.test\r\nSubject: hi\r\n\r\nhello\r\n"


class EhloRecorder:
    def __init__(self) -> None:
        self.names: list[str] = []

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        self.names.append(hostname)
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 OK"


@pytest.fixture
def server() -> Iterator[tuple[int, EhloRecorder]]:
    rec = EhloRecorder()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    # server_hostname: else aiosmtpd looks up its own name (getfqdn) for every session
    ctrl = Controller(rec, hostname="127.0.0.1", port=port, server_hostname="rig.warmup.test")
    ctrl.start()
    try:
        yield port, rec
    finally:
        ctrl.stop()


async def _nothing() -> None:
    return None


async def test_ehlo_names_this_host_looked_up_once_per_process(
        server: tuple[int, EhloRecorder], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every session says EHLO with this host's FQDN, and the name is not looked up again
    for each session (a thread and a reverse lookup each, thousands a minute at a large pool)."""
    port, rec = server
    real = socket.getfqdn
    lookups: list[str] = []

    def counted(name: str = "") -> str:
        lookups.append(name)
        return real(name)

    monkeypatch.setattr(socket, "getfqdn", counted)
    srv = Server("127.0.0.1", port, "none", "a@warmup.test", None, 5.0)
    for _ in range(3):
        result = await deliver(srv, "a@warmup.test", "b@warmup.test", MESSAGE, at=time.time(),
                               on_data_mark=_nothing)
        assert result.outcome is Outcome.SENT, result
    assert rec.names == [real()] * 3
    assert len(lookups) <= 1  # once per process: an earlier test may have made the lookup
