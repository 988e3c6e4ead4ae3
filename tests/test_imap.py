"""Engagement over IMAP (warmupd.imap) against the real Dovecot rig.

A pool of alice, bob and carol on the rig (SMTP front + Dovecot IMAP), the daemon
in-process with the real clock and short human delays ("1s-2s"), windows covering
the whole day on every weekday. Sends are seeded into the store as already made and
their messages handed to the rig's SMTP front (or APPENDed), so that each test knows
exactly which warmup mail exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from structlog.testing import capture_logs

from tests.rig.mailrig import MailRig
from warmupd import imap as imap_mod
from warmupd.calendar import local_date
from warmupd.config import Config, build_config
from warmupd.daemon import Daemon
from warmupd.planner import PlannedSend, message_id
from warmupd.smtp import build_message
from warmupd.store import SendRow, Store

USERS = ("alice@warmup.test", "bob@warmup.test", "carol@warmup.test")
ALICE, BOB, CAROL = USERS


def make_config(rig: MailRig, tmp: Path, *, delay: str = "1s-2s", reply_rate: float = 0.0,
                important_rate: float = 0.0, max_depth: int = 2, imap_ports: dict[str, int] | None = None,
                hold_junk_rate: float = 0.10, archive: str = "", poll: str = "2s") -> Config:
    sock_dir = tempfile.mkdtemp(prefix="wu-imap-", dir="/tmp")
    start = (date.today() - timedelta(days=5)).isoformat()
    accounts = []
    for user in USERS:
        pw = rig.users[user]
        port = (imap_ports or {}).get(user, rig.imap_port)
        accounts.append({
            "email": user, "start_date": start,
            "smtp": {"host": "127.0.0.1", "port": rig.smtp_port, "security": "none", "password": pw,
                     "timeout": "5s"},
            "imap": {"host": "127.0.0.1", "port": port, "security": "none", "password": pw,
                     "poll": poll, "timeout": "2s"},
        })
    data = {
        "daemon": {"state_dir": str(tmp / "state"), "socket": f"{sock_dir}/s", "grace": "5m",
                   "shutdown_timeout": "5s", "log_level": "debug"},
        "defaults": {
            "timezone": "UTC", "weekdays": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
            "jitter": "0s", "micro_jitter": "0s", "min_gap": "1s",
            "periods": {"all": {"windows": ["00:00-24:00"], "weight": 1.0}},
            "ramp": {"start": 10, "step": 1, "max": 20},
            "engagement": {"delay": delay, "reply_rate": reply_rate, "important_rate": important_rate,
                           "max_thread_depth": max_depth, "bounce_pause_rate": 0.05,
                           "hold_junk_rate": hold_junk_rate, "archive_folder": archive,
                           # these tests watch the mechanisms act on a handful of messages
                           "bounce_min_sample": 1, "hold_min_sample": 1,
                           "cut_junk_rate": max(hold_junk_rate, 0.25),
                           "pause_junk_rate": max(hold_junk_rate, 0.5)},
        },
        "accounts": accounts,
    }
    return build_config(data, tmp / "config.toml", {})


async def seed(config: Config, pairs: list[tuple[str, str]]) -> list[SendRow]:
    """Sends (sender, recipient) planned and already made today; every account's today planned."""
    store = await Store.open(config.daemon.database)
    try:
        now = time.time()
        today = local_date("UTC", now).isoformat()
        rng = random.Random(7)
        days = []
        for acc in config.accounts:
            mine = [r for s, r in pairs if s == acc.email]
            sends = [PlannedSend(round(now - 120 + i, 3), "all", r, message_id(rng, now + i, acc.domain))
                     for i, r in enumerate(mine)]
            days.append((acc.email, today, 6, 15, sends))
        keys = await store.insert_plan(days)
        rows = []
        for _, sid, _ in sorted(keys, key=lambda k: k[1]):
            row = await store.get_send(sid)
            assert row is not None
            row.status, row.attempts, row.sent_at_ms = "sent", 1, int(now * 1000) - 60_000
            await store.commit_send(row, "pending", "seeded by the test")
            rows.append(row)
        return rows
    finally:
        await store.close()


def message_of(config: Config, row: SendRow) -> bytes:
    account = config.account(row.account)
    assert account is not None
    return build_message(account, row.recipient, row.message_id, row.id, row.at_ms / 1000, random.Random(row.id))


async def deliver(rig: MailRig, config: Config, row: SendRow, rcpt: str | None = None) -> None:
    """Hand a seeded send's message to the rig's SMTP front (``rcpt`` e.g. bob+Junk@...)."""
    await aiosmtplib.send(message_of(config, row), sender=row.account, recipients=[rcpt or row.recipient],
                          hostname="127.0.0.1", port=rig.smtp_port, username=row.account,
                          password=rig.users[row.account], use_tls=False, start_tls=False, timeout=10)


