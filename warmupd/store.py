"""The only module with SQL: schema, migrations and every query.

SQLite through aiosqlite, WAL, one connection that does all the writing.
Instants are stored as integer milliseconds since the epoch (UTC).

Durability: ``synchronous=FULL`` so that a committed transition survives a
power cut, not only a crash of the process. State transitions of sends are
grouped by ``Store.commit_send`` (a few ms at most) so that many concurrent
sends share one fsync; each caller still waits until its own change is on disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from itertools import repeat
from pathlib import Path
from typing import Any

import aiosqlite

APPLICATION_ID = 0x57524D55  # "WRMU": marks a file as a warmupd database
STATUSES = ("pending", "sending", "sent", "failed", "skipped", "uncertain")
FINISHED = ("sent", "failed", "skipped", "uncertain")


class StoreError(Exception):
    """The database cannot be used; the message says why and what to do."""


MIGRATIONS: list[str] = [
    # 1: the base schema
    """
    CREATE TABLE accounts (
        email            TEXT PRIMARY KEY,
        warmup_day       INTEGER NOT NULL,
        advanced_through TEXT NOT NULL,      -- local date up to which days were counted
        paused_reason    TEXT,
        paused_ms        INTEGER,
        hold_until       TEXT,               -- local date (exclusive) while the ramp is held
        hold_reason      TEXT,
        updated_ms       INTEGER NOT NULL
    );
    -- One row per planning of an account-day. The rows it planned have the
    -- contiguous ids first_id..last_id (one writer hands them out in order), so
    -- every query of the daemon reaches the sends through this small table and
    -- the primary key of ``sends``: a day's rows of an account, what is pending
    -- for today and the next rollover, and cleanup by age. ``sends`` carries no
    -- secondary index, which keeps planning 4 M sends a day fast.
    CREATE TABLE plan_batches (
        account    TEXT NOT NULL,
        local_date TEXT NOT NULL,
        first_id   INTEGER NOT NULL,
        last_id    INTEGER NOT NULL,         -- first_id - 1 when nothing was planned
        warmup_day INTEGER NOT NULL,
        target     INTEGER NOT NULL,
        planned_ms INTEGER NOT NULL,
        PRIMARY KEY (account, local_date, first_id)
    ) WITHOUT ROWID;
    CREATE INDEX plan_batches_date ON plan_batches(local_date);
    CREATE TABLE sends (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- the X-Warmup-Id header
        account     TEXT NOT NULL,
        local_date  TEXT NOT NULL,
        at_ms       INTEGER NOT NULL,        -- the planned instant; never changes
        period      TEXT NOT NULL,
        recipient   TEXT NOT NULL,
        message_id  TEXT NOT NULL,
        kind        TEXT NOT NULL DEFAULT 'new',   -- new | reply
        status      TEXT NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 0,
        retry_at_ms INTEGER,
        data_mark   INTEGER NOT NULL DEFAULT 0,    -- 1 once DATA was about to be issued
        last_error  TEXT,
        reason      TEXT,
        smtp_reply  TEXT,
        sent_at_ms  INTEGER,
        created_ms  INTEGER NOT NULL,
        updated_ms  INTEGER NOT NULL
    );
    CREATE TABLE events (
        id          INTEGER PRIMARY KEY,
        at_ms       INTEGER NOT NULL,
        send_id     INTEGER,
        account     TEXT NOT NULL,
        from_status TEXT,
        to_status   TEXT NOT NULL,
        detail      TEXT
    );
    CREATE INDEX events_send ON events(send_id);
    """,
    # 2: engagement over IMAP: what each receiving account saw, and the actions it takes
    """
    CREATE TABLE received (
        send_id     INTEGER NOT NULL,
        account     TEXT NOT NULL,           -- the receiving account
        folder      TEXT NOT NULL,
        placement   TEXT NOT NULL,           -- inbox | junk
        local_date  TEXT NOT NULL,           -- the receiver's local date
        seen_ms     INTEGER NOT NULL,
        delay_ms    INTEGER,                 -- since the send's sent_at
        depth       INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (send_id, account)
    );
    CREATE INDEX received_day ON received(account, local_date);
    CREATE TABLE actions (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        account     TEXT NOT NULL,           -- the account that acts (the receiver)
        send_id     INTEGER NOT NULL,        -- the warmup send it acts on
        kind        TEXT NOT NULL,           -- open | rescue | reply | archive
        due_ms      INTEGER NOT NULL,
        status      TEXT NOT NULL,           -- pending | done | skipped | failed
        detail      TEXT,
        attempts    INTEGER NOT NULL DEFAULT 0,
        created_ms  INTEGER NOT NULL,
        updated_ms  INTEGER NOT NULL
    );
    CREATE INDEX actions_due ON actions(status, due_ms);
    ALTER TABLE sends ADD COLUMN bounced INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sends ADD COLUMN in_reply_to INTEGER;   -- for replies: the send replied to
    ALTER TABLE sends ADD COLUMN depth INTEGER NOT NULL DEFAULT 1;
    """,
    # 3: engagement: the texts of planned replies, and at most one action of a kind
    # per (acting account, message) so that planning them again is harmless
    """
    CREATE TABLE reply_texts (
        send_id     INTEGER PRIMARY KEY,     -- the reply (sends.id, kind 'reply')
        subject     TEXT NOT NULL,
        body        TEXT NOT NULL,
        in_reply_to TEXT NOT NULL,           -- the original's Message-ID
        refs        TEXT NOT NULL            -- the References header to write
    );
    CREATE UNIQUE INDEX actions_once ON actions(account, send_id, kind);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(slots=True)
