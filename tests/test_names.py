"""Mail that looks like a person's: display names in From and To, the greeting and the
signature, and a reply's attribution line (warmupd.smtp.build_message, imap.compose_reply)."""

from __future__ import annotations

import email
import email.policy
import random
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path

from warmupd.config import Account, build_config, name_from_address
from warmupd.imap import compose_reply
from warmupd.smtp import build_message


def pool(tmp: Path) -> tuple[Account, Account]:
    smtp = {"host": "127.0.0.1", "port": 2525, "security": "none", "password": "pw"}
    cfg = build_config({"accounts": [
        {"email": "nora@good.test", "name": "Nora Lind", "start_date": "2026-12-01", "smtp": smtp},
        {"email": "sam.berg@warmup.test", "start_date": "2026-12-01", "smtp": smtp}]},
        tmp / "config.toml", {})
    return cfg.accounts[0], cfg.accounts[1]


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def test_from_to_greeting_signature_and_reply_attribution(tmp_path: Path) -> None:
    nora, sam = pool(tmp_path)
    raw = build_message(nora, sam.email, "<1.a@good.test>", 7, 1_796_000_000.0, random.Random(3),
                        recipient_name=sam.display_name)
    msg = parse(raw)
    assert str(msg["From"]) == "Nora Lind <nora@good.test>"
    assert str(msg["To"]) == "Sam Berg <sam.berg@warmup.test>"
    body = msg.get_content()
    assert "Sam," in body.splitlines()[0]  # "Hi Sam," and the like
    assert body.rstrip().splitlines()[-1] == "Nora"

    subject, reply, refs = compose_reply(msg, sam, random.Random(1))
    assert subject.startswith("Re: ")
    assert reply.startswith("Hi Nora,")
    assert f"\nSam\n\nOn {msg['Date']}, Nora Lind wrote:\n> " in reply
    assert refs == "<1.a@good.test>"


def test_names_derived_from_addresses_and_quoted_when_needed(tmp_path: Path) -> None:
    assert name_from_address("nora.lind@x.test") == "Nora Lind"
    assert name_from_address("sam_berg+warmup@x.test") == "Sam Berg"
    assert name_from_address("info2@x.test") == "Info2"
    nora, sam = pool(tmp_path)
    odd = replace(nora, name="Lind, Nora")  # a name that needs quoting in the header
    msg = parse(build_message(odd, sam.email, "<2.a@good.test>", 8, 1_796_000_000.0, random.Random(4)))
    assert msg["From"].addresses[0].display_name == "Lind, Nora"
    assert msg["From"].addresses[0].addr_spec == "nora@good.test"
