"""More of warmupd.imap against the real Dovecot rig: archiving, the poll path of a
server without IDLE, and the receiver's windows for human delays.

Builds on the helpers of tests/test_imap.py (seeded sends, delivery through the
rig's SMTP front, the daemon in-process with the real clock).
"""

from __future__ import annotations

import asyncio
import imaplib
import random
import time
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aioimaplib
import pytest
from structlog.testing import capture_logs

from tests.rig.mailrig import MailRig
from tests.test_imap import (
    ALICE,
    BOB,
    db,
    deliver,
    make_config,
    messages,
    running,
    seed,
    wait_until,
)
from warmupd import imap as imap_mod
from warmupd.config import Account, Config, build_config

# What Dovecot 2.3 advertises after login, less IDLE.
NO_IDLE_CAPS = ("IMAP4rev1 LITERAL+ SASL-IR LOGIN-REFERRALS ID ENABLE SORT THREAD=REFERENCES MULTIAPPEND "
                "UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 LIST-STATUS SPECIAL-USE MOVE")


def pool_config(rig: MailRig, tmp: Path, *, archive: str = "", delay: str = "1s-2s", poll: str = "2s") -> Config:
    """alice, bob and carol on ``rig``; whole-day windows every day, no replies."""
    return make_config(rig, tmp, delay=delay, hold_junk_rate=0.9, archive=archive, poll=poll)


def actions_of(config: Config, account: str) -> list[tuple[int, str, str, int, str | None]]:
    with db(config) as con:
        return con.execute("SELECT send_id, kind, status, due_ms, detail FROM actions WHERE account=? "
                           "ORDER BY send_id, due_ms", (account,)).fetchall()


# --------------------------------------------------------------------------- archive_folder


async def test_archive_moves_engaged_mail_out_of_inbox(clean_mailrig: MailRig, tmp_path: Path) -> None:
    rig = clean_mailrig
    assert any(name == "Archive" for _, name in await asyncio.to_thread(rig.folders, BOB))
    config = pool_config(rig, tmp_path, archive="Archive")
    s1, s2 = await seed(config, [(ALICE, BOB), (ALICE, BOB)])
    await deliver(rig, config, s1)
    await deliver(rig, config, s2, "bob+Junk@warmup.test")  # rescued first, then opened and archived
    await asyncio.to_thread(rig.append, BOB, "INBOX",
                            b"From: someone@else.test\r\nSubject: not warmup\r\nMessage-ID: <y1@else.test>\r\n\r\nhi\r\n")
    async with running(config) as daemon:
        eng = daemon.engagement
        assert eng is not None
        await wait_until("bob connected", lambda: eng.watchers[BOB].connected, 10)
        assert eng.watchers[BOB].folders.archive == "Archive"

        async def archived() -> list[dict[str, Any]]:
            got = await messages(rig, BOB, "Archive")
            return got if len(got) == 2 else []

        got = await wait_until("both warmup messages in bob's Archive", archived, 25)
        assert sorted(str(m["headers"]["X-Warmup-Id"]) for m in got) == sorted([str(s1.id), str(s2.id)])
        assert all("\\Seen" in m["flags"] for m in got)  # engaged before it was put away
        assert "$NotJunk" in next(m for m in got if str(m["headers"]["X-Warmup-Id"]) == str(s2.id))["flags"]
        inbox = await messages(rig, BOB)
        assert [m["headers"]["X-Warmup-Id"] for m in inbox] == [None]  # only the non-warmup mail is left
        assert "\\Seen" not in inbox[0]["flags"]
        assert await messages(rig, BOB, "Junk") == []
    acts = actions_of(config, BOB)
    by_send: dict[int, list[tuple[str, str, int, str | None]]] = {}
    for sid, kind, status, due, detail in acts:
        by_send.setdefault(sid, []).append((kind, status, due, detail))
    assert [k for k, *_ in by_send[s1.id]] == ["open", "archive"]
    assert [k for k, *_ in by_send[s2.id]] == ["rescue", "open", "archive"]
    for rows in by_send.values():
        assert all(st == "done" for _, st, _, _ in rows)
        assert rows[-1][3] == "moved to Archive"
        dues = [d for _, _, d, _ in rows]
        assert dues == sorted(dues) and len(set(dues)) == len(dues)  # each after the one before


# --------------------------------------------------------------------------- a server without IDLE


@pytest.fixture(scope="module")
def noidle_rig(mailrig: MailRig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailRig]:
    """A second Dovecot told not to advertise IDLE (``mailrig`` only for its skip rules)."""
    rig = MailRig(tmp_path_factory.mktemp("noidle"), users=mailrig.users,
                  extra_conf=f"imap_capability = {NO_IDLE_CAPS}").start()
    try:
        yield rig
    finally:
        rig.stop()


def test_noidle_rig_does_not_advertise_idle(noidle_rig: MailRig) -> None:
    conn = imaplib.IMAP4("127.0.0.1", noidle_rig.imap_port, timeout=10)
    try:
        assert "IDLE" not in conn.capabilities and "IMAP4REV1" in conn.capabilities
        typ, _ = conn.login(BOB, noidle_rig.users[BOB])
        assert typ == "OK"
        typ, data = conn.capability()
        assert typ == "OK"
        post = data[0].decode().upper().split()
        assert "IDLE" not in post and "MOVE" in post
    finally:
        conn.logout()


