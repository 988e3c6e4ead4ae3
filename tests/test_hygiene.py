"""Mailbox hygiene (warmupd/hygiene.py) on the real Dovecot rig: only warmup mail on record,
older than keep_days, leaves INBOX, Junk, the archive folder and Sent; real mail stays."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.rig.mailrig import MailRig
from tests.test_imap import ALICE, BOB, make_config, messages, running, wait_until
from warmupd.config import Config
from warmupd.store import Store

OLD = time.time() - 20 * 86400  # older than keep_days (14)


def mail(sender: str, rcpt: str, mid: str, warmup_id: int | None, subject: str) -> bytes:
    head = f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n"
    if warmup_id is not None:
        head += f"X-Warmup-Id: {warmup_id}\r\n"
    return (head + "Date: Tue, 10 Nov 2026 10:00:00 +0000\r\n\r\nHello\r\n").encode()


def with_hygiene(config: Config, mode: str) -> Config:
    accounts = tuple(replace(a, engagement=replace(a.engagement, hygiene=mode)) for a in config.accounts)
    return Config(path=config.path, daemon=config.daemon, accounts=accounts)


async def seed_received(config: Config, rows: list[tuple[int, str, str, str]]) -> None:
    """(send id, receiver, Message-ID, sender) recorded as received warmup mail."""
    store = await Store.open(config.daemon.database)
    try:
        for sid, receiver, mid, sender in rows:
            await store.record_received(sid, receiver, "INBOX", "inbox", "2026-11-10", int(OLD * 1000), 1000, 1,
                                        [], message_id=mid, sender=sender)
    finally:
        await store.close()


@pytest.mark.parametrize("mode", ["trash", "delete"])
async def test_only_old_warmup_mail_on_record_is_cleaned(clean_mailrig: MailRig, tmp_path: Path,
                                                         mode: str) -> None:
    rig = clean_mailrig
    config = with_hygiene(make_config(rig, tmp_path, archive="Archive"), mode)
    m = {k: f"<{k}.{mode}@warmup.test>" for k in ("inbox", "junk", "arch", "recent", "unknown", "real",
                                                   "sentreal", "unseen")}
    await seed_received(config, [(9001, BOB, m["inbox"], ALICE), (9002, BOB, m["junk"], ALICE),
                                 (9003, BOB, m["arch"], ALICE), (9004, BOB, m["recent"], ALICE)])
    put = [(BOB, "INBOX", mail(ALICE, BOB, m["inbox"], 9001, "old warmup"), OLD),
           (BOB, "INBOX", mail(ALICE, BOB, m["recent"], 9004, "recent warmup"), time.time() - 86400),
           (BOB, "INBOX", mail(ALICE, BOB, m["unknown"], 9100, "warmup header, not on record"), OLD),
           (BOB, "INBOX", mail("friend@else.test", BOB, m["real"], None, "real mail"), OLD),
           (BOB, "Junk", mail(ALICE, BOB, m["junk"], 9002, "old warmup in junk"), OLD),
           (BOB, "Archive", mail(ALICE, BOB, m["arch"], 9003, "old archived warmup"), OLD),
           (ALICE, "Sent", mail(ALICE, BOB, m["inbox"], 9001, "old warmup"), OLD),
           (ALICE, "Sent", mail(ALICE, "friend@else.test", m["sentreal"], None, "real sent mail"), OLD),
           (ALICE, "Sent", mail(ALICE, BOB, m["unseen"], 9200, "warmup never seen received"), OLD)]
    for user, folder, raw, when in put:
        await asyncio.to_thread(rig.append, user, folder, raw, (), when)

    async with running(config) as daemon:
        eng = daemon.engagement
        assert eng is not None
        await wait_until("alice and bob connected",
                         lambda: eng.watchers[ALICE].connected and eng.watchers[BOB].connected, 10)
        done = await eng.hygiene()
        assert done[BOB] == 3 and done[ALICE] == 1
        assert (await eng.hygiene())[BOB] == 0  # nothing left to find

    async def mids(user: str, folder: str) -> set[str]:
        return {x["message_id"] for x in await messages(rig, user, folder)}

    assert await mids(BOB, "INBOX") == {m["recent"], m["unknown"], m["real"]}
    assert await mids(BOB, "Junk") == set() and await mids(BOB, "Archive") == set()
    assert await mids(ALICE, "Sent") == {m["sentreal"], m["unseen"]}
    if mode == "trash":
        assert await mids(BOB, "Trash") == {m["inbox"], m["junk"], m["arch"]}
        assert await mids(ALICE, "Trash") == {m["inbox"]}
    else:
        assert await mids(BOB, "Trash") == set() and await mids(ALICE, "Trash") == set()