class SendRow:
    id: int
    account: str
    local_date: str
    at_ms: int
    period: str
    recipient: str
    message_id: str
    kind: str
    status: str
    attempts: int
    retry_at_ms: int | None
    data_mark: int
    last_error: str | None
    reason: str | None
    smtp_reply: str | None
    sent_at_ms: int | None
    created_ms: int
    updated_ms: int

    @property
    def due_ms(self) -> int:
        return self.retry_at_ms if self.retry_at_ms is not None else self.at_ms


_SEND_COLS = ", ".join(f.name for f in fields(SendRow))
_MUTABLE = ("status", "attempts", "retry_at_ms", "data_mark", "last_error", "reason",
            "smtp_reply", "sent_at_ms", "updated_ms")
_UPDATE_SQL = f"UPDATE sends SET {', '.join(c + '=?' for c in _MUTABLE)} WHERE id=?"
_EVENT_SQL = ("INSERT INTO events (at_ms, send_id, account, from_status, to_status, detail) "
              "VALUES (?, ?, ?, ?, ?, ?)")
# insert_plan: the rows of each table as one JSON array of arrays (see Store.insert_plan).
_json = json.JSONEncoder(ensure_ascii=False, check_circular=False, separators=(",", ":")).encode


def _from_json(n: int) -> str:
    return ", ".join(f"json_extract(value, '$[{i}]')" for i in range(n)) + " FROM json_each(?1)"


_BATCHES_SQL = ("INSERT OR REPLACE INTO plan_batches (account, local_date, first_id, last_id, warmup_day, target, "
                "planned_ms) VALUES (?,?,?,?,?,?,?)")
_BATCHES_JSON_SQL = (_BATCHES_SQL.partition(" VALUES")[0] + " SELECT " + _from_json(7).replace(
    "json_extract(value, '$[2]')", "?2 + json_extract(value, '$[2]')").replace(
    "json_extract(value, '$[3]')", "?2 + json_extract(value, '$[3]')"))
_SENDS_SQL = ("INSERT INTO sends (id, account, local_date, at_ms, period, recipient, message_id, "
              "kind, status, created_ms, updated_ms) VALUES (?,?,?,?,?,?,?,?,'pending',?,?)")
# The days are unpacked once (MATERIALIZED), then each day's sends.
_SENDS_JSON_SQL = (_SENDS_SQL.partition(" VALUES")[0] + " WITH d AS MATERIALIZED (SELECT "
                   "json_extract(value, '$[0]') AS first_id, json_extract(value, '$[1]') AS account, "
                   "json_extract(value, '$[2]') AS local_date, json_extract(value, '$[3]') AS sends "
                   "FROM json_each(?1)) SELECT ?4 + d.first_id + s.key, d.account, d.local_date, "
                   + ", ".join(f"json_extract(s.value, '$[{i}]')" for i in range(4))
                   + ", ?2, 'pending', ?3, ?3 FROM d, json_each(d.sends) AS s")
_EVENTS_JSON_SQL = _EVENT_SQL.partition(" VALUES")[0] + " SELECT " + _from_json(6)


@dataclass(slots=True)
class PreparedPlan:
    """Planned days ready to write (Store.prepare_plan); ids relative to the first."""

    kind: str
    stamp: int
    count: int
    batches: list[tuple[Any, ...]]
    rows: list[tuple[Any, ...]]
    events: list[tuple[Any, ...]]
    ats: list[int]
    accounts: list[str]
    texts: tuple[str, str, str] | None


@dataclass(slots=True)
class AccountState:
    email: str
    warmup_day: int
    advanced_through: str
    paused_reason: str | None
    paused_ms: int | None
    hold_until: str | None
    hold_reason: str | None


def now_ms() -> int:
    return int(time.time() * 1000)


def check_file(path: Path) -> int:
    """Refuse, without writing to it, a file that is not a warmupd database
    or is newer than this code. Returns its schema version (0 for new)."""
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with path.open("rb") as f:
        header = f.read(16)
    if header != b"SQLite format 3\x00":
        raise StoreError(f"{path} is not a SQLite database; refusing to touch it: "
                         "point state_dir at a folder of its own")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        app_id = con.execute("PRAGMA application_id").fetchone()[0]
        version = con.execute("PRAGMA user_version").fetchone()[0]
        tables = con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path}: cannot read the database ({e}); refusing to touch it") from None
    finally:
        con.close()
    if app_id != APPLICATION_ID and (tables or version):
        raise StoreError(f"{path} is a SQLite database of another program; refusing to touch it: "
                         "point state_dir at a folder of its own")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path} has schema version {version}, newer than this warmupd knows "
                         f"({SCHEMA_VERSION}): upgrade warmupd or restore an older database")
    return int(version)