async def test_poll_path_finds_and_engages_mail_without_idle(
        noidle_rig: MailRig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig = noidle_rig
    idles: list[str] = []
    real_idle_start = aioimaplib.IMAP4.idle_start

    async def counting_idle_start(self: aioimaplib.IMAP4, *a: Any, **kw: Any) -> Any:
        idles.append(f"IDLE on {self.host}:{self.port}")
        return await real_idle_start(self, *a, **kw)

    monkeypatch.setattr(aioimaplib.IMAP4, "idle_start", counting_idle_start)
    config = pool_config(rig, tmp_path, poll="2s")
    (s1,) = await seed(config, [(ALICE, BOB)])
    with capture_logs() as logs:
        async with running(config) as daemon:
            eng = daemon.engagement
            assert eng is not None
            w = eng.watchers[BOB]
            await wait_until("bob connected", lambda: w.connected, 10)
            assert "IDLE" not in w.caps and "MOVE" in w.caps
            await asyncio.sleep(0.5)  # the first scan is over: only a poll can find what comes next
            delivered = time.monotonic()
            await deliver(rig, config, s1)

            def received() -> bool:
                return any(e["event"] == "warmup mail received" and e.get("account") == BOB for e in logs)

            await wait_until("bob's poll finds the message", received, 3 * 2.4 + 1)
            found_after = time.monotonic() - delivered

            async def opened() -> bool:
                return any(m["headers"]["X-Warmup-Id"] == str(s1.id) and "\\Seen" in m["flags"]
                           for m in await messages(rig, BOB))

            await wait_until("bob opened it", opened, 10)
    assert found_after < 3 * 2.4 + 1
    assert idles == []  # never IDLEd on a server that does not offer it
    connected = [e for e in logs if e["event"] == "imap connected" and e.get("account") == BOB]
    assert connected and connected[0]["idle"] is False
    with db(config) as con:
        assert con.execute("SELECT placement FROM received WHERE account=? AND send_id=?",
                           (BOB, s1.id)).fetchone() == ("inbox",)
    assert [(k, st) for _, k, st, _, _ in actions_of(config, BOB)] == [("open", "done")]


# --------------------------------------------------------------------------- the receiver's windows


def berlin_account(tmp: Path) -> Account:
    """Europe/Berlin, Monday to Friday, German public holidays, the built-in windows
    (09:00-18:00 local, in three periods)."""
    data = {
        "daemon": {"state_dir": str(tmp / "state"), "socket": str(tmp / "sock")},
        "defaults": {"timezone": "Europe/Berlin", "holidays": "DE",
                     "engagement": {"delay": "3m-4h"}},
        "accounts": [{"email": BOB, "start_date": "2025-01-01", "extra_recipients": ["x@example.test"],
                      "smtp": {"host": "127.0.0.1", "port": 25, "security": "none", "password": "pw"}}],
    }
    return build_config(data, tmp / "config.toml", {}).accounts[0]


BERLIN = ZoneInfo("Europe/Berlin")


def at(y: int, mo: int, d: int, h: int, mi: int = 0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=BERLIN).timestamp()


def local(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, BERLIN)


def test_next_window_moves_evening_action_over_weekend_and_dst(tmp_path: Path) -> None:
    acc = berlin_account(tmp_path)
    rng = random.Random(5)
    # Friday 28 March 2025, 18:30 CET: after the last window. Saturday and Sunday are
    # no sending days, and the clocks go forward on Sunday: Monday 09:00 CEST.
    r = imap_mod.next_window(acc, at(2025, 3, 28, 18, 30), rng)
    assert r == at(2025, 3, 31, 9, 0) == datetime(2025, 3, 31, 7, 0, tzinfo=ZoneInfo("UTC")).timestamp()
    # with a spread, a random point of the first 3 minutes of that window
    for _ in range(50):
        r = imap_mod.next_window(acc, at(2025, 3, 28, 18, 30), rng, spread=180)
        assert at(2025, 3, 31, 9, 0) <= r <= at(2025, 3, 31, 9, 3)
    # inside a window: unchanged; early morning: that day's 09:00
    assert imap_mod.next_window(acc, at(2025, 3, 27, 15, 17), rng) == at(2025, 3, 27, 15, 17)
    assert imap_mod.next_window(acc, at(2025, 3, 27, 6, 45), rng) == at(2025, 3, 27, 9, 0)
    # Thursday 17 April 18:30: Good Friday, the weekend and Easter Monday are skipped
    assert imap_mod.next_window(acc, at(2025, 4, 17, 18, 30), rng) == at(2025, 4, 22, 9, 0)


def test_human_delays_land_in_the_receivers_windows(tmp_path: Path) -> None:
    """What on_message plans: t + human_delay, then next_window (spread delay_min)."""
    acc = berlin_account(tmp_path)
    eng = acc.engagement
    rng = random.Random(9)
    holidays = {date(2025, 4, 18), date(2025, 4, 21), date(2025, 5, 1)}
    start, end = at(2025, 3, 24, 0), at(2025, 5, 5, 0)
    moved = 0
    for _ in range(3000):
        t = start + rng.random() * (end - start)
        want = t + imap_mod.human_delay(eng.delay_min, eng.delay_max, rng)
        r = imap_mod.next_window(acc, want, rng, spread=eng.delay_min)
        lt = local(r)
        assert r >= want
        assert lt.weekday() < 5 and lt.date() not in holidays, lt
        assert 9 * 60 <= lt.hour * 60 + lt.minute < 18 * 60, lt
        lw = local(want)
        if lw.weekday() < 5 and lw.date() not in holidays and 9 <= lw.hour < 18:
            assert r == want
        else:
            moved += 1
            # the next opening, not a later one: at most delay_min into a 09:00 opening
            assert lt.hour == 9 and lt.minute < 3 + 1
            assert (lt.date() - lw.date()).days <= 5
    assert moved > 300  # the draw did land outside the windows often enough to tell
