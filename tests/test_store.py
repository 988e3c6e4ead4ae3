"""The state database: migrations, refusing foreign files, plans, transitions, cleanup."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest

from warmupd.planner import PlannedSend
from warmupd.store import (
    APPLICATION_ID,
    MIGRATIONS,
    SCHEMA_VERSION,
    Store,
    StoreError,
    now_ms,
)

DAY = "2026-03-04"
BASE = 1_772_614_800.0  # 2026-03-04 09:00 UTC


def sends(n: int, *, start: float = BASE, who: str = "b@example.com") -> list[PlannedSend]:
    return [PlannedSend(start + 300.123 * i, "peak" if i % 2 else "low", who, f"<m{start}-{i}@example.com>")
            for i in range(n)]


def pragma(path: Path, name: str) -> int:
    con = sqlite3.connect(path)
    try:
        return con.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        con.close()


def columns(path: Path, table: str) -> set[str]:
    con = sqlite3.connect(path)
    try:
        return {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
    finally:
        con.close()


@pytest.fixture
async def store(tmp_path: Path):
    s = await Store.open(tmp_path / "state" / "warmupd.db")
    try:
        yield s
    finally:
        await s.close()


# ---------------------------------------------------------------- opening files


async def test_fresh_file_migrates_to_latest(tmp_path: Path) -> None:
    path = tmp_path / "new" / "warmupd.db"
    s = await Store.open(path)
    assert await s.schema_version() == SCHEMA_VERSION
    await s.close()
    assert pragma(path, "user_version") == SCHEMA_VERSION
    assert pragma(path, "application_id") == APPLICATION_ID
    assert {"bounced", "in_reply_to", "depth"} <= columns(path, "sends")
    # Opening again is a no-op.
    s = await Store.open(path)
    assert await s.schema_version() == SCHEMA_VERSION
    await s.close()


async def test_old_file_upgrades_in_place_keeping_rows(tmp_path: Path) -> None:
    path = tmp_path / "warmupd.db"
    con = sqlite3.connect(path)
    con.executescript(MIGRATIONS[0])
    con.execute("PRAGMA user_version=1")
    con.execute(f"PRAGMA application_id={APPLICATION_ID}")
    con.execute("INSERT INTO accounts (email, warmup_day, advanced_through, updated_ms) "
                "VALUES ('a@example.com', 7, '2026-03-03', 1)")
    con.execute("INSERT INTO plan_batches VALUES ('a@example.com', '2026-03-03', 1, 1, 7, 14, 1)")
    con.execute("INSERT INTO sends (id, account, local_date, at_ms, period, recipient, message_id, "
                "status, created_ms, updated_ms) VALUES (1, 'a@example.com', '2026-03-03', 5, 'peak', "
                "'b@example.com', '<x@y>', 'sent', 1, 1)")
    con.commit()
    con.close()
    assert "bounced" not in columns(path, "sends")

    s = await Store.open(path)
    try:
        assert await s.schema_version() == SCHEMA_VERSION
        states = await s.account_states()
        assert states["a@example.com"].warmup_day == 7
        assert states["a@example.com"].advanced_through == "2026-03-03"
        rows = await s.day_rows("a@example.com", "2026-03-03")
        assert [(r.id, r.status, r.message_id) for r in rows] == [(1, "sent", "<x@y>")]
        # New ids continue after the old ones.
        keys = await s.insert_plan([("a@example.com", DAY, 8, 16, sends(2))])
        assert [k[1] for k in keys] == [2, 3]
    finally:
        await s.close()
    assert {"bounced", "in_reply_to", "depth"} <= columns(path, "sends")
    assert pragma(path, "user_version") == SCHEMA_VERSION


async def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "warmupd.db"
    s = await Store.open(path)
    await s.close()
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version={SCHEMA_VERSION + 5}")
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match=f"version {SCHEMA_VERSION + 5}"):
        await Store.open(path)
    assert path.read_bytes() == before


async def test_foreign_sqlite_file_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE recipes (name TEXT)")
    con.execute("INSERT INTO recipes VALUES ('soup')")
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="another program"):
        await Store.open(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]  # no -wal/-shm left behind


async def test_non_sqlite_file_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database\n" * 100)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not a SQLite database"):
        await Store.open(path)
    assert path.read_bytes() == before


# ---------------------------------------------------------------- plans and reads


async def test_insert_plan_round_trip(store: Store) -> None:
    a_sends, c_sends = sends(5), sends(3, start=BASE + 7, who="a@example.com")
    keys = await store.insert_plan([
        ("a@example.com", DAY, 3, 6, a_sends),
        ("c@example.com", DAY, 1, 2, c_sends),
        ("a@example.com", "2026-03-05", 4, 8, sends(2, start=BASE + 86400)),
    ])
    assert len(keys) == 10 and len({k[1] for k in keys}) == 10
    rows = await store.day_rows("a@example.com", DAY)
    assert [r.at_ms for r in rows] == [round(s.at * 1000) for s in a_sends]
    assert [(r.period, r.recipient, r.message_id) for r in rows] == \
        [(s.period, s.recipient, s.message_id) for s in a_sends]
    assert all(r.status == "pending" and r.kind == "new" and r.attempts == 0 for r in rows)
    assert await store.planned_days([DAY, "2026-03-05", "2026-03-06"]) == {
        ("a@example.com", DAY), ("c@example.com", DAY), ("a@example.com", "2026-03-05")}
    # What is not planned among given account-days (one statement, whatever the pool).
    assert sorted(await store.unplanned([("a@example.com", DAY), ("a@example.com", "2026-03-06"),
                                         ("c@example.com", "2026-03-05"), ("b@example.com", DAY)])) == [
        ("a@example.com", "2026-03-06"), ("b@example.com", DAY), ("c@example.com", "2026-03-05")]
    assert await store.unplanned([]) == []
    due = await store.due_keys([DAY])
    assert sorted(due) == sorted(k for k in keys if k[1] in {r.id for r in rows} or k[2] == "c@example.com")
    assert len(due) == 8
    assert await store.count_sent("a@example.com", DAY) == 0
    assert await store.day_counts([("a@example.com", DAY), ("c@example.com", DAY)]) == {
        "a@example.com": {"pending": 5}, "c@example.com": {"pending": 3}}
    # An empty plan is remembered as planned, with no rows.
    await store.insert_plan([("d@example.com", DAY, 1, 0, [])])
    assert ("d@example.com", DAY) in await store.planned_days([DAY])
    assert await store.unplanned([("d@example.com", DAY)]) == []
    assert await store.day_rows("d@example.com", DAY) == []


async def test_zone_counts_count_each_zone_on_its_own_date(store: Store) -> None:
    """Status of a large pool: per timezone, the day's sends by status, each zone on its
    own local date (the accounts array changes with the config, the dates with the day)."""
    await store.insert_plan([
        ("a@example.com", DAY, 1, 5, sends(5)),
        ("b@example.com", DAY, 1, 3, sends(3, start=BASE + 7)),
        ("c@example.com", "2026-03-05", 1, 2, sends(2, start=BASE + 86400)),
        ("c@example.com", DAY, 1, 4, sends(4, start=BASE + 20)),
    ])
    accounts = json.dumps([["a@example.com", "Europe/Paris"], ["b@example.com", "Asia/Tokyo"],
                           ["c@example.com", "Asia/Tokyo"]])
    assert await store.zone_counts(accounts, {"Europe/Paris": DAY, "Asia/Tokyo": DAY}) == {
        "Europe/Paris": {"pending": 5}, "Asia/Tokyo": {"pending": 7}}
    # Tokyo a day ahead: only c has a plan there; Paris still on DAY.
    assert await store.zone_counts(accounts, {"Europe/Paris": DAY, "Asia/Tokyo": "2026-03-05"}) == {
        "Europe/Paris": {"pending": 5}, "Asia/Tokyo": {"pending": 2}}


async def test_commit_send_persists_transition_and_event(tmp_path: Path) -> None:
    path = tmp_path / "warmupd.db"
    s = await Store.open(path)
    await s.insert_plan([("a@example.com", DAY, 1, 3, sends(3))])
    row = (await s.day_rows("a@example.com", DAY))[0]
    row.status, row.attempts, row.data_mark = "sending", 1, 1
    await s.commit_send(row, "pending", "connecting")
    row.status, row.sent_at_ms, row.smtp_reply = "sent", now_ms(), "250 2.0.0 queued"
    await s.commit_send(row, "sending", "250 queued")
    assert await s.count_sent("a@example.com", DAY) == 1
    assert (await s.day_counts([("a@example.com", DAY)]))["a@example.com"] == {"pending": 2, "sent": 1}
    assert [k[1] for k in await s.due_keys([DAY])] != [row.id]
    assert row.id not in [k[1] for k in await s.due_keys([DAY])]
    await s.close()

    s = await Store.open(path)
    try:
        got = await s.get_send(row.id)
        assert got is not None
        assert (got.status, got.attempts, got.data_mark, got.smtp_reply) == ("sent", 1, 1, "250 2.0.0 queued")
        assert await s.event_log(row.id) == [("pending", "sending", "connecting"),
                                             ("sending", "sent", "250 queued")]
    finally:
        await s.close()


async def test_failed_after_data_counts_as_sent(store: Store) -> None:
    await store.insert_plan([("a@example.com", DAY, 1, 3, sends(3))])
    r1, r2, _ = await store.day_rows("a@example.com", DAY)
    r1.status, r1.data_mark = "failed", 1  # DATA went out: the message may have been delivered
    r2.status = "failed"  # refused before DATA: nothing went out
    assert await asyncio.gather(store.commit_send(r1, "pending"), store.commit_send(r2, "pending")) == [True, True]
    assert await store.count_sent("a@example.com", DAY) == 1


async def test_retry_moves_the_due_time(store: Store) -> None:
    await store.insert_plan([("a@example.com", DAY, 1, 1, sends(1))])
    (row,) = await store.day_rows("a@example.com", DAY)
    row.retry_at_ms = row.at_ms + 600_000
    row.attempts = 1
    await store.commit_send(row, "pending", "421 try later")
    assert await store.due_keys([DAY]) == [(row.at_ms + 600_000, row.id, "a@example.com")]


async def test_skip_pending(store: Store) -> None:
    await store.insert_plan([("a@example.com", DAY, 1, 4, sends(4)),
                             ("b@example.com", DAY, 1, 2, sends(2, who="a@example.com"))])
    rows = await store.day_rows("a@example.com", DAY)
    rows[0].status = "sent"
    await store.commit_send(rows[0], "pending")
    ids = await store.skip_pending("a@example.com", "paused by operator", [DAY])
    assert sorted(ids) == sorted(r.id for r in rows[1:])
    after = await store.day_rows("a@example.com", DAY)
    assert [r.status for r in after] == ["sent", "skipped", "skipped", "skipped"]
    assert all(r.reason == "paused by operator" for r in after[1:])
    assert await store.event_log(ids[0]) == [("pending", "skipped", "paused by operator")]
    # The other account is untouched, and skipped rows are no longer due.
    assert (await store.day_counts([("b@example.com", DAY)]))["b@example.com"] == {"pending": 2}
    assert {k[2] for k in await store.due_keys([DAY])} == {"b@example.com"}
    assert await store.skip_pending("a@example.com", "again", [DAY]) == []


async def test_cleanup_deletes_only_finished_rows_of_old_days(store: Store) -> None:
    old, recent = "2026-01-10", DAY
    await store.insert_plan([("a@example.com", old, 1, 3, sends(3, start=BASE - 50 * 86400)),
                             ("a@example.com", recent, 9, 3, sends(3))])
    old_rows = await store.day_rows("a@example.com", old)
    new_rows = await store.day_rows("a@example.com", recent)
    for r, st in zip(old_rows, ["sent", "failed", "pending"], strict=True):
        r.status = st
        if st != "pending":
            await store.commit_send(r, "pending")
    for r in new_rows[:2]:
        r.status = "sent"
        await store.commit_send(r, "pending")

    n = await store.cleanup("2026-02-01", older_than_ms=0)
    assert n == 2
    assert [(r.id, r.status) for r in await store.day_rows("a@example.com", old)] == [(old_rows[2].id, "pending")]
    assert [r.status for r in await store.day_rows("a@example.com", recent)] == ["sent", "sent", "pending"]
    assert await store.planned_days([old]) == {("a@example.com", old)}  # still has a pending row

    # Once the old day's last row is finished, the whole day goes.
    last = old_rows[2]
    last.status = "skipped"
    await store.commit_send(last, "pending")
    assert await store.cleanup("2026-02-01", older_than_ms=0) == 1
    assert await store.day_rows("a@example.com", old) == []
    assert await store.planned_days([old]) == set()
    assert len(await store.day_rows("a@example.com", recent)) == 3


async def test_cleanup_drops_events_older_than_retention(store: Store) -> None:
    await store.insert_plan([("a@example.com", DAY, 1, 2, sends(2))])
    r1, r2 = await store.day_rows("a@example.com", DAY)
    r1.status = "sent"
    await store.commit_send(r1, "pending")
    await asyncio.sleep(0.02)
    cut = now_ms()
    await asyncio.sleep(0.02)
    r2.status = "sent"
    await store.commit_send(r2, "pending")
    await store.cleanup("2026-01-01", older_than_ms=cut)
    assert await store.event_log(r1.id) == []
    assert await store.event_log(r2.id) == [("pending", "sent", None)]
    # When every event is older than the retention, they all go.
    await store.cleanup("2026-01-01", older_than_ms=now_ms() + 3_600_000)
    assert await store.event_log(r2.id) == []
    assert await store.read(lambda con: con.execute("SELECT count(*) FROM events").fetchone()[0]) == 0


# ---------------------------------------------------------------- grouped commits


async def test_concurrent_commits_are_grouped_and_durable(tmp_path: Path) -> None:
    path = tmp_path / "warmupd.db"
    s = await Store.open(path)
    n = 60
    await s.insert_plan([("a@example.com", DAY, 30, n, sends(n))])
    rows = await s.day_rows("a@example.com", DAY)
    before = s.commits
    for i, r in enumerate(rows):
        r.status, r.sent_at_ms, r.smtp_reply = "sent", now_ms(), f"250 ok {i}"
    await asyncio.gather(*(s.commit_send(r, "pending", f"sent {r.id}") for r in rows))
    used = s.commits - before
    assert 1 <= used < n, f"{n} concurrent commits took {used} transactions"

    # Every caller returned only once its change was committed: another
    # connection sees all of them before the store is closed.
    con = sqlite3.connect(path)
    try:
        statuses = dict(con.execute("SELECT id, status FROM sends"))
        events = con.execute("SELECT count(*) FROM events WHERE to_status='sent'").fetchone()[0]
    finally:
        con.close()
    assert set(statuses.values()) == {"sent"} and len(statuses) == n
    assert events == n
    await s.close()

    s = await Store.open(path)
    try:
        got = await s.day_rows("a@example.com", DAY)
        assert [(r.status, r.smtp_reply) for r in got] == [("sent", f"250 ok {i}") for i in range(n)]
        assert await s.count_sent("a@example.com", DAY) == n
        assert await s.event_log(rows[17].id) == [("pending", "sent", f"sent {rows[17].id}")]
    finally:
        await s.close()


async def test_commit_of_a_bad_row_fails_its_callers(store: Store) -> None:
    await store.insert_plan([("a@example.com", DAY, 1, 2, sends(2))])
    r1, r2 = await store.day_rows("a@example.com", DAY)
    r1.status = "sent"
    r2.status = None  # type: ignore[assignment]  # NOT NULL: the grouped transaction fails
    results = await asyncio.gather(store.commit_send(r1, "pending"), store.commit_send(r2, "pending"),
                                   return_exceptions=True)
    assert any(isinstance(x, Exception) for x in results)
    # The store stays usable afterwards.
    r1.status = "sent"
    await store.commit_send(r1, "pending")
    assert (await store.get_send(r1.id)).status == "sent"  # type: ignore[union-attr]


async def test_day_counts_for_a_large_pool_match_per_account_counts(tmp_path: Path) -> None:
    """Many accounts take the grouped path; each account is counted on its own date only."""
    store = await Store.open(tmp_path / "warmupd.db")
    other = "2026-12-02"
    try:
        days = [(f"u{i:02d}@example.com", DAY, 1, 3, sends(3)) for i in range(12)]
        days += [(f"u{i:02d}@example.com", other, 1, 2, sends(2)) for i in range(12)]
        await store.insert_plan(days)
        row = (await store.day_rows("u03@example.com", DAY))[0]
        row.status = "sent"
        await store.commit_send(row, "pending")
        pairs = [(f"u{i:02d}@example.com", DAY if i % 2 else other) for i in range(12)]
        grouped = await store.day_counts(pairs)
        assert len(grouped) == 12
        for account, day in pairs:
            assert grouped[account] == (await store.day_counts([(account, day)]))[account]
        assert grouped["u03@example.com"] == {"pending": 2, "sent": 1}
        assert grouped["u02@example.com"] == {"pending": 2}
    finally:
        await store.close()


async def test_wal_is_checkpointed_by_the_store_not_by_commits(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # A commit that crosses SQLite's auto-checkpoint mark copies the whole WAL into the
    # database before it returns (up to 0.55 s here at 4 MB): a send's mark behind it is
    # late by as much. The store turns that off and checkpoints on a thread of its own.
    monkeypatch.setattr(Store, "CHECKPOINT_EVERY", 0.01)
    path = tmp_path / "state" / "warmupd.db"
    s = await Store.open(path)
    try:
        ran = asyncio.Event()
        real = s.checkpoint

        async def watched() -> tuple[int, int, int]:
            out = await real()
            ran.set()
            return out

        monkeypatch.setattr(s, "checkpoint", watched)
        wal = Path(f"{path}-wal")
        for k in range(6):  # ~6 MB of plan: more than SQLite's 1,000-page (4 MB) mark
            await s.insert_plan([(f"a{k}@example.com", DAY, 1, 5000,
                                  sends(5000, start=BASE + k, who="b@example.com"))])
        assert wal.stat().st_size > 4 * 1024 * 1024
        await asyncio.wait_for(ran.wait(), 10)  # the store's own round, past CHECKPOINT_AT
        s.CHECKPOINT_AT = 1 << 60  # no more checkpoints of its own: the test drives the rest
        for k in range(6, 12):
            await s.insert_plan([(f"a{k}@example.com", DAY, 1, 5000,
                                  sends(5000, start=BASE + k, who="b@example.com"))])
        busy, frames, copied = await real()
        assert busy == 0 and frames > 1000 and copied == frames  # no commit checkpointed on its own
    finally:
        await s.close()
    con = sqlite3.connect(path)
    try:
        assert con.execute("SELECT count(*) FROM sends").fetchone()[0] == 12 * 5000
    finally:
        con.close()


async def test_a_large_plan_stops_between_chunks_when_the_daemon_stops(tmp_path: Path) -> None:
    # The daemon's stop must not wait for a plan of 100,000 account-days (it held a stop
    # for the whole shutdown_timeout): once ``stopping()`` says so, no further chunk is
    # begun; what was written is whole, and the rest is still unplanned for the next start.
    import random
    from datetime import date

    from warmupd.config import load_config
    from warmupd.planner import Pool
    from warmupd.planning import plan_and_persist

    (tmp_path / "pw").write_text("secret-pw\n")
    accounts = "".join(
        f'[[accounts]]\nemail = "u{i}@example.com"\nstart_date = 2026-01-05\n'
        f'smtp = {{ host = "127.0.0.1", port = 2525, security = "none", password_file = "pw" }}\n'
        for i in range(600))
    (tmp_path / "config.toml").write_text('[defaults]\ntimezone = "UTC"\n'
                                          'weekdays = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]\n'
                                          '[defaults.ramp]\nstart = 5\nstep = 1\nmax = 5\n' + accounts)
    cfg = load_config(tmp_path / "config.toml", env={})
    day = date(2026, 3, 4)
    items = [(a, day, 1, None, 0) for a in cfg.accounts]
    s = await Store.open(tmp_path / "state" / "warmupd.db")
    try:
        chunks: list[int] = []
        n = await plan_and_persist(s, items, random.Random(1), Pool([a.email for a in cfg.accounts]),
                                   chunk=100, progress=chunks.append, stopping=lambda: len(chunks) >= 1)
        planned = await s.planned_days([day.isoformat()])
        assert 100 <= len(planned) < 600  # stopped after a chunk or two, each one whole
        assert n == 5 * len(planned)
        assert chunks[-1] == len(planned)
        rest = [it for it in items if (it[0].email, day.isoformat()) not in planned]
        assert len(rest) == 600 - len(planned)  # left for the next start's plan_missing
    finally:
        await s.close()


@pytest.mark.skipif(sys.platform != "linux", reason="nice is per thread on Linux only")
async def test_background_threads_run_below_the_loops_priority(tmp_path: Path) -> None:
    # While a large plan is written, SQLite on the writer and the cold reader filled both
    # cores and a send's timer waited for one: they run at a lower priority than the
    # loop's thread; the hot reader (the send path) and the checkpointer do not.
    import threading

    s = await Store.open(tmp_path / "state" / "warmupd.db")
    try:
        base = os.getpriority(os.PRIO_PROCESS, 0)
        nice = {t.name.rsplit("_", 1)[0]: os.getpriority(os.PRIO_PROCESS, t.native_id or 0)
                for t in threading.enumerate() if t.name.startswith("warmupd-store-")}
        assert nice == {"warmupd-store-writer": min(19, base + Store.BACKGROUND_NICE),
                        "warmupd-store-cold": min(19, base + Store.BACKGROUND_NICE),
                        "warmupd-store-hot": base, "warmupd-store-checkpoint": base}
    finally:
        await s.close()