async def messages(rig: MailRig, user: str, folder: str = "INBOX") -> list[dict[str, Any]]:
    return await asyncio.to_thread(rig.messages, user, folder)


async def wait_until(what: str, pred: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        res = pred()
        if asyncio.iscoroutine(res):
            res = await res
        if res:
            return res
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[Daemon]:
    daemon = Daemon(config, rng=random.Random(11))
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.shutdown()


def end_rig_sessions(rig: MailRig) -> None:
    """Dovecot's logged-in imap processes outlive its master (they keep serving their
    session): end this rig's ones, by pid, as a real server restart would."""
    tag = f"mailrig-{os.getpid()}-{rig.imap_port}/imap"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if tag in cmd and "imap-login" not in cmd:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGTERM)


def db(config: Config) -> sqlite3.Connection:
    return sqlite3.connect(config.daemon.database)


def warmup_ids(msgs: list[dict[str, Any]]) -> list[str]:
    return [str(m["headers"]["X-Warmup-Id"]) for m in msgs if m["headers"]["X-Warmup-Id"]]


# --------------------------------------------------------------------------- units


def test_human_delay_stays_in_range_and_is_skewed() -> None:
    rng = random.Random(3)
    ds = [imap_mod.human_delay(180, 4 * 3600, rng) for _ in range(4000)]
    assert min(ds) >= 180 and max(ds) <= 4 * 3600
    ds.sort()
    median, mean = ds[len(ds) // 2], sum(ds) / len(ds)
    assert 900 < median < 2800  # around the geometric middle (~27 min)
    assert mean > median  # heavy right tail


def test_dsn_parsing_finds_the_returned_send() -> None:
    raw = dsn_message(ALICE, 42, "<m42@warmup.test>")
    failed, ids, mids = imap_mod.dsn_failure(raw)
    assert failed and ids == [42] and mids == ["<m42@warmup.test>"]
    delayed = raw.replace(b"Action: failed", b"Action: delayed")
    assert imap_mod.dsn_failure(delayed)[0] is False


def dsn_message(to: str, send_id: int, mid: str) -> bytes:
    """A delivery status notification (RFC 3464) returning the headers of a warmup send."""
    return (
        "From: Mail Delivery System <MAILER-DAEMON@warmup.test>\r\n"
        f"To: {to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <dsn-{send_id}@warmup.test>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="BND"\r\n'
        "\r\n"
        "--BND\r\nContent-Type: text/plain\r\n\r\n"
        "This is the mail system. Your message could not be delivered.\r\n"
        "--BND\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.test\r\n\r\n"
        "Final-Recipient: rfc822; nobody@example.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "--BND\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: {to}\r\nTo: nobody@example.test\r\nSubject: hello\r\nMessage-ID: {mid}\r\n"
        f"X-Warmup-Id: {send_id}\r\n"
        "--BND--\r\n"
    ).encode()


# --------------------------------------------------------------------------- against Dovecot


async def test_rescue_open_flag_reply_and_counts(clean_mailrig: MailRig, tmp_path: Path) -> None:
    rig = clean_mailrig
    config = make_config(rig, tmp_path, reply_rate=1.0, important_rate=1.0, max_depth=2)
    s1, s2, s3 = await seed(config, [(ALICE, BOB)] * 3)
    await deliver(rig, config, s1)  # there before the daemon starts: found by the first scan
    await asyncio.to_thread(rig.append, BOB, "INBOX",
                            b"From: someone@else.test\r\nSubject: not warmup\r\nMessage-ID: <x1@else.test>\r\n\r\nhi\r\n")
    async with running(config) as daemon:
        eng = daemon.engagement
        assert eng is not None
        await wait_until("bob connected", lambda: eng.watchers[BOB].connected, 10)
        await deliver(rig, config, s2)  # seen through IDLE
        await deliver(rig, config, s3, "bob+Junk@warmup.test")  # in junk: seen by the junk poll
        assert len(await messages(rig, BOB, "Junk")) == 1

        async def bob_done() -> bool:
            inbox = await messages(rig, BOB)
            warm = [m for m in inbox if m["headers"]["X-Warmup-Id"]]
            return len(warm) == 3 and all({"\\Seen", "\\Flagged"} <= m["flags"] for m in warm)

        await wait_until("bob rescued and opened all three", bob_done, 25)
        assert await messages(rig, BOB, "Junk") == []
        inbox = await messages(rig, BOB)
        other = [m for m in inbox if not m["headers"]["X-Warmup-Id"]]
        assert len(other) == 1 and "\\Seen" not in other[0]["flags"]  # not warmup mail: left alone
        rescued = [m for m in inbox if m["headers"]["X-Warmup-Id"] == str(s3.id)]
        assert "$NotJunk" in rescued[0]["flags"]

        async def replies() -> list[dict[str, Any]]:
            got = [m for m in await messages(rig, ALICE) if m["headers"]["In-Reply-To"]]
            return got if len(got) == 3 else []

        got = await wait_until("bob's three replies in alice's INBOX", replies, 25)
        originals = {s.message_id: s for s in (s1, s2, s3)}
        for m in got:
            irt = str(m["headers"]["In-Reply-To"])
            assert irt in originals
            assert m["subject"].startswith("Re:")
            assert irt in str(m["headers"]["References"])
            assert m["headers"]["X-Warmup-Id"]
            assert str(m["headers"]["From"]) == f"Bob <{BOB}>"  # the names derived from the addresses
            assert str(m["headers"]["To"]) == f"Alice <{ALICE}>"

        # the replies are warmup mail too: alice opens them, but depth 2 = max: no reply back
        async def alice_opened() -> bool:
            ms = await messages(rig, ALICE)
            return len(ms) == 3 and all("\\Seen" in m["flags"] for m in ms)

        await wait_until("alice opened the replies", alice_opened, 20)
        await asyncio.sleep(1.0)
        assert len(await messages(rig, BOB)) == 4

        c = await eng.refresh(BOB)
        assert (c["received"], c["inbox"], c["junk"], c["rescued"], c["opened"]) == (3, 2, 1, 1, 3)
        assert c["inbox_rate"] == pytest.approx(2 / 3)
        assert c["replied"] == 3 and c["sends"] == 3
        assert eng.today(BOB)["received"] == 3  # the sync view the status command reads
        a = await eng.refresh(ALICE)
        assert (a["received"], a["inbox"], a["junk"]) == (3, 3, 0)
        assert eng.totals_today()["received"] == 6

        # one of alice's three landed in junk: more than 10 % -> her ramp is held three days
        st = daemon.planning.states[ALICE]
        assert st.hold_until == (local_date("UTC", time.time()) + timedelta(days=3)).isoformat()
        assert "junk" in (st.hold_reason or "")
        assert daemon.planning.states[BOB].hold_until is None
    with db(config) as con:
        rows = con.execute("SELECT send_id, placement, delay_ms FROM received WHERE account=? ORDER BY send_id",
                           (BOB,)).fetchall()
        assert [(r[0], r[1]) for r in rows] == [(s1.id, "inbox"), (s2.id, "inbox"), (s3.id, "junk")]
        assert all(r[2] is not None and r[2] >= 0 for r in rows)
        kinds = con.execute("SELECT kind, status, count(*) FROM actions WHERE account=? GROUP BY kind, status",
                            (BOB,)).fetchall()
        assert sorted(kinds) == [("open", "done", 3), ("reply", "done", 3), ("rescue", "done", 1)]
        reps = con.execute("SELECT in_reply_to, depth, status, recipient FROM sends WHERE kind='reply'").fetchall()
        assert sorted(r[0] for r in reps) == [s1.id, s2.id, s3.id]
        assert all(r[1] == 2 and r[2] == "sent" and r[3] == ALICE for r in reps)


async def test_bounce_reconnect_backoff_and_a_dead_server_stays_local(
        clean_mailrig: MailRig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig = clean_mailrig
    monkeypatch.setattr(imap_mod.Engagement, "reconnect_base", 0.3)

    # carol's IMAP server accepts connections and never says hello
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    blackhole = await asyncio.start_server(silent, "127.0.0.1", 0)
    hole_port = blackhole.sockets[0].getsockname()[1]
    config = make_config(rig, tmp_path, imap_ports={CAROL: hole_port})
    s1, s2 = await seed(config, [(ALICE, BOB), (ALICE, BOB)])
    try:
        with capture_logs() as logs:
            async with running(config) as daemon:
                eng = daemon.engagement
                assert eng is not None
                await wait_until("alice and bob connected",
                                 lambda: eng.watchers[ALICE].connected and eng.watchers[BOB].connected, 10)

                # a bounce of s1 lands in alice's INBOX: s1 is marked bounced, alice (1 of 1) paused
                await asyncio.to_thread(rig.append, ALICE, "INBOX", dsn_message(ALICE, s1.id, s1.message_id))
                await wait_until("alice paused", lambda: daemon.planning.states[ALICE].paused_reason, 10)
                assert "bounce" in (daemon.planning.states[ALICE].paused_reason or "")

                # Dovecot goes away and comes back: both reconnect, with growing delays
                await asyncio.to_thread(rig.stop_imap)
                end_rig_sessions(rig)
                await wait_until("three reconnect attempts by bob", lambda: any(
                    e["event"] == "imap reconnect" and e.get("account") == BOB and e["attempt"] >= 3
                    for e in logs), 15)
                await asyncio.to_thread(rig.start_imap)
                await wait_until("alice and bob connected again",
                                 lambda: eng.watchers[ALICE].connects >= 2 and eng.watchers[BOB].connects >= 2, 15)

                # engagement carries on over the new connection
                await asyncio.to_thread(rig.append, BOB, "Junk", message_of(config, s2))

                async def rescued() -> bool:
                    return len(await messages(rig, BOB, "Junk")) == 0 and len(await messages(rig, BOB)) == 1

                await wait_until("s2 rescued after the reconnect", rescued, 15)
                assert not eng.watchers[CAROL].connected and eng.watchers[CAROL].failures >= 2
                assert eng.status()[CAROL]["connected"] is False
    finally:
        blackhole.close()
        for w in held:
            w.close()
        rig.ensure_imap()

    with db(config) as con:
        assert con.execute("SELECT bounced FROM sends WHERE id=?", (s1.id,)).fetchone() == (1,)
        assert con.execute("SELECT bounced FROM sends WHERE id=?", (s2.id,)).fetchone() == (0,)
    bob_retry = [e for e in logs if e["event"] == "imap reconnect" and e.get("account") == BOB]
    by_attempt: dict[int, float] = {}
    for e in bob_retry:
        by_attempt.setdefault(e["attempt"], e["retry_in"])
    assert by_attempt[1] < by_attempt[3]  # 0.15-0.45 s, then 0.6-1.8 s
    assert any(e["event"] == "imap connection lost" and e.get("account") == BOB for e in logs)
    assert any(e["event"] == "imap connection failed" and e.get("account") == CAROL for e in logs)
    assert not any("bob-pw" in str(e) or "alice-pw" in str(e) for e in logs)


async def test_restart_carries_out_pending_actions_once(clean_mailrig: MailRig, tmp_path: Path) -> None:
    rig = clean_mailrig
    config = make_config(rig, tmp_path, delay="4s-5s", reply_rate=1.0, important_rate=0.0)
    s1, s2 = await seed(config, [(ALICE, BOB), (ALICE, BOB)])
    await deliver(rig, config, s1)
    await deliver(rig, config, s2, "bob+Junk@warmup.test")

    def bob_actions() -> list[tuple[str, str]]:
        with db(config) as con:
            return sorted(con.execute("SELECT kind, status FROM actions WHERE account=?", (BOB,)).fetchall())

    async with running(config):
        await wait_until("bob's actions planned", lambda: len(bob_actions()) == 5, 10)
    # stopped before any was due: all pending, nothing done on the server yet
    assert bob_actions() == sorted([("open", "pending")] * 2 + [("reply", "pending")] * 2 + [("rescue", "pending")])
    assert len(await messages(rig, BOB, "Junk")) == 1

    async def all_done() -> bool:
        return (all(s == "done" for _, s in bob_actions())
                and len([m for m in await messages(rig, ALICE) if m["headers"]["In-Reply-To"]]) == 2)

    async with running(config):
        await wait_until("the recovered actions carried out", all_done, 30)
    assert await messages(rig, BOB, "Junk") == []
    assert all("\\Seen" in m["flags"] for m in await messages(rig, BOB))

    # As if the daemon had died after each IMAP operation but before committing "done":
    # the actions run again, and nothing happens twice.
    with db(config) as con:
        con.execute("UPDATE actions SET status='pending', due_ms=? WHERE account=?", (int(time.time() * 1000), BOB))
    async with running(config):
        await wait_until("the repeated actions settled", lambda: all(s == "done" for _, s in bob_actions()), 20)
        await asyncio.sleep(1.5)
    replies = [m for m in await messages(rig, ALICE) if m["headers"]["In-Reply-To"]]
    assert sorted(str(m["headers"]["In-Reply-To"]) for m in replies) == sorted([s1.message_id, s2.message_id])
    assert len(await messages(rig, BOB)) == 2 and await messages(rig, BOB, "Junk") == []
    with db(config) as con:
        assert con.execute("SELECT count(*) FROM sends WHERE kind='reply'").fetchone() == (2,)
        assert con.execute("SELECT count(*) FROM received WHERE account=?", (BOB,)).fetchone() == (2,)