class Store:
    """The state database. Create with ``await Store.open(path)``."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self._batch: list[tuple[SendRow, str | None, str | None]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._next_id = 0
        self.commits = 0
        # One write transaction at a time on the one connection: a grouped commit of
        # flush() awaits between its statements, and a BEGIN of insert_plan,
        # skip_pending or cleanup coming in between fails ("within a transaction").
        self._txn = asyncio.Lock()
        # insert_plan through json_each (JSON built in and MATERIALIZED: 3.38+), else executemany
        self._json_insert = sqlite3.sqlite_version_info >= (3, 38, 0)

    # ------------------------------------------------------------ life cycle

    @classmethod
    async def open(cls, path: Path, *, synchronous: str = "FULL") -> Store:
        path.parent.mkdir(parents=True, exist_ok=True)
        version = check_file(path)
        conn = await aiosqlite.connect(path, isolation_level=None)
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute(f"PRAGMA synchronous={synchronous}")
            await conn.execute("PRAGMA foreign_keys=ON")
            await conn.execute("PRAGMA busy_timeout=5000")
            await conn.execute("PRAGMA cache_size=-262144")  # 256 MiB at most, for big plans
            store = cls(conn, path)
            await store._migrate(version)
            async with conn.execute("SELECT seq FROM sqlite_sequence WHERE name='sends'") as cur:
                row = await cur.fetchone()
            store._next_id = (row[0] if row else 0) + 1
        except BaseException:
            await conn.close()
            raise
        return store

    async def _migrate(self, version: int) -> None:
        for v in range(version, SCHEMA_VERSION):
            # Each step and its version bump commit together: a crash mid-way
            # leaves the file at the previous version, to be redone next start.
            script = f"BEGIN;\n{MIGRATIONS[v]}\nPRAGMA user_version={v + 1};\n"
            if v == 0:
                script += f"PRAGMA application_id={APPLICATION_ID};\n"
            await self.conn.executescript(script + "COMMIT;")

    async def close(self) -> None:
        await self.flush()
        await self.conn.close()

    async def schema_version(self) -> int:
        async with self.conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------ accounts

    async def account_states(self) -> dict[str, AccountState]:
        async with self.conn.execute(
            "SELECT email, warmup_day, advanced_through, paused_reason, paused_ms, hold_until, "
            "hold_reason FROM accounts"
        ) as cur:
            return {r[0]: AccountState(*r) for r in await cur.fetchall()}

    async def upsert_account(self, st: AccountState) -> None:
        await self.upsert_accounts([st])

    async def upsert_accounts(self, states: Sequence[AccountState]) -> None:
        """Store account states, all in one transaction."""
        if not states:
            return
        stamp = now_ms()
        rows = [(st.email, st.warmup_day, st.advanced_through, st.paused_reason, st.paused_ms,
                 st.hold_until, st.hold_reason, stamp) for st in states]

        def write(con: sqlite3.Connection) -> None:
            con.execute("BEGIN")
            try:
                con.executemany(
                    "INSERT INTO accounts (email, warmup_day, advanced_through, paused_reason, paused_ms, "
                    "hold_until, hold_reason, updated_ms) VALUES (?,?,?,?,?,?,?,?) "
                    "ON CONFLICT(email) DO UPDATE SET warmup_day=excluded.warmup_day, "
                    "advanced_through=excluded.advanced_through, paused_reason=excluded.paused_reason, "
                    "paused_ms=excluded.paused_ms, hold_until=excluded.hold_until, "
                    "hold_reason=excluded.hold_reason, updated_ms=excluded.updated_ms", rows)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

        async with self._txn:
            await self.conn._execute(write, self.conn._conn)

    async def sent_dates(self, account: str, after: str, until: str) -> list[str]:
        """Local dates in (after, until] on which ``account`` sent at least once."""
        async with self.conn.execute(
            "SELECT DISTINCT local_date FROM sends WHERE account=? AND local_date>? AND "
            "local_date<=? AND status='sent' ORDER BY local_date", (account, after, until)
        ) as cur:
            return [r[0] for r in await cur.fetchall()]

    # ------------------------------------------------------------ planning

    async def planned_days(self, local_dates: Iterable[str]) -> set[tuple[str, str]]:
        """The (account, local_date) pairs already planned among these dates."""
        dates = sorted(set(local_dates))
        if not dates:
            return set()
        q = ",".join("?" * len(dates))
        async with self.conn.execute(
            f"SELECT DISTINCT account, local_date FROM plan_batches WHERE local_date IN ({q})", dates
        ) as cur:
            return {(r[0], r[1]) for r in await cur.fetchall()}

    async def insert_plan(self, days: Sequence[tuple[str, str, int, int, Sequence[Any]]],
                          kind: str = "new") -> list[tuple[int, int, str]]:
        """Persist planned days in one transaction.

        ``days`` holds (account, local_date, warmup_day, target, sends), each send an
        object with at, period, recipient and message_id. Ids come from this single
        writer's counter. Returns (at_ms, id, account) of every new row: what the
        timer heap needs."""
        return await self.insert_prepared(self.prepare_plan(days, kind))

    def prepare_plan(self, days: Sequence[tuple[str, str, int, int, Sequence[Any]]],
                     kind: str = "new") -> PreparedPlan:
        """The CPU part of ``insert_plan``, without I/O or store state (ids relative to
        the first), so that a caller can prepare a chunk while the previous one is
        being written; ``insert_prepared`` writes it."""
        stamp = now_ms()
        off = 0
        rows: list[tuple[Any, ...]] = []  # per day: (first, account, local_date, [(at_ms, period, recipient, message_id)])
        batches: list[tuple[Any, ...]] = []
        ats: list[int] = []
        accounts: list[str] = []
        for account, local_date, wday, target, sends in days:
            n = len(sends)
            batches.append((account, local_date, off, off + n - 1, wday, target, stamp))
            day_ats = [int(s.at * 1000 + 0.5) for s in sends]
            rows.append((off, account, local_date,
                         [(a, s.period, s.recipient, s.message_id) for a, s in zip(day_ats, sends, strict=True)]))
            ats += day_ats
            accounts += repeat(account, n)
            off += n
        # One event per planned account-day, not per row: planning is one change.
        events = [(stamp, None, d[0], None, "planned",
                   f"{d[1]}: warmup day {d[2]}, target {d[3]}, {len(d[4])} sends") for d in days]
        # Each table gets its rows as one JSON text and one statement, so that SQLite
        # works without the GIL throughout: executemany takes the GIL back after every
        # row, which costs a switch interval each time the loop's thread is busy planning.
        texts = (_json(batches), _json(rows), _json(events)) if self._json_insert else None
        return PreparedPlan(kind, stamp, off, batches, rows, events, ats, accounts, texts)

    async def insert_prepared(self, plan: PreparedPlan) -> list[tuple[int, int, str]]:
        """Write what ``prepare_plan`` made, in one transaction; returns the timer keys."""
        await self.flush()
        async with self._txn:
            base = self._next_id
            # The whole transaction is one call on the store's thread, so that it runs
            # while the loop's thread plans on (a statement per round trip through the
            # loop would wait for that planning to finish).
            await self.conn._execute(self._insert_plan_sync, base, plan)
            self._next_id = base + plan.count
            self.commits += 1
        return list(zip(plan.ats, range(base, base + plan.count), plan.accounts, strict=True))

    def _insert_plan_sync(self, base: int, plan: PreparedPlan) -> None:
        """insert_plan's transaction, on the store's thread."""
        con: sqlite3.Connection = self.conn._conn  # type: ignore[assignment]
        texts = plan.texts
        con.execute("BEGIN")
        try:
            if texts is not None:
                try:
                    con.execute(_BATCHES_JSON_SQL, (texts[0], base))
                except sqlite3.OperationalError as e:  # an SQLite without json_each
                    if "json" not in str(e):
                        raise
                    self._json_insert = False
                    texts = None
            if texts is not None:
                con.execute(_SENDS_JSON_SQL, (texts[1], plan.kind, plan.stamp, base))
                con.execute(_EVENTS_JSON_SQL, (texts[2],))
            else:
                con.executemany(_BATCHES_SQL, [(a, d, base + f, base + last, w, t, st)
                                               for a, d, f, last, w, t, st in plan.batches])
                con.executemany(_SENDS_SQL, [(base + first + k, account, local_date, *r, plan.kind,
                                              plan.stamp, plan.stamp)
                                             for first, account, local_date, day in plan.rows
                                             for k, r in enumerate(day)])
                con.executemany(_EVENT_SQL, plan.events)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------ reading sends

    async def _rows(self, batch_cond: str, params: Sequence[Any], row_cond: str = "1") -> list[SendRow]:
        """Rows of the batches matching ``batch_cond`` (on b.) and ``row_cond`` (on s.)."""
        cols = ", ".join(f"s.{f.name}" for f in fields(SendRow))
        async with self.conn.execute(
            f"SELECT {cols} FROM plan_batches b JOIN sends s ON s.id BETWEEN b.first_id AND b.last_id "
            f"WHERE {batch_cond} AND {row_cond} ORDER BY s.at_ms, s.id", params
        ) as cur:
            return [SendRow(*r) for r in await cur.fetchall()]

    async def get_send(self, send_id: int) -> SendRow | None:
        async with self.conn.execute(f"SELECT {_SEND_COLS} FROM sends WHERE id=?", (send_id,)) as cur:
            r = await cur.fetchone()
        return SendRow(*r) if r else None

    async def get_sends(self, ids: Sequence[int]) -> dict[int, SendRow]:
        """Rows by id, in queries of at most 500 ids."""
        out: dict[int, SendRow] = {}
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            q = ",".join("?" * len(part))
            async with self.conn.execute(f"SELECT {_SEND_COLS} FROM sends WHERE id IN ({q})", part) as cur:
                for r in await cur.fetchall():
                    out[r[0]] = SendRow(*r)
        return out

    async def rows_on_dates(self, local_dates: Iterable[str], statuses: Sequence[str]) -> list[SendRow]:
        """Rows of these local dates (any account) with one of ``statuses``."""
        dates = sorted(set(local_dates))
        if not dates:
            return []
        dq, sq = ",".join("?" * len(dates)), ",".join("?" * len(statuses))
        return await self._rows(f"b.local_date IN ({dq})", [*dates, *statuses], f"s.status IN ({sq})")

    async def due_keys(self, local_dates: Iterable[str]) -> list[tuple[int, int, str]]:
        """(due_ms, id, account) of the pending sends of these local dates: the
        compact form the timer heap holds."""
        dates = sorted(set(local_dates))
        if not dates:
            return []
        q = ",".join("?" * len(dates))
        async with self.conn.execute(
            "SELECT coalesce(s.retry_at_ms, s.at_ms), s.id, s.account FROM plan_batches b "
            "JOIN sends s ON s.id BETWEEN b.first_id AND b.last_id "
            f"WHERE b.local_date IN ({q}) AND s.status='pending'", dates
        ) as cur:
            return [(r[0], r[1], r[2]) for r in await cur.fetchall()]

    async def day_rows(self, account: str, local_date: str) -> list[SendRow]:
        return await self._rows("b.account=? AND b.local_date=?", (account, local_date))

    async def by_message_id(self, message_id: str, account: str, local_dates: Sequence[str]) -> SendRow | None:
        """A planned send of ``account`` on one of ``local_dates`` with this Message-ID."""
        q = ",".join("?" * len(local_dates))
        rows = await self._rows(f"b.account=? AND b.local_date IN ({q})", (account, *local_dates),
                                "s.message_id=?") if local_dates else []
        if not rows:  # not among the expected days: look it up the slow way
            async with self.conn.execute(
                f"SELECT {_SEND_COLS} FROM sends WHERE account=? AND message_id=?",
                (account, message_id)) as cur:
                r = await cur.fetchone()
            return SendRow(*r) if r else None
        return rows[0]

    async def count_sent(self, account: str, local_date: str) -> int:
        """Sends that count against the day's target: made, or possibly made."""
        async with self.conn.execute(
            "SELECT count(*) FROM plan_batches b JOIN sends s ON s.id BETWEEN b.first_id AND b.last_id "
            "WHERE b.account=? AND b.local_date=? AND (s.status IN ('sent', 'sending', 'uncertain') "
            "OR (s.status='failed' AND s.data_mark=1))", (account, local_date)) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def day_counts(self, pairs: Iterable[tuple[str, str]]) -> dict[str, dict[str, int]]:
        """{account: {status: n}} for the given (account, local_date) pairs.

        One account: one small query. Many: one grouped query per local date (a
        pool's "today" spans two or three dates), instead of a query per account."""
        wanted = dict(pairs)
        out: dict[str, dict[str, int]] = {a: {} for a in wanted}
        if len(wanted) <= 8:
            for account, day in wanted.items():
                async with self.conn.execute(
                    "SELECT s.status, count(*) FROM plan_batches b JOIN sends s ON s.id BETWEEN "
                    "b.first_id AND b.last_id WHERE b.account=? AND b.local_date=? GROUP BY s.status",
                    (account, day)) as cur:
                    out[account] = {r[0]: r[1] for r in await cur.fetchall()}
            return out
        for day in sorted(set(wanted.values())):
            async with self.conn.execute(
                "SELECT b.account, s.status, count(*) FROM plan_batches b JOIN sends s ON s.id "
                "BETWEEN b.first_id AND b.last_id WHERE b.local_date=? GROUP BY b.account, s.status",
                (day,)) as cur:
                for account, status, n in await cur.fetchall():
                    if wanted.get(account) == day:
                        out[account][status] = n
        return out

    # ------------------------------------------------------------ state transitions

    async def commit_send(self, row: SendRow, from_status: str | None, detail: str | None = None) -> None:
        """Persist ``row``'s mutable fields and an event, durably, before returning.

        Callers that arrive within the same few milliseconds share one transaction."""
        row.updated_ms = now_ms()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._batch.append((row, from_status, detail))
        self._waiters.append(fut)
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush_soon())
        await fut

    async def _flush_soon(self) -> None:
        await asyncio.sleep(0.002)  # the bounded grouping delay
        await self.flush()

    async def flush(self) -> None:
        while self._batch:
            batch, waiters = self._batch, self._waiters
            self._batch, self._waiters = [], []
            updates = [tuple(getattr(r, c) for c in _MUTABLE) + (r.id,) for r, _, _ in batch]
            events = [(r.updated_ms, r.id, r.account, f, r.status, d) for r, f, d in batch]

            def write(con: sqlite3.Connection, updates: list[Any] = updates,
                      events: list[Any] = events) -> None:
                # The whole transaction in one call on the store's thread: no other
                # statement can come in between, and no loop round trip per step.
                con.execute("BEGIN")
                try:
                    con.executemany(_UPDATE_SQL, updates)
                    con.executemany(_EVENT_SQL, events)
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise

            await self._txn.acquire()
            try:
                await self.conn._execute(write, self.conn._conn)
                self.commits += 1
            except BaseException as e:
                for w in waiters:
                    if not w.done():
                        w.set_exception(e if isinstance(e, Exception) else StoreError(str(e)))
                if not isinstance(e, Exception):
                    raise
                continue
            finally:
                self._txn.release()
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    async def skip_pending(self, account: str, reason: str, local_dates: Sequence[str]) -> list[int]:
        """Mark an account's pending sends of these dates skipped (pause, removal,
        re-plan); returns their ids."""
        await self.flush()
        q = ",".join("?" * len(local_dates))
        stamp = now_ms()
        async with self._txn:
            await self.conn.execute("BEGIN")
            try:
                async with self.conn.execute(
                    "SELECT s.id FROM plan_batches b JOIN sends s ON s.id BETWEEN b.first_id AND b.last_id "
                    f"WHERE b.account=? AND b.local_date IN ({q}) AND s.status='pending'",
                    (account, *local_dates)) as cur:
                    ids = [r[0] for r in await cur.fetchall()]
                await self.conn.executemany(
                    "UPDATE sends SET status='skipped', reason=?, retry_at_ms=NULL, updated_ms=? WHERE id=?",
                    [(reason, stamp, i) for i in ids])
                await self.conn.executemany(
                    _EVENT_SQL, [(stamp, i, account, "pending", "skipped", reason) for i in ids])
                await self.conn.execute("COMMIT")
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
        return ids

    async def skip_stale(self, before_date: str, reason: str) -> int:
        """Pending rows of days before ``before_date`` can never be sent in time."""
        await self.flush()
        stamp = now_ms()
        cur = await self.conn.execute(
            "UPDATE sends SET status='skipped', reason=?, updated_ms=? WHERE id IN ("
            "SELECT s.id FROM plan_batches b JOIN sends s ON s.id BETWEEN b.first_id AND b.last_id "
            "WHERE b.local_date < ? AND s.status='pending')", (reason, stamp, before_date))
        return cur.rowcount

    async def cleanup(self, before_date: str, older_than_ms: int) -> int:
        """Delete finished rows of days before ``before_date`` and older events."""
        await self.flush()
        q = ",".join("?" * len(FINISHED))
        await self._txn.acquire()
        try:
            await self.conn.execute("BEGIN")
        except BaseException:
            self._txn.release()
            raise
        try:
            cur = await self.conn.execute(
                f"DELETE FROM sends WHERE status IN ({q}) AND id IN ("
                "SELECT s.id FROM plan_batches b JOIN sends s ON s.id BETWEEN b.first_id AND b.last_id "
                "WHERE b.local_date < ?)", (*FINISHED, before_date))
            n = cur.rowcount
            await self.conn.execute(
                "DELETE FROM plan_batches WHERE local_date < ? AND NOT EXISTS (SELECT 1 FROM sends s "
                "WHERE s.id BETWEEN plan_batches.first_id AND plan_batches.last_id)", (before_date,))
            # Events are appended in time order, so their ids order them by age.
            # With no event that recent, every event is older: all go.
            await self.conn.execute(
                "DELETE FROM events WHERE id < coalesce((SELECT min(id) FROM events WHERE at_ms >= ?), "
                "(SELECT max(id) + 1 FROM events), 0)", (older_than_ms,))
            await self.conn.execute("COMMIT")
        except BaseException:
            await self.conn.execute("ROLLBACK")
            raise
        finally:
            self._txn.release()
        return n

    async def event_log(self, send_id: int) -> list[tuple[str | None, str, str | None]]:
        async with self.conn.execute(
            "SELECT from_status, to_status, detail FROM events WHERE send_id=? ORDER BY id", (send_id,)
        ) as cur:
            return [(r[0], r[1], r[2]) for r in await cur.fetchall()]

    # ------------------------------------------------------------ engagement (imap.py)

    async def _atomic(self, fn: Any) -> Any:
        """Run ``fn(sqlite3_connection)`` as one unit on the store's thread.

        One call on aiosqlite's worker thread, so no other statement of the loop
        can come in between; a SAVEPOINT (not BEGIN) so that it also works while a
        grouped commit of ``flush`` holds a transaction open (it then commits with it)."""
        def run() -> Any:
            con = self.conn._conn
            con.execute("SAVEPOINT engagement")
            try:
                out = fn(con)
            except BaseException:
                con.execute("ROLLBACK TO engagement")
                con.execute("RELEASE engagement")
                raise
            con.execute("RELEASE engagement")
            return out

        return await self.conn._execute(run)

    async def send_links(self, send_id: int) -> tuple[int | None, int, int] | None:
        """(in_reply_to, depth, bounced) of a send, None when there is no such send."""
        async with self.conn.execute(
            "SELECT in_reply_to, depth, bounced FROM sends WHERE id=?", (send_id,)) as cur:
            r = await cur.fetchone()
        return (r[0], int(r[1]), int(r[2])) if r else None

    async def was_received(self, send_id: int, account: str) -> bool:
        async with self.conn.execute(
            "SELECT 1 FROM received WHERE send_id=? AND account=?", (send_id, account)) as cur:
            return await cur.fetchone() is not None

    async def record_received(self, send_id: int, account: str, folder: str, placement: str,
                              local_date: str, seen_ms: int, delay_ms: int | None, depth: int,
                              actions: Sequence[tuple[str, int, str | None]]) -> list[ActionRow] | None:
        """Record where a warmup message landed and plan the receiver's actions on it,
        together. None when it was recorded before (nothing is planned again)."""
        stamp = now_ms()

        def fn(con: sqlite3.Connection) -> list[ActionRow] | None:
            cur = con.execute(
                "INSERT OR IGNORE INTO received (send_id, account, folder, placement, local_date, "
                "seen_ms, delay_ms, depth) VALUES (?,?,?,?,?,?,?,?)",
                (send_id, account, folder, placement, local_date, seen_ms, delay_ms, depth))
            if cur.rowcount == 0:
                return None
            out = []
            for kind, due_ms, detail in actions:
                c = con.execute(
                    "INSERT OR IGNORE INTO actions (account, send_id, kind, due_ms, status, detail, "
                    "attempts, created_ms, updated_ms) VALUES (?,?,?,?,'pending',?,0,?,?)",
                    (account, send_id, kind, due_ms, detail, stamp, stamp))
                if c.rowcount:
                    out.append(ActionRow(int(c.lastrowid or 0), account, send_id, kind, due_ms,
                                         "pending", detail, 0, stamp, stamp))
            return out

        return await self._atomic(fn)

    async def pending_actions(self) -> list[ActionRow]:
        async with self.conn.execute(
            f"SELECT {_ACTION_COLS} FROM actions WHERE status='pending' ORDER BY due_ms") as cur:
            return [ActionRow(*r) for r in await cur.fetchall()]

    async def get_action(self, action_id: int) -> ActionRow | None:
        async with self.conn.execute(f"SELECT {_ACTION_COLS} FROM actions WHERE id=?", (action_id,)) as cur:
            r = await cur.fetchone()
        return ActionRow(*r) if r else None

    async def actions_for(self, send_id: int, account: str | None = None) -> list[ActionRow]:
        q = f"SELECT {_ACTION_COLS} FROM actions WHERE send_id=?"
        params: tuple[Any, ...] = (send_id,)
        if account is not None:
            q += " AND account=?"
            params = (send_id, account)
        async with self.conn.execute(q + " ORDER BY id", params) as cur:
            return [ActionRow(*r) for r in await cur.fetchall()]

    async def update_action(self, row: ActionRow) -> None:
        """Persist an action's status, due time, attempts and detail (durably)."""
        row.updated_ms = now_ms()
        await self.conn.execute(
            "UPDATE actions SET status=?, due_ms=?, attempts=?, detail=?, updated_ms=? WHERE id=?",
            (row.status, row.due_ms, row.attempts, row.detail, row.updated_ms, row.id))

    async def link_reply(self, action_id: int, reply_id: int, in_reply_to: int, depth: int,
                         subject: str, body: str, original_mid: str, refs: str) -> None:
        """Tie a planned reply to what it answers and mark its action done, together."""
        stamp = now_ms()

        def fn(con: sqlite3.Connection) -> None:
            con.execute("UPDATE sends SET in_reply_to=?, depth=?, kind='reply' WHERE id=?",
                        (in_reply_to, depth, reply_id))
            con.execute("INSERT OR REPLACE INTO reply_texts (send_id, subject, body, in_reply_to, refs) "
                        "VALUES (?,?,?,?,?)", (reply_id, subject, body, original_mid, refs))
            con.execute("UPDATE actions SET status='done', detail=?, updated_ms=? WHERE id=?",
                        (f"reply send {reply_id}", stamp, action_id))

        await self._atomic(fn)

    async def insert_reply(self, action_id: int, account: str, local_date: str, warmup_day: int, target: int,
                           send: Any, in_reply_to: int, depth: int, subject: str, body: str,
                           original_mid: str, refs: str) -> tuple[int, int]:
        """Plan one reply (its own one-row batch, kind 'reply', linked to the send it
        answers, with its text) and mark the reply action done, all in one transaction.
        Returns (at_ms, id)."""
        stamp = now_ms()
        at_ms = int(send.at * 1000 + 0.5)

        def fn(con: sqlite3.Connection) -> tuple[int, int]:
            nid = self._next_id
            # An empty batch of the same day holds (account, local_date, next id) already.
            while con.execute("SELECT 1 FROM plan_batches WHERE account=? AND local_date=? AND first_id=?",
                              (account, local_date, nid)).fetchone():
                nid += 1
            con.execute("INSERT INTO plan_batches (account, local_date, first_id, last_id, warmup_day, target, "
                        "planned_ms) VALUES (?,?,?,?,?,?,?)",
                        (account, local_date, nid, nid, warmup_day, target, stamp))
            con.execute("INSERT INTO sends (id, account, local_date, at_ms, period, recipient, message_id, kind, "
                        "status, in_reply_to, depth, created_ms, updated_ms) "
                        "VALUES (?,?,?,?,?,?,?,'reply','pending',?,?,?,?)",
                        (nid, account, local_date, at_ms, send.period, send.recipient, send.message_id,
                         in_reply_to, depth, stamp, stamp))
            con.execute("INSERT OR REPLACE INTO reply_texts (send_id, subject, body, in_reply_to, refs) "
                        "VALUES (?,?,?,?,?)", (nid, subject, body, original_mid, refs))
            con.execute(_EVENT_SQL, (stamp, nid, account, None, "pending", f"reply to send {in_reply_to}"))
            con.execute("UPDATE actions SET status='done', detail=?, updated_ms=? WHERE id=?",
                        (f"reply send {nid}", stamp, action_id))
            self._next_id = nid + 1
            return at_ms, nid

        await self.flush()
        return tuple(await self._atomic(fn))  # type: ignore[return-value]

    async def reply_text(self, send_id: int) -> tuple[str, str, str, str] | None:
        """(subject, body, original Message-ID, References) of a planned reply."""
        async with self.conn.execute(
            "SELECT subject, body, in_reply_to, refs FROM reply_texts WHERE send_id=?", (send_id,)) as cur:
            r = await cur.fetchone()
        return (r[0], r[1], r[2], r[3]) if r else None

    async def mark_bounced(self, send_id: int) -> bool:
        """Mark a send bounced; False when it was already (or there is no such send)."""
        cur = await self.conn.execute(
            "UPDATE sends SET bounced=1, updated_ms=? WHERE id=? AND bounced=0", (now_ms(), send_id))
        return cur.rowcount > 0

    async def bounce_window(self, account: str, since_date: str, n: int = 50) -> tuple[int, int]:
        """(bounced, total) over the last ``n`` sends ``account`` made (days from ``since_date``)."""
        async with self.conn.execute(
            "SELECT coalesce(sum(bounced), 0), count(*) FROM (SELECT s.bounced FROM plan_batches b "
            "JOIN sends s ON s.id BETWEEN b.first_id AND b.last_id WHERE b.account=? AND "
            "b.local_date>=? AND s.status IN ('sent', 'uncertain') ORDER BY s.id DESC LIMIT ?)",
            (account, since_date, n)) as cur:
            r = await cur.fetchone()
        return (int(r[0]), int(r[1])) if r else (0, 0)

    async def placement_counts(self, sender: str, local_dates: Sequence[str]) -> dict[str, int]:
        """{placement: n} of the warmup mail ``sender`` sent on these local dates, as received."""
        if not local_dates:
            return {}
        q = ",".join("?" * len(local_dates))
        async with self.conn.execute(
            "SELECT r.placement, count(*) FROM plan_batches b JOIN sends s ON s.id BETWEEN "
            "b.first_id AND b.last_id JOIN received r ON r.send_id=s.id WHERE b.account=? AND "
            f"b.local_date IN ({q}) GROUP BY r.placement", (sender, *local_dates)) as cur:
            return {r[0]: int(r[1]) for r in await cur.fetchall()}

    async def day_total(self, account: str, local_date: str) -> int:
        """New sends and replies of a day that count against its target: everything
        planned except what was skipped or failed before its DATA."""
        async with self.conn.execute(
            "SELECT count(*) FROM plan_batches b JOIN sends s ON s.id BETWEEN b.first_id AND b.last_id "
            "WHERE b.account=? AND b.local_date=? AND s.status!='skipped' AND "
            "NOT (s.status='failed' AND s.data_mark=0)", (account, local_date)) as cur:
            r = await cur.fetchone()
        return int(r[0]) if r else 0

    async def skip_ids(self, account: str, ids: Sequence[int], reason: str) -> list[int]:
        """Mark those of ``ids`` still pending skipped; returns the ones that were."""
        stamp = now_ms()

        def fn(con: sqlite3.Connection) -> list[int]:
            done = []
            for i in ids:
                cur = con.execute("UPDATE sends SET status='skipped', reason=?, retry_at_ms=NULL, "
                                  "updated_ms=? WHERE id=? AND status='pending'", (reason, stamp, i))
                if cur.rowcount:
                    done.append(i)
                    con.execute(_EVENT_SQL, (stamp, i, account, "pending", "skipped", reason))
            return done

        await self.flush()
        return list(await self._atomic(fn))

    async def engagement_day(self, account: str, local_date: str, start_ms: int, end_ms: int) -> dict[str, int]:
        """An account's engagement counts for one local day (bounds in ms for the actions)."""
        out = {"received": 0, "inbox": 0, "junk": 0, "rescued": 0, "opened": 0, "replied": 0,
               "bounced": 0, "sends": 0}
        async with self.conn.execute(
            "SELECT placement, count(*) FROM received WHERE account=? AND local_date=? GROUP BY placement",
            (account, local_date)) as cur:
            for placement, n in await cur.fetchall():
                out[placement] = out.get(placement, 0) + int(n)
                out["received"] += int(n)
        async with self.conn.execute(
            "SELECT kind, count(*) FROM actions WHERE status='done' AND due_ms>=? AND due_ms<? "
            "AND account=? GROUP BY kind", (start_ms, end_ms, account)) as cur:
            for kind, n in await cur.fetchall():
                if kind == "rescue":
                    out["rescued"] = int(n)
                elif kind == "open":
                    out["opened"] = int(n)
        async with self.conn.execute(
            "SELECT coalesce(sum(s.kind='reply' AND s.status IN ('sent', 'sending', 'uncertain')), 0), "
            "coalesce(sum(s.bounced), 0), coalesce(sum(s.status IN ('sent', 'sending', 'uncertain') "
            "OR (s.status='failed' AND s.data_mark=1)), 0) FROM plan_batches b JOIN sends s ON s.id "
            "BETWEEN b.first_id AND b.last_id WHERE b.account=? AND b.local_date=?",
            (account, local_date)) as cur:
            r = await cur.fetchone()
        if r:
            out["replied"], out["bounced"], out["sends"] = int(r[0]), int(r[1]), int(r[2])
        return out


@dataclass(slots=True)
class ActionRow:
    """One engagement action (table ``actions``): open, rescue, reply or archive."""

    id: int
    account: str
    send_id: int
    kind: str
    due_ms: int
    status: str
    detail: str | None
    attempts: int
    created_ms: int
    updated_ms: int


_ACTION_COLS = ", ".join(f.name for f in fields(ActionRow))
