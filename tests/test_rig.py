"""Tests of the test rig itself: the fault-injecting SMTP server, the Dovecot rig, warmupd.capture."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest

from tests.rig.mailrig import MailRig
from tests.rig.smtp_server import SMTPServer, SMTPServerProcess

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_message(sender: str, to: str, subject: str = "hello") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@warmup.test>"
    msg["X-Warmup-Id"] = uuid.uuid4().hex[:12]
    msg.set_content("Hi there,\n.\nA line with a lone dot above.\n")
    return msg


async def send(
    port: int, msg: EmailMessage, username: str | None = None, password: str | None = None
) -> None:
    await aiosmtplib.send(
        msg,
        hostname="127.0.0.1",
        port=port,
        username=username,
        password=password,
        start_tls=False,
        timeout=10,
    )


# --------------------------------------------------------------------------- SMTP server


async def test_smtp_server_records_authenticated_message(smtp_server: SMTPServer) -> None:
    msg = make_message("alice@warmup.test", "someone@example.test", "Grüße")
    before = time.time()
    await send(smtp_server.port, msg, "alice@warmup.test", "alice-pw")
    (rec,) = smtp_server.wait_for(1, timeout=5)
    assert before <= rec["mail_from_at"] <= rec["data_at"] <= time.time()
    assert rec["mail_from"] == "alice@warmup.test"
    assert rec["rcpt_tos"] == ["someone@example.test"]
    assert rec["message_id"] == msg["Message-ID"]
    assert rec["x_warmup_id"] == msg["X-Warmup-Id"]
    assert rec["subject"] == "Grüße"
    assert rec["auth_login"] == "alice@warmup.test"
    assert "A line with a lone dot above." in rec["raw"]


async def test_smtp_server_requires_auth_and_checks_password(smtp_server: SMTPServer) -> None:
    msg = make_message("alice@warmup.test", "someone@example.test")
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as exc:
        await send(smtp_server.port, msg, "alice@warmup.test", "wrong")
    assert exc.value.code == 535
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as exc2:  # no AUTH at all
        await send(smtp_server.port, msg)
    assert exc2.value.code == 530
    assert smtp_server.messages == []


async def test_smtp_server_451_fault(smtp_server: SMTPServer) -> None:
    smtp_server.set_fault("451", count=1)
    msg = make_message("bob@warmup.test", "someone@example.test")
    with pytest.raises(aiosmtplib.SMTPResponseException) as exc:
        await send(smtp_server.port, msg, "bob@warmup.test", "bob-pw")
    assert exc.value.code == 451
    # count=1: the retry goes through.
    await send(smtp_server.port, msg, "bob@warmup.test", "bob-pw")
    assert [r["message_id"] for r in smtp_server.wait_for(1)] == [msg["Message-ID"]]
    assert smtp_server.faults_fired == 1


@pytest.mark.parametrize(
    ("mode", "at", "error", "code"),
    [
        ("421", None, aiosmtplib.SMTPSenderRefused, 421),
        ("550", "rcpt", aiosmtplib.SMTPRecipientsRefused, None),
        ("451", "data", aiosmtplib.SMTPDataError, 451),
        ("535", None, aiosmtplib.SMTPAuthenticationError, 535),
        ("drop", None, aiosmtplib.SMTPServerDisconnected, None),
    ],
)
async def test_smtp_server_faults(
    smtp_server: SMTPServer, mode: str, at: str | None, error: type[Exception], code: int | None
) -> None:
    smtp_server.set_fault(mode, count=1, at=at)
    msg = make_message("carol@warmup.test", "x@example.test")
    with pytest.raises(error) as exc:
        await send(smtp_server.port, msg, "carol@warmup.test", "carol-pw")
    if code is not None:
        assert getattr(exc.value, "code", None) == code
    await send(smtp_server.port, msg, "carol@warmup.test", "carol-pw")
    assert len(smtp_server.wait_for(1)) == 1


async def test_smtp_server_fault_per_sender_and_stall(smtp_server: SMTPServer) -> None:
    smtp_server.set_fault("550", sender="bob@warmup.test")  # until reset
    with pytest.raises(aiosmtplib.SMTPSenderRefused):
        await send(
            smtp_server.port,
            make_message("bob@warmup.test", "x@e.test"),
            "bob@warmup.test",
            "bob-pw",
        )
    await send(
        smtp_server.port,
        make_message("alice@warmup.test", "x@e.test"),
        "alice@warmup.test",
        "alice-pw",
    )
    smtp_server.reset()
    smtp_server.set_fault("stall_after", seconds=0.5, count=1)
    t0 = time.monotonic()
    await send(
        smtp_server.port, make_message("bob@warmup.test", "x@e.test"), "bob@warmup.test", "bob-pw"
    )
    assert time.monotonic() - t0 >= 0.5
    assert [r["mail_from"] for r in smtp_server.wait_for(2)] == [
        "alice@warmup.test",
        "bob@warmup.test",
    ]


async def test_smtp_server_subprocess_and_control_port(tmp_path: Path) -> None:
    record = tmp_path / "rec.jsonl"
    with SMTPServerProcess(users={"alice@warmup.test": "alice-pw"}, record=record) as srv:
        srv.set_fault("451", count=1)
        msg = make_message("alice@warmup.test", "x@example.test")
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as exc:
            await send(srv.port, msg, "alice@warmup.test", "alice-pw")
        assert exc.value.code == 451
        await send(srv.port, msg, "alice@warmup.test", "alice-pw")
        stats = srv.stats()
        assert stats["accepted"] == 1 and stats["faults_fired"] == 1
        (rec,) = srv.records()
    assert rec["x_warmup_id"] == msg["X-Warmup-Id"]
    assert rec["message_id"] == msg["Message-ID"]


# --------------------------------------------------------------------------- Dovecot rig


async def test_mailrig_delivers_to_inbox_and_junk(clean_mailrig: MailRig) -> None:
    rig = clean_mailrig
    to_inbox = make_message("alice@warmup.test", "bob@warmup.test", "to inbox")
    to_junk = make_message("alice@warmup.test", "bob+Junk@warmup.test", "to junk")
    await send(rig.smtp_port, to_inbox, "alice@warmup.test", "alice-pw")
    await send(rig.smtp_port, to_junk, "alice@warmup.test", "alice-pw")
    # The front answered 250 only after Dovecot stored the mail: no polling needed.
    inbox = rig.messages("bob@warmup.test", "INBOX")
    junk = rig.messages("bob@warmup.test", "Junk")
    assert [m["message_id"] for m in inbox] == [to_inbox["Message-ID"]]
    assert [m["message_id"] for m in junk] == [to_junk["Message-ID"]]
    assert junk[0]["headers"]["X-Warmup-Id"] == to_junk["X-Warmup-Id"]
    assert "\\Seen" not in junk[0]["flags"]


async def test_mailrig_rejects_unknown_user_and_lists_special_folders(
    clean_mailrig: MailRig,
) -> None:
    rig = clean_mailrig
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
        await send(
            rig.smtp_port,
            make_message("alice@warmup.test", "nobody@warmup.test"),
            "alice@warmup.test",
            "alice-pw",
        )
    folders = dict((name, flags) for flags, name in rig.folders("carol@warmup.test"))
    assert "\\Junk" in folders["Junk"] and "\\Archive" in folders["Archive"]
    uid = rig.append(
        "carol@warmup.test",
        "Junk",
        make_message("x@example.test", "carol@warmup.test", "planted"),
        flags=["\\Seen"],
    )
    (planted,) = rig.messages("carol@warmup.test", "Junk")
    assert (
        planted["uid"] == uid and planted["subject"] == "planted" and "\\Seen" in planted["flags"]
    )


async def test_mailrig_imap_restart(clean_mailrig: MailRig) -> None:
    rig = clean_mailrig
    rig.stop_imap()
    try:
        with pytest.raises(aiosmtplib.SMTPDataError) as exc:  # LMTP is down: temporary failure
            await send(
                rig.smtp_port,
                make_message("alice@warmup.test", "bob@warmup.test"),
                "alice@warmup.test",
                "alice-pw",
            )
        assert exc.value.code == 451
    finally:
        rig.start_imap()
    await send(
        rig.smtp_port,
        make_message("alice@warmup.test", "bob@warmup.test", "after"),
        "alice@warmup.test",
        "alice-pw",
    )
    assert [m["subject"] for m in rig.messages("bob@warmup.test")] == ["after"]


# --------------------------------------------------------------------------- warmupd.capture


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


async def test_capture_saves_eml(tmp_path: Path) -> None:
    outdir = tmp_path / "outbox"
    proc = subprocess.Popen(
        [sys.executable, "-m", "warmupd.capture", "--port", "0", "--dir", str(outdir)],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", banner)
        assert m, banner
        msg = make_message("alice@warmup.test", "bob@example.test", "captured")
        await send(int(m.group(1)), msg, "alice@warmup.test", "any-password")
        saved_line = proc.stdout.readline()
        assert saved_line.startswith("saved ") and "to=bob@example.test" in saved_line
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    (eml,) = outdir.glob("*.eml")
    assert re.fullmatch(r"\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{8}\.eml", eml.name)
    assert msg["Message-ID"].encode() in eml.read_bytes()
    assert not list(outdir.glob(".*.tmp"))


def test_capture_without_aiosmtpd_exits_69() -> None:
    code = "import sys; sys.modules['aiosmtpd'] = None; from warmupd.capture import main; sys.exit(main([]))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=30
    )
    assert proc.returncode == 69
    assert proc.stderr.strip() == "warmupd.capture needs aiosmtpd: pip install 'warmupd[demo]'"
