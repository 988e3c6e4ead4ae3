"""The only module with SQL: schema, migrations and every query.

SQLite in WAL mode through the standard library's ``sqlite3``, each connection
on a thread of its own (this module owns those threads openly; no async
wrapper library in between):

* the **writer**: every write of the daemon is one function that runs as one
  transaction (``BEGIN IMMEDIATE`` .. ``COMMIT``) on this thread, through
  ``Store.write``. One thread, one transaction at a time: no write can join or
  roll back another's, and ids are handed out only here (``_reserve_ids``).
* the **hot reader**: the short reads of the firing and engagement paths.
* the **cold reader**: the control socket's reads (status over a whole pool can
  take a while), so they never queue behind a plan chunk on the writer nor hold
  up a send's row read. Under WAL readers never wait for the writer.

Every state change of a send is conditional on the status it expects
(``WHERE id=? AND status=?``): a change that loses a race (a pause, removal or
re-plan got there first) is dropped and reported to the caller, never written
over the winner.

Failures: a transient error (``SQLITE_BUSY``/``LOCKED``: another process holds the
write lock) is retried with backoff; a persistent one (disk full, I/O error,
read-only file) is retried too, more slowly, while ``Store.health`` says what
is wrong and since when, so that the daemon can stop starting sends, show it,
and let systemd's watchdog restart it past a bound. The transaction a retry
carries is never lost while the process lives. A corrupt file is fatal.

Instants are stored as integer milliseconds since the epoch (UTC).
Durability: ``synchronous=FULL`` so that a committed transition survives a
power cut, not only a crash of the process. State transitions of sends are
grouped by ``Store.commit_send`` (a few ms at most) so that many concurrent
sends share one fsync; each caller still waits until its own change is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from itertools import repeat
from pathlib import Path
from typing import Any, TypeVar

from . import faults
from .logs import get_logger

T = TypeVar("T")
log = get_logger("warmupd.store")

# bytes: a larger database is fully checked after start, not before (WARMUPD_FULL_CHECK_MAX for tests)
FULL_CHECK_MAX = int(os.environ.get("WARMUPD_FULL_CHECK_MAX", 512 << 20))
APPLICATION_ID = 0x57524D55  # "WRMU": marks a file as a warmupd database
STATUSES = ("pending", "sending", "sent", "failed", "skipped", "uncertain")
FINISHED = ("sent", "failed", "skipped", "uncertain")


def _owner_only(path: Path) -> None:
    """The database holds OAuth refresh tokens: readable by the daemon's user alone.
    SQLite gives its -wal and -shm files the database file's mode."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return  # opening the database reports the problem with its advice
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def read_only(path: Path, query: Callable[[sqlite3.Connection], T]) -> T | None:
    """``query`` on the database opened read-only, without a Store: for the offline
    commands (check, preview, simulate), which may run beside a daemon. None without a
    usable database of this version (or when the query fails)."""
    try:
        if not path.exists() or check_file(path) != SCHEMA_VERSION:
            return None
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except (StoreError, sqlite3.Error):
        return None
    try:
        return query(con)
    except sqlite3.Error:
        return None
    finally:
        con.close()


def stored_token_keys(path: Path) -> set[tuple[str, str]] | None:
    """(account, client) of every stored refresh token, for `warmupd check`."""
    return read_only(path, lambda con: {(r[0], r[1]) for r in con.execute(
        "SELECT account, client FROM oauth_tokens")})


class StoreError(Exception):
    """The database cannot be used; the message says why and what to do."""


class StoreClosed(StoreError):
    """The store was closed while a call waited for it."""


# SQLite's primary result codes (sqlite3.Error.sqlite_errorcode & 0xFF).
_TRANSIENT = {5: "busy", 6: "locked"}  # SQLITE_BUSY, SQLITE_LOCKED: another writer holds the lock
_PERSISTENT = {7: "out of memory", 8: "read-only", 10: "I/O error", 13: "disk full",
               14: "cannot open", 15: "locking protocol"}
_FATAL = {11: "corrupt", 26: "not a database"}  # SQLITE_CORRUPT, SQLITE_NOTADB


def classify(e: BaseException) -> str | None:
    """"transient", "persistent" or "fatal" for an SQLite error; None for anything else
    (a constraint or an SQL mistake: a bug, not the storage)."""
    if not isinstance(e, sqlite3.Error):
        return None
    code = (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF
    if code in _TRANSIENT:
        return "transient"
    if code in _PERSISTENT:
        return "persistent"
    if code in _FATAL:
        return "fatal"
    return None


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
    # 4: paging: only the near future is held in memory; the rest is found by these
    # small partial indexes (only pending rows are in them, so they shrink as the
    # day goes): planned instants, retry times, and rows left in 'sending'.
    """
    CREATE INDEX sends_due ON sends(at_ms) WHERE status='pending' AND retry_at_ms IS NULL;
    CREATE INDEX sends_retry ON sends(retry_at_ms) WHERE status='pending' AND retry_at_ms IS NOT NULL;
    CREATE INDEX sends_sending ON sends(id) WHERE status='sending';
    """,
    # 5: OAuth refresh tokens (oauth.py), one per account and client; never in the config.
    # A rotated token replaces the old one in one transaction: the old is gone only once
    # the new is durable.
    """
    CREATE TABLE oauth_tokens (
        account       TEXT NOT NULL,
        client        TEXT NOT NULL,
        refresh_token TEXT NOT NULL,
        updated_ms    INTEGER NOT NULL,
        PRIMARY KEY (account, client)
    ) WITHOUT ROWID;
    """,
    # 6: reputation: the last DNS and blocklist checks (reputation.py), each account's daily
    # health score, a ramp hold's cut and the graduation date; for mailbox hygiene the
    # received message's Message-ID and sender (the send's row is gone after the retention)
    # and whether its copies were cleaned up
    """
    ALTER TABLE accounts ADD COLUMN hold_cut REAL NOT NULL DEFAULT 1.0;
    ALTER TABLE accounts ADD COLUMN graduated TEXT;    -- local date of graduation
    CREATE TABLE reputation_checks (
        kind        TEXT NOT NULL,           -- dns (subject: a domain) | blocklist (name zone)
        subject     TEXT NOT NULL,
        checked_ms  INTEGER NOT NULL,
        verdict     TEXT NOT NULL,
        result      TEXT NOT NULL,           -- JSON
        PRIMARY KEY (kind, subject)
    ) WITHOUT ROWID;
    CREATE TABLE health_days (
        account     TEXT NOT NULL,
        local_date  TEXT NOT NULL,
        score       INTEGER NOT NULL,
        parts       TEXT NOT NULL,           -- JSON: the formula's inputs and points
        PRIMARY KEY (account, local_date)
    ) WITHOUT ROWID;
    ALTER TABLE received ADD COLUMN message_id TEXT;
    ALTER TABLE received ADD COLUMN sender TEXT;
    ALTER TABLE received ADD COLUMN cleaned INTEGER NOT NULL DEFAULT 0;       -- receiver's copy gone
    ALTER TABLE received ADD COLUMN sent_cleaned INTEGER NOT NULL DEFAULT 0;  -- sender's Sent copy gone
    CREATE INDEX received_mid ON received(message_id) WHERE message_id IS NOT NULL;
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


def _json_rows(rows: Iterable[Any]) -> str:
    """A JSON array of ``rows``, encoded one row at a time: on a store thread, one C
    encode of tens of thousands of rows keeps the GIL (and the event loop) for tens of ms."""
    return "[" + ",".join([_json(r) for r in rows]) + "]"


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


class PlanBuilder:
    """Planned days made ready to write, one day at a time (ids relative to the first).

    Each table gets its rows as one JSON text and one statement (``insert_prepared``),
    so that SQLite works without the GIL throughout: executemany takes the GIL back
    after every row. Each day is encoded as it is added (a fraction of a millisecond),
    so that building a chunk never holds the event loop for long."""

    def __init__(self, kind: str, json_insert: bool) -> None:
        self.kind = kind
        self.stamp = now_ms()
        self.days = 0
        self._json = json_insert
        self._off = 0
        self._rows: list[tuple[Any, ...]] = []
        self._batches: list[tuple[Any, ...]] = []
        self._events: list[tuple[Any, ...]] = []
        self._texts: tuple[list[str], list[str], list[str]] = ([], [], [])
        self._ats: list[int] = []
        self._accounts: list[str] = []

    def add_day(self, account: str, local_date: str, wday: int, target: int, sends: Sequence[Any]) -> None:
        n, off = len(sends), self._off
        batch = (account, local_date, off, off + n - 1, wday, target, self.stamp)
        day_ats = [int(s.at * 1000 + 0.5) for s in sends]
        row = (off, account, local_date,
               [(a, s.period, s.recipient, s.message_id) for a, s in zip(day_ats, sends, strict=True)])
        # One event per planned account-day, not per row: planning is one change.
        event = (self.stamp, None, account, None, "planned",
                 f"{local_date}: warmup day {wday}, target {target}, {n} sends")
        self._batches.append(batch)
        self._rows.append(row)
        self._events.append(event)
        if self._json:
            self._texts[0].append(_json(batch))
            self._texts[1].append(_json(row))
            self._texts[2].append(_json(event))
        self._ats += day_ats
        self._accounts += repeat(account, n)
        self._off += n
        self.days += 1

    @property
    def count(self) -> int:
        return self._off

    def finish(self) -> PreparedPlan:
        b, r, e = ("[" + ",".join(t) + "]" for t in self._texts)
        return PreparedPlan(self.kind, self.stamp, self._off, self._batches, self._rows, self._events,
                            self._ats, self._accounts, (b, r, e) if self._json else None)


@dataclass(slots=True)
class AccountState:
    email: str
    warmup_day: int
    advanced_through: str
    paused_reason: str | None
    paused_ms: int | None
    hold_until: str | None
    hold_reason: str | None
    hold_cut: float = 1.0  # the share of the target planned on held days
    graduated: str | None = None  # local date the account graduated


def now_ms() -> int:
    return int(time.time() * 1000)


_ACCOUNT_STATES_SQL = ("SELECT email, warmup_day, advanced_through, paused_reason, paused_ms, hold_until, "
                       "hold_reason, hold_cut, graduated FROM accounts")  # AccountState's fields, in order


def read_states(path: Path) -> dict[str, AccountState]:
    """The accounts' stored states, read-only, without a Store (for `warmupd simulate`
    beside a running daemon, and check and preview); empty without a usable database."""
    return read_only(path, lambda con: {r[0]: AccountState(*r) for r in con.execute(_ACCOUNT_STATES_SQL)}) or {}


def check_file(path: Path) -> int:
    """Refuse, without writing to it, a file that is not a warmupd database, is
    damaged, or is newer than this code. Returns its schema version (0 for new).

    Opened read-only: a damaged file is left byte for byte as it was. Anything but a
    regular file (a folder, a FIFO, a device) is refused before it is opened."""
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        return 0
    except OSError as e:
        raise StoreError(f"{path}: cannot read the database ({e.strerror}); refusing to touch "
                         "it: check the permissions of state_dir") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise StoreError(f"{path} is {kind}, not a database; refusing to touch it: "
                         "point state_dir at a folder of its own")
    if st.st_size == 0:
        return 0
    try:
        with path.open("rb") as f:
            header = f.read(16)
    except OSError as e:
        raise StoreError(f"{path}: cannot read the database ({e.strerror}); refusing to touch "
                         "it: check its permissions") from None
    if header != b"SQLite format 3\x00":
        raise StoreError(f"{path} is not a SQLite database; refusing to touch it: "
                         "point state_dir at a folder of its own")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise StoreError(f"{path}: cannot open the database ({e}); refusing to touch it: "
                         "check its permissions") from None
    try:
        app_id = con.execute("PRAGMA application_id").fetchone()[0]
        version = con.execute("PRAGMA user_version").fetchone()[0]
        tables = con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        # quick_check reads every page (not the index-vs-table cross checks of
        # integrity_check): a damaged file is caught here, before any write. It takes
        # about 0.4 s per 100 MB here; a larger file gets the cheap checks below now
        # and its full check in the background once the daemon runs (Store.verify).
        if st.st_size <= FULL_CHECK_MAX:
            problems = [r[0] for r in con.execute("PRAGMA quick_check(3)")]
        else:
            problems = ["ok"]
            for table in ("accounts", "plan_batches", "sends", "events"):
                con.execute(f"SELECT * FROM {table} ORDER BY rowid DESC LIMIT 1" if table != "plan_batches"
                            else "SELECT * FROM plan_batches LIMIT 1").fetchall()
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path}: cannot read the database ({e}); refusing to touch it: "
                         "restore a backup or move the file away to start afresh") from None
    finally:
        con.close()
    if problems != ["ok"]:
        what = "; ".join(" ".join(str(p).split()) for p in problems)
        raise StoreError(f"{path}: the database is damaged ({what}); refusing to "
                         "touch it: restore a backup or move the file away to start afresh")
    if app_id != APPLICATION_ID and (tables or version):
        raise StoreError(f"{path} is a SQLite database of another program; refusing to touch it: "
                         "point state_dir at a folder of its own")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path} has schema version {version}, newer than this warmupd knows "
                         f"({SCHEMA_VERSION}): upgrade warmupd or restore an older database")
    return int(version)


@dataclass
class Health:
    """What is wrong with the store now, if anything (``Store.health``)."""

    error: str | None = None   # one line: what failed and what to do
    kind: str | None = None    # "transient" | "persistent"
    since: float | None = None  # time.time() of the first failure of this spell
    retries: int = 0           # failed attempts in this spell
    spells: int = 0            # spells of trouble since start

    @property
    def ok(self) -> bool:
        return self.error is None

    def stalled_for(self, now: float) -> float:
        return 0.0 if self.since is None else max(0.0, now - self.since)


def _lower_priority(nice: int) -> None:
    """On the thread: raise its nice value by ``nice`` (Linux, where nice is per thread)."""
    if nice and sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)


class _Thread:
    """One sqlite3 connection and the one thread that uses it.

    The connection is created on that thread and never touched from another
    (sqlite3's own same-thread check stays on)."""

    def __init__(self, name: str, nice: int = 0) -> None:
        self.name = name
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"warmupd-{name}",
                                        initializer=_lower_priority, initargs=(nice,))
        self.con: sqlite3.Connection | None = None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def connect(self, path: Path, pragmas: Sequence[str]) -> None:
        """On the thread: open the connection (autocommit: transactions are explicit)."""
        con = sqlite3.connect(path, isolation_level=None)
        try:
            for p in pragmas:
                con.execute(p)
        except BaseException:
            con.close()
            raise
        self.con = con

    def conn(self) -> sqlite3.Connection:
        assert self.con is not None, f"store {self.name} connection is not open"
        return self.con

    def close_sync(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None

    async def close(self) -> None:
        try:
            await self.call(self.close_sync)
        finally:
            self._pool.shutdown(wait=True)


class Store:
    """The state database. Create with ``await Store.open(path)``."""

    # Backoff of a failing write: transient (another process holds the lock) and persistent.
    TRANSIENT_BACKOFF = (0.01, 0.5)
    PERSISTENT_BACKOFF = (0.1, 5.0)
    BUSY_TIMEOUT_MS = 100  # SQLite's own wait inside one attempt; the retry loop does the rest
    CLEANUP_BATCH = 5000
    # The WAL is copied into the database by a thread of its own (``checkpoint``), not by
    # whichever commit crosses SQLite's 1,000-page mark: such a commit took up to 0.55 s
    # here, and while a large plan is written that was a send's mark, late by as much.
    CHECKPOINT_EVERY = 1.0  # seconds between looks at the WAL while commits come
    CHECKPOINT_AT = 4 * 1024 * 1024  # WAL bytes that make a checkpoint (SQLite's own mark)
    # No journal_size_limit: while a large plan is written the WAL is never quite caught up
    # (a whole day's plan at 100,000 accounts, 4 M sends in two minutes, left a WAL of
    # 3-10 GB: an open problem, see the README) and cutting that file back, on the
    # writer's next transaction, held the writer (and the sends' marks) for 1.3 s here.
    # The file is reused from its start once checkpointed, and removed at close.
    # The writer and the cold reader run at a lower OS priority than the event loop's
    # thread (the hot reader, on the send path, and the checkpointer do not): their work is
    # SQLite's own, done without the GIL, and while a large plan is written it fills both
    # cores of a small machine, and a timer due meanwhile waited for a core: sends during
    # a 10,000-account rollover went from 3.2-4.1 to 2.1-2.3 ms late at p50 (bench/scale.py).
    BACKGROUND_NICE = 10

    def __init__(self, path: Path, writer: _Thread, hot: _Thread, cold: _Thread, checkpointer: _Thread) -> None:
        self.path = path
        self._writer, self._hot, self._cold = writer, hot, cold
        self._checkpointer = checkpointer
        self._checkpoint_task: asyncio.Task[None] | None = None
        self.health = Health()
        self.commits = 0
        self._next_id = 0  # touched only on the writer thread, inside a transaction
        # Paging (firing.py): rows due before the horizon are held by the timers, the
        # rest stay here. Read and moved only on the writer thread, so that each new
        # row is handed to the timers exactly once: by the plan chunk that commits it
        # (due before the horizon as of that commit) or by the page that moves the
        # horizon past it. None: no paging (every key is returned).
        self.horizon_ms: int | None = None
        self._batch: list[tuple[SendRow, str | None, str | None]] = []
        self._waiters: list[asyncio.Future[bool]] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._closed = False
        self._rng = random.Random()
        # insert_plan through json_each (JSON built in and MATERIALIZED: 3.38+), else executemany
        self._json_insert = sqlite3.sqlite_version_info >= (3, 38, 0)
        self.on_health: Callable[[Health], None] | None = None  # called when health changes

    # ------------------------------------------------------------ life cycle

    @classmethod
    async def open(cls, path: Path, *, synchronous: str = "FULL") -> Store:
        path.parent.mkdir(parents=True, exist_ok=True)
        version = check_file(path)
        _owner_only(path)
        base = [f"PRAGMA busy_timeout={cls.BUSY_TIMEOUT_MS}"]
        bg = cls.BACKGROUND_NICE
        writer, hot, cold = _Thread("store-writer", bg), _Thread("store-hot"), _Thread("store-cold", bg)
        checkpointer = _Thread("store-checkpoint")  # not lowered: the WAL's copy must keep up
        threads = (writer, hot, cold, checkpointer)
        try:
            await writer.call(writer.connect, path, [
                *base, "PRAGMA journal_mode=WAL", f"PRAGMA synchronous={synchronous}",
                "PRAGMA foreign_keys=ON", "PRAGMA cache_size=-262144",  # 256 MiB at most, for big plans
                "PRAGMA wal_autocheckpoint=0"])
            store = cls(path, writer, hot, cold, checkpointer)
            await writer.call(store._migrate_sync, version)
            store._next_id = await writer.call(store._first_free_id)
            for t in (hot, cold):
                await t.call(t.connect, path, [*base, "PRAGMA query_only=ON", "PRAGMA cache_size=-65536"])
            await checkpointer.call(checkpointer.connect, path, [*base, "PRAGMA wal_autocheckpoint=0"])
        except sqlite3.Error as e:
            for t in threads:
                await t.close()
            raise StoreError(f"{path}: cannot open the database: {e}"
                             + _advice(classify(e))) from None
        except BaseException:
            for t in threads:
                await t.close()
            raise
        store._checkpoint_task = asyncio.create_task(store._checkpoints())
        return store

    async def checkpoint(self) -> tuple[int, int, int]:
        """Copy the WAL into the database (PASSIVE: never waits for, nor holds up, the
        writer or a reader) on the checkpoint thread; SQLite's (busy, WAL frames,
        frames copied)."""
        t = self._checkpointer

        def run() -> tuple[int, int, int]:
            busy, frames, copied = t.conn().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            return int(busy), int(frames), int(copied)

        return await t.call(run)

    async def _checkpoints(self) -> None:
        """A checkpoint once commits have made the WAL ``CHECKPOINT_AT`` bytes long (looked
        at every ``CHECKPOINT_EVERY`` seconds while commits come). One that fails (a disk
        error) is logged and tried again at the next round: the WAL keeps every commit
        meanwhile, only larger."""
        seen = self.commits
        wal = f"{self.path}-wal"
        while not self._closed:
            await asyncio.sleep(self.CHECKPOINT_EVERY)
            if self.commits == seen or self._closed:
                continue
            seen = self.commits
            try:
                if os.stat(wal).st_size < self.CHECKPOINT_AT:
                    continue
            except OSError:
                continue
            try:
                await self.checkpoint()
            except sqlite3.Error as e:
                log.warning("WAL checkpoint failed; trying again in a moment", database=str(self.path),
                            error=str(e))

    def _migrate_sync(self, version: int) -> None:
        con = self._writer.conn()
        for v in range(version, SCHEMA_VERSION):
            # Each step and its version bump commit together: a crash mid-way
            # leaves the file at the previous version, to be redone next start.
            script = f"BEGIN;\n{MIGRATIONS[v]}\nPRAGMA user_version={v + 1};\n"
            if v == 0:
                script += f"PRAGMA application_id={APPLICATION_ID};\n"
            try:
                con.executescript(script + "COMMIT;")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise

    def _first_free_id(self) -> int:
        con = self._writer.conn()
        row = con.execute("SELECT seq FROM sqlite_sequence WHERE name='sends'").fetchone()
        top = con.execute("SELECT max(last_id) FROM plan_batches").fetchone()
        return max(row[0] if row else 0, (top[0] or 0) if top else 0) + 1

    async def close(self) -> None:
        try:
            if not self._closed:
                await self.flush()
        finally:
            self._closed = True
            if self._checkpoint_task is not None:
                self._checkpoint_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._checkpoint_task
            # The writer closes last: the last connection to close checkpoints the WAL.
            for t in (self._hot, self._cold, self._checkpointer, self._writer):
                await t.close()

    async def verify(self) -> str | None:
        """A full ``quick_check`` on the cold reader (for a file too large to check
        before start): None when the file is sound, else what is damaged."""
        rows = await self.read(lambda con: [str(r[0]) for r in con.execute("PRAGMA quick_check(3)")], cold=True)
        return None if rows == ["ok"] else "; ".join(" ".join(r.split()) for r in rows)

    async def schema_version(self) -> int:
        return await self.read(lambda con: int(con.execute("PRAGMA user_version").fetchone()[0]), cold=True)

    # ------------------------------------------------------------ the discipline

    def _reserve_ids(self, n: int) -> int:
        """The one place ids are handed out; only inside a transaction on the writer
        thread (``write`` puts the counter back if the transaction rolls back)."""
        base = self._next_id
        self._next_id = base + n
        return base

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """On the writer thread: ``fn`` as one transaction."""
        con = self._writer.conn()
        next_id = self._next_id
        con.execute("BEGIN IMMEDIATE")
        try:
            out = fn(con)
            con.execute("COMMIT")
        except BaseException:
            self._next_id = next_id
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return out

    async def write(self, fn: Callable[[sqlite3.Connection], T], what: str = "write") -> T:
        """Run ``fn(connection)`` as one transaction on the writer thread, durably.

        ``fn`` must only use the connection it is given (it may run more than once:
        a failed attempt is rolled back and retried). Transient and persistent
        storage errors are retried with backoff until they pass or the store is
        closed; the time they take shows in ``health``. Anything else is raised."""
        attempt = 0
        while True:
            if self._closed:
                raise StoreClosed(f"{self.path}: the store is closed ({what} not written)")
            try:
                out: T = await self._writer.call(self._transaction, fn)
            except sqlite3.Error as e:
                kind = classify(e)
                if kind in ("transient", "persistent"):
                    attempt += 1
                    self._trouble(kind, f"{what}: {e}", attempt)
                    lo, hi = self.TRANSIENT_BACKOFF if kind == "transient" else self.PERSISTENT_BACKOFF
                    await asyncio.sleep(min(hi, lo * 2 ** min(attempt - 1, 20)) * (0.5 + self._rng.random()))
                    continue
                if kind == "fatal":
                    raise StoreError(f"{self.path}: {e}" + _advice(kind)) from e
                raise
            self.commits += 1
            if not self.health.ok:
                self._recovered()
            return out

    async def read(self, fn: Callable[[sqlite3.Connection], T], *, cold: bool = False,
                   attempts: int = 50) -> T:
        """Run ``fn(connection)`` on a reader (``cold``: the control socket's) and return
        what it returns. Transient errors are retried a bounded number of times."""
        t = self._cold if cold else self._hot

        def run() -> T:
            return fn(t.conn())

        for attempt in range(1, attempts + 1):
            if self._closed:
                raise StoreClosed(f"{self.path}: the store is closed")
            try:
                return await t.call(run)
            except sqlite3.Error as e:
                kind = classify(e)
                if kind == "fatal":
                    raise StoreError(f"{self.path}: {e}" + _advice(kind)) from e
                if kind is None or attempt == attempts:
                    raise
                await asyncio.sleep(min(0.5, 0.01 * 2 ** attempt))
        raise AssertionError("unreachable")

    def _trouble(self, kind: str, error: str, attempt: int) -> None:
        h = self.health
        first = h.ok
        h.error = f"{self.path}: {error}" + _advice(kind)
        h.kind = kind
        h.retries += 1
        if first:
            h.since = time.time()
            h.spells += 1
            log.warning("store unavailable; retrying", error=h.error, kind=kind)
            if self.on_health is not None:
                self.on_health(h)
        elif attempt in (10, 100, 1000):
            log.warning("store still unavailable; retrying", error=h.error, kind=kind, attempts=attempt,
                        for_s=round(h.stalled_for(time.time()), 1))

    def _recovered(self) -> None:
        h = self.health
        log.info("store working again", after_s=round(h.stalled_for(time.time()), 3),
                 failed_attempts=h.retries, was=h.error)
        h.error = h.kind = None
        h.since = None
        h.retries = 0
        if self.on_health is not None:
            self.on_health(h)

    # ------------------------------------------------------------ accounts

    async def account_states(self) -> dict[str, AccountState]:
        def q(con: sqlite3.Connection) -> dict[str, AccountState]:
            return {r[0]: AccountState(*r) for r in con.execute(_ACCOUNT_STATES_SQL)}
        return await self.read(q)

    async def upsert_account(self, st: AccountState) -> None:
        await self.upsert_accounts([st])

    async def upsert_accounts(self, states: Sequence[AccountState]) -> None:
        """Store account states, all in one transaction."""
        if not states:
            return
        stamp = now_ms()

        def fn(con: sqlite3.Connection) -> None:
            # One statement over one JSON text (see flush): a whole zone's states at once.
            # Encoded here, a row at a time: one encode of a rollover's 33,000 states held
            # the event loop for 100 ms (C code keeps the GIL), and the rows written are
            # the states as they are when the write runs, never older than a later write.
            text = _json_rows((st.email, st.warmup_day, st.advanced_through, st.paused_reason, st.paused_ms,
                               st.hold_until, st.hold_reason, stamp, st.hold_cut, st.graduated) for st in states)
            con.execute(
                "INSERT INTO accounts (email, warmup_day, advanced_through, paused_reason, paused_ms, "
                "hold_until, hold_reason, updated_ms, hold_cut, graduated) SELECT "
                + ", ".join(_J.format(k) for k in range(10)) + " FROM json_each(?1) j WHERE true "
                "ON CONFLICT(email) DO UPDATE SET warmup_day=excluded.warmup_day, "
                "hold_cut=excluded.hold_cut, graduated=excluded.graduated, "
                "advanced_through=excluded.advanced_through, paused_reason=excluded.paused_reason, "
                "paused_ms=excluded.paused_ms, hold_until=excluded.hold_until, "
                "hold_reason=excluded.hold_reason, updated_ms=excluded.updated_ms", (text,))

        await self.write(fn, "account states")

    async def sent_dates(self, account: str, after: str, until: str) -> list[str]:
        """Local dates in (after, until] on which ``account`` sent at least once."""
        return (await self.sent_dates_many([account], after, until)).get(account, [])

    async def sent_dates_many(self, accounts: Sequence[str], after: str, until: str) -> dict[str, list[str]]:
        """{account: local dates in (after, until] on which it sent}, in one query over
        the plan batches of those dates (not one scan of ``sends`` per account)."""
        wanted = set(accounts)

        def q(con: sqlite3.Connection) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for account, day in con.execute(
                "SELECT b.account, b.local_date FROM plan_batches b WHERE b.local_date>? AND "
                "b.local_date<=? AND EXISTS (SELECT 1 FROM sends s WHERE s.id BETWEEN b.first_id "
                "AND b.last_id AND s.status='sent') GROUP BY b.account, b.local_date "
                "ORDER BY b.local_date", (after, until)):
                if account in wanted:
                    out.setdefault(account, []).append(day)
            return out

        return await self.read(q)

    # ------------------------------------------------------------ planning

    async def planned_days(self, local_dates: Iterable[str]) -> set[tuple[str, str]]:
        """The (account, local_date) pairs already planned among these dates."""
        dates = sorted(set(local_dates))
        if not dates:
            return set()
        q = ",".join("?" * len(dates))
        return await self.read(lambda con: {(r[0], r[1]) for r in con.execute(
            f"SELECT DISTINCT account, local_date FROM plan_batches WHERE local_date IN ({q})", dates)})

    async def unplanned(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """The (account, local_date) pairs among ``pairs`` that have no plan yet.

        One statement over the pairs as JSON, whose lookups SQLite makes without the
        GIL: a restart over a stored plan of 100,000 account-days gets an empty answer
        instead of 100,000 rows to build and look up in Python."""
        if not pairs:
            return []

        def q(con: sqlite3.Connection) -> list[tuple[str, str]]:
            text = con.execute(_UNPLANNED_SQL, (_json_rows(pairs),)).fetchone()[0]
            return [(str(e), str(d)) for e, d in json.loads(text)]

        return await self.read(q)

    async def insert_plan(self, days: Sequence[tuple[str, str, int, int, Sequence[Any]]],
                          kind: str = "new") -> list[tuple[int, int, str]]:
        """Persist planned days in one transaction.

        ``days`` holds (account, local_date, warmup_day, target, sends), each send an
        object with at, period, recipient and message_id. Returns (at_ms, id, account)
        of every new row: what the timer structure needs."""
        return await self.insert_prepared(self.prepare_plan(days, kind))

    def prepare_plan(self, days: Sequence[tuple[str, str, int, int, Sequence[Any]]],
                     kind: str = "new") -> PreparedPlan:
        """The CPU part of ``insert_plan``, without I/O or store state (ids relative to
        the first), so that a caller can prepare a chunk while the previous one is
        being written; ``insert_prepared`` writes it."""
        builder = self.plan_builder(kind)
        for day in days:
            builder.add_day(*day)
        return builder.finish()

    def plan_builder(self, kind: str = "new") -> PlanBuilder:
        """``prepare_plan`` a day at a time, so that a planner can yield between days."""
        return PlanBuilder(kind, self._json_insert)

    async def insert_prepared(self, plan: PreparedPlan, *, skip_planned: bool = False,
                              on_commit: Callable[[], None] | None = None) -> list[tuple[int, int, str]]:
        """Write what ``prepare_plan`` made, in one transaction; returns the timer keys.

        ``on_commit`` runs on the writer thread right before COMMIT (a test fault point)."""

        def fn(con: sqlite3.Connection) -> tuple[int, int | None]:
            base = self._reserve_ids(plan.count)
            self._insert_plan_sync(con, base, plan)
            if on_commit is not None:
                on_commit()
            return base, self.horizon_ms

        base, horizon = await self.write(fn, "plan chunk")
        keys = zip(plan.ats, range(base, base + plan.count), plan.accounts, strict=True)
        if horizon is None:
            return list(keys)
        return [k for k in keys if k[0] < horizon]

    def _insert_plan_sync(self, con: sqlite3.Connection, base: int, plan: PreparedPlan) -> None:
        """insert_plan's statements, on the writer thread inside its transaction."""
        texts = plan.texts
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

    # ------------------------------------------------------------ reading sends

    @staticmethod
    def _rows_q(con: sqlite3.Connection, batch_cond: str, params: Sequence[Any],
                row_cond: str = "1") -> list[SendRow]:
        """Rows of the batches matching ``batch_cond`` (on b.) and ``row_cond`` (on s.)."""
        cols = ", ".join(f"s.{f.name}" for f in fields(SendRow))
        return [SendRow(*r) for r in con.execute(
            f"SELECT {cols} FROM plan_batches b JOIN sends s ON s.id BETWEEN b.first_id AND b.last_id "
            f"WHERE {batch_cond} AND {row_cond} ORDER BY s.at_ms, s.id", params)]

    async def get_send(self, send_id: int) -> SendRow | None:
        def q(con: sqlite3.Connection) -> SendRow | None:
            r = con.execute(f"SELECT {_SEND_COLS} FROM sends WHERE id=?", (send_id,)).fetchone()
            return SendRow(*r) if r else None
        return await self.read(q)

    async def get_sends(self, ids: Sequence[int]) -> dict[int, SendRow]:
        """Rows by id, in queries of at most 500 ids."""
        def q(con: sqlite3.Connection) -> dict[int, SendRow]:
            out: dict[int, SendRow] = {}
            for i in range(0, len(ids), 500):
                part = ids[i:i + 500]
                for r in con.execute(f"SELECT {_SEND_COLS} FROM sends WHERE id IN ({','.join('?' * len(part))})",
                                     part):
                    out[r[0]] = SendRow(*r)
            return out
        return await self.read(q)

    async def due_keys(self, local_dates: Iterable[str]) -> list[tuple[int, int, str]]:
        """(due_ms, id, account) of the pending sends of these local dates: the
        compact form the timer structure holds."""
        dates = sorted(set(local_dates))
        if not dates:
            return []
        q = ",".join("?" * len(dates))
        return await self.read(lambda con: [(r[0], r[1], r[2]) for r in con.execute(
            "SELECT coalesce(s.retry_at_ms, s.at_ms), s.id, s.account FROM plan_batches b "
            "JOIN sends s ON s.id BETWEEN b.first_id AND b.last_id "
            f"WHERE b.local_date IN ({q}) AND s.status='pending'", dates)])

    async def _on_writer(self, fn: Callable[[sqlite3.Connection], T], what: str) -> T:
        """A read on the writer's connection and thread (ordered with the writes),
        retried like ``read``."""
        for attempt in range(1, 51):
            if self._closed:
                raise StoreClosed(f"{self.path}: the store is closed")
            try:
                out: T = await self._writer.call(lambda: fn(self._writer.conn()))
                return out
            except sqlite3.Error as e:
                kind = classify(e)
                if kind == "fatal":
                    raise StoreError(f"{self.path}: {e}" + _advice(kind)) from e
                if kind is None or attempt == 50:
                    raise
                await asyncio.sleep(min(0.5, 0.01 * 2 ** attempt))
        raise AssertionError("unreachable")

    async def start_horizon(self, from_ms: int, until_ms: int) -> list[tuple[int, int, str]]:
        """Start paging: (at_ms, id, account) of the planned pending sends due in
        [from_ms, until_ms), and the horizon set to until_ms (retries aside: see
        ``retry_keys``)."""
        def fn(con: sqlite3.Connection) -> list[tuple[int, int, str]]:
            rows = _keys(con, from_ms, until_ms)
            self.horizon_ms = until_ms
            return rows
        return await self._on_writer(fn, "page")

    async def page_in(self, until_ms: int) -> list[tuple[int, int, str]]:
        """Move the horizon to ``until_ms``: the planned pending sends due between the
        old horizon and it (one range scan of the ``sends_due`` index)."""
        def fn(con: sqlite3.Connection) -> list[tuple[int, int, str]]:
            lo = self.horizon_ms
            if lo is None or until_ms <= lo:
                return []
            rows = _keys(con, lo, until_ms)
            self.horizon_ms = until_ms
            return rows
        return await self._on_writer(fn, "page")

    async def next_pending(self, from_ms: int) -> tuple[int, int, str] | None:
        """(due_ms, id, account) of the earliest pending send due at or after ``from_ms``
        (held in memory or not), through the partial indexes."""
        def q(con: sqlite3.Connection) -> tuple[int, int, str] | None:
            a = con.execute("SELECT at_ms, id, account FROM sends WHERE status='pending' AND retry_at_ms IS NULL "
                            "AND at_ms >= ? ORDER BY at_ms LIMIT 1", (from_ms,)).fetchone()
            b = con.execute("SELECT retry_at_ms, id, account FROM sends WHERE status='pending' AND "
                            "retry_at_ms IS NOT NULL AND retry_at_ms >= ? ORDER BY retry_at_ms LIMIT 1",
                            (from_ms,)).fetchone()
            best = min((r for r in (a, b) if r is not None), default=None)
            return (int(best[0]), int(best[1]), str(best[2])) if best else None
        return await self.read(q, cold=True)

    async def retry_keys(self, from_ms: int) -> list[tuple[int, int, str]]:
        """(retry_at_ms, id, account) of pending retries due at or after ``from_ms``:
        retries are few and always held in memory."""
        return await self.read(lambda con: [(r[0], r[1], r[2]) for r in con.execute(
            "SELECT retry_at_ms, id, account FROM sends WHERE status='pending' AND retry_at_ms IS NOT NULL "
            "AND retry_at_ms >= ?", (from_ms,))])

    async def day_rows(self, account: str, local_date: str, *, cold: bool = False) -> list[SendRow]:
        return await self.read(lambda con: self._rows_q(con, "b.account=? AND b.local_date=?",
                                                        (account, local_date)), cold=cold)

    async def by_message_id(self, message_id: str, account: str, local_dates: Sequence[str]) -> SendRow | None:
        """A planned send of ``account`` on one of ``local_dates`` with this Message-ID."""
        q = ",".join("?" * len(local_dates))

        def fn(con: sqlite3.Connection) -> SendRow | None:
            rows = self._rows_q(con, f"b.account=? AND b.local_date IN ({q})", (account, *local_dates),
                                "s.message_id=?") if local_dates else []
            if rows:
                return rows[0]
            # not among the expected days: look it up the slow way
            r = con.execute(f"SELECT {_SEND_COLS} FROM sends WHERE account=? AND message_id=?",
                            (account, message_id)).fetchone()
            return SendRow(*r) if r else None

        return await self.read(fn)

    async def by_message_ids(self, message_ids: Sequence[str], local_dates: Sequence[str]) -> SendRow | None:
        """A planned send of any account on one of ``local_dates`` whose Message-ID is
        one of ``message_ids``: one pass over those days' rows."""
        if not message_ids or not local_dates:
            return None
        dq, mq = ",".join("?" * len(local_dates)), ",".join("?" * len(message_ids))

        def fn(con: sqlite3.Connection) -> SendRow | None:
            rows = self._rows_q(con, f"b.local_date IN ({dq})", (*local_dates, *message_ids),
                                f"s.message_id IN ({mq})")
            return rows[0] if rows else None

        return await self.read(fn)

    async def count_sent(self, account: str, local_date: str) -> int:
        """Sends that count against the day's target: made, or possibly made."""
        return (await self.count_sent_many([(account, local_date)])).get(account, 0)

    async def count_sent_many(self, pairs: Iterable[tuple[str, str]]) -> dict[str, int]:
        """{account: sends made or possibly made} for (account, local_date) pairs, in one
        grouped query per distinct date."""
        wanted = dict(pairs)

        def q(con: sqlite3.Connection) -> dict[str, int]:
            out: dict[str, int] = {}
            for day in sorted(set(wanted.values())):
                for account, n in con.execute(
                    "SELECT b.account, count(*) FROM plan_batches b JOIN sends s ON s.id BETWEEN "
                    "b.first_id AND b.last_id WHERE b.local_date=? AND (s.status IN ('sent', 'sending', "
                    "'uncertain') OR (s.status='failed' AND s.data_mark=1)) GROUP BY b.account", (day,)):
                    if wanted.get(account) == day:
                        out[account] = int(n)
            return out

        if not wanted:
            return {}
        if len(wanted) == 1:
            (account, day), = wanted.items()

            def one(con: sqlite3.Connection) -> dict[str, int]:
                r = con.execute(
                    "SELECT count(*) FROM plan_batches b JOIN sends s ON s.id BETWEEN b.first_id AND "
                    "b.last_id WHERE b.account=? AND b.local_date=? AND (s.status IN ('sent', 'sending', "
                    "'uncertain') OR (s.status='failed' AND s.data_mark=1))", (account, day)).fetchone()
                return {account: int(r[0])} if r and r[0] else {}
            return await self.read(one)
        return await self.read(q)

    async def day_counts(self, pairs: Iterable[tuple[str, str]], *, cold: bool = True) -> dict[str, dict[str, int]]:
        """{account: {status: n}} for the given (account, local_date) pairs.

        One account: one small query. Many: one grouped query per local date (a
        pool's "today" spans two or three dates), instead of a query per account."""
        wanted = dict(pairs)

        def q(con: sqlite3.Connection) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {a: {} for a in wanted}
            if len(wanted) <= 8:
                for account, day in wanted.items():
                    out[account] = {r[0]: r[1] for r in con.execute(
                        "SELECT s.status, count(*) FROM plan_batches b JOIN sends s ON s.id BETWEEN "
                        "b.first_id AND b.last_id WHERE b.account=? AND b.local_date=? GROUP BY s.status",
                        (account, day))}
                return out
            for day in sorted(set(wanted.values())):
                for account, status, n in con.execute(
                    "SELECT b.account, s.status, count(*) FROM plan_batches b JOIN sends s ON s.id "
                    "BETWEEN b.first_id AND b.last_id WHERE b.local_date=? GROUP BY b.account, s.status",
                    (day,)):
                    if wanted.get(account) == day:
                        out[account][status] = n
            return out

        return await self.read(q, cold=cold)

    async def zone_counts(self, accounts_json: str, days: dict[str, str]) -> dict[str, dict[str, int]]:
        """{timezone: {status: n}} of each account's day, for a JSON array of [email,
        timezone] and each timezone's local date: one grouped statement on the cold
        reader, whose work is all inside SQLite (no row-by-row Python, so no GIL taken
        per row). The array changes with the config only; the dates with the day."""
        def q(con: sqlite3.Connection) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            text = con.execute(
                "WITH c AS (SELECT " + _J.format(0) + " AS email, " + _J.format(1) + " AS tz FROM json_each(?1) j), "
                "z AS (SELECT key AS tz, value AS day FROM json_each(?2)) "
                "SELECT json_group_array(json_array(tz, status, n)) FROM "
                "(SELECT c.tz AS tz, s.status AS status, count(*) AS n FROM c JOIN z ON z.tz = c.tz "
                "JOIN plan_batches b ON b.account = c.email AND b.local_date = z.day "
                "JOIN sends s ON s.id BETWEEN b.first_id AND b.last_id GROUP BY c.tz, s.status)",
                (accounts_json, json.dumps(days))).fetchone()[0]
            for tz, status, n in json.loads(text):
                out.setdefault(tz, {})[status] = int(n)
            return out
        return await self.read(q, cold=True)

    async def event_log(self, send_id: int) -> list[tuple[str | None, str, str | None]]:
        return await self.read(lambda con: [(r[0], r[1], r[2]) for r in con.execute(
            "SELECT from_status, to_status, detail FROM events WHERE send_id=? ORDER BY id", (send_id,))],
            cold=True)

    # ------------------------------------------------------------ state transitions

    async def commit_send(self, row: SendRow, from_status: str | None, detail: str | None = None) -> bool:
        """Persist ``row``'s mutable fields and an event, durably, before returning,
        if the row's stored status is still ``from_status``.

        Returns False when it was not (another change won the race: a pause, a
        removal, a re-plan): nothing of this change is written. Callers that
        arrive within the same few milliseconds share one transaction."""
        row.updated_ms = now_ms()
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._batch.append((row, from_status, detail))
        self._waiters.append(fut)
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush_soon())
        return await fut

    async def _flush_soon(self) -> None:
        await asyncio.sleep(0.002)  # the bounded grouping delay
        await self.flush()

    async def flush(self) -> None:
        """Write every queued ``commit_send`` now (one transaction per round)."""
        async with self._flush_lock:
            while self._batch:
                batch, waiters = self._batch, self._waiters
                self._batch, self._waiters = [], []
                # One JSON text and three statements, whatever the batch's size: the writer
                # thread then needs the GIL only a few times per commit (a statement per row
                # waited for the GIL each time while the loop's thread was busy planning).
                rows = _json([[r.id, f, *(getattr(r, c) for c in _MUTABLE), r.account, d] for r, f, d in batch])

                def fn(con: sqlite3.Connection, rows: str = rows) -> set[int]:
                    # Inside this one write transaction nothing else changes the rows: those
                    # in the expected status now are exactly those the UPDATE changes.
                    won = {int(i) for i in json.loads(con.execute(_WINNERS_SQL, (rows,)).fetchone()[0])}
                    if won:
                        con.execute(_BATCH_UPDATE_SQL, (rows,))
                        con.execute(_BATCH_EVENTS_SQL, (rows, _json(sorted(won))))
                    faults.point("store.grouped_commit")
                    return won

                try:
                    won = await self.write(fn, "send state")
                except BaseException as e:
                    for w in waiters:
                        if not w.done():
                            w.set_exception(e if isinstance(e, Exception) else StoreClosed(str(e)))
                    if not isinstance(e, Exception):
                        raise
                    continue
                for w, (r, _, _) in zip(waiters, batch, strict=True):
                    if not w.done():
                        w.set_result(r.id in won)

    async def skip_pending(self, account: str, reason: str, local_dates: Sequence[str]) -> list[int]:
        """Mark an account's pending sends of these dates skipped (pause, removal,
        re-plan); returns their ids."""
        q = ",".join("?" * len(local_dates))
        stamp = now_ms()

        def fn(con: sqlite3.Connection) -> list[int]:
            ids = [r[0] for r in con.execute(
                "SELECT s.id FROM plan_batches b JOIN sends s ON s.id BETWEEN b.first_id AND b.last_id "
                f"WHERE b.account=? AND b.local_date IN ({q}) AND s.status='pending'", (account, *local_dates))]
            return self._skip_sync(con, account, ids, reason, stamp)

        return await self.write(fn, "skip pending sends")

    async def skip_ids(self, account: str, ids: Sequence[int], reason: str) -> list[int]:
        """Mark those of ``ids`` still pending skipped; returns the ones that were."""
        stamp = now_ms()
        return await self.write(lambda con: self._skip_sync(con, account, ids, reason, stamp), "skip sends")

    @staticmethod
    def _skip_sync(con: sqlite3.Connection, account: str, ids: Iterable[int], reason: str, stamp: int) -> list[int]:
        """Skip those of ``ids`` still pending, with their events: three statements."""
        wanted = _json(list(ids))
        done: list[int] = sorted(json.loads(con.execute(
            "SELECT json_group_array(id) FROM sends WHERE id IN (SELECT value FROM json_each(?)) "
            "AND status='pending'", (wanted,)).fetchone()[0]))
        if done:
            text = _json(done)
            con.execute("UPDATE sends SET status='skipped', reason=?, retry_at_ms=NULL, updated_ms=? "
                        "WHERE id IN (SELECT value FROM json_each(?))", (reason, stamp, text))
            con.execute(_EVENT_SQL.partition(" VALUES")[0] + " SELECT ?, value, ?, 'pending', 'skipped', ? "
                        "FROM json_each(?) ORDER BY value", (stamp, account, reason, text))
        return done

    async def recover(self, now_ms_: int, grace_ms: int, accounts: dict[str, str | None]) -> Recovery:
        """Settle what a crash or a stop left, in one transaction. Every statement goes
        through the partial indexes, so the cost is that of the rows concerned, not of
        the day's plan:

        * rows left in ``sending``: ``uncertain`` past the DATA mark, else pending again;
        * pending rows already due: of accounts no longer configured (``accounts`` maps
          each configured account to its pause reason or None) skipped ``removed``; of
          paused accounts ``paused: ...``; due more than the grace ago ``missed``; the
          rest are the backlog the caller sends at once.

        Future rows of removed or paused accounts are settled when they come due."""
        stamp = now_ms()

        def fn(con: sqlite3.Connection) -> Recovery:
            rec = Recovery()
            sending = [(r[0], r[1], r[2]) for r in con.execute(
                "SELECT id, account, data_mark FROM sends WHERE status='sending'")]
            rec.uncertain = self._settle_sync(
                con, [(i, a) for i, a, m in sending if m], "sending", "uncertain",
                "crashed after the DATA mark; not resent", stamp,
                last_error="crashed after the DATA mark; not resent")
            rec.retried = self._settle_sync(con, [(i, a) for i, a, m in sending if not m], "sending", "pending",
                                            "crashed before the DATA mark; retrying", stamp)
            due = [(r[0], r[1], r[2]) for r in con.execute(
                "SELECT id, account, at_ms FROM sends WHERE status='pending' AND retry_at_ms IS NULL AND at_ms < ?",
                (now_ms_,))]
            due += [(r[0], r[1], r[2]) for r in con.execute(
                "SELECT id, account, retry_at_ms FROM sends WHERE status='pending' AND retry_at_ms IS NOT NULL "
                "AND retry_at_ms < ?", (now_ms_,))]
            removed = [(i, a) for i, a, _ in due if a not in accounts]
            rec.removed = self._settle_sync(con, removed, "pending", "skipped",
                                            "removed: account no longer in config", stamp,
                                            reason="removed: account no longer in config")
            paused: dict[str, list[tuple[int, str]]] = {}
            late, backlog_ids = [], []
            for i, a, at in due:
                if a not in accounts:
                    continue
                if accounts[a] is not None:
                    paused.setdefault(a, []).append((i, a))
                elif at < now_ms_ - grace_ms:
                    late.append((i, a))
                else:
                    backlog_ids.append(i)
            for a, rows in paused.items():
                reason = f"paused: {accounts[a]}"
                rec.paused += self._settle_sync(con, rows, "pending", "skipped", reason, stamp, reason=reason)
            rec.missed = self._settle_sync(con, late, "pending", "skipped", "missed", stamp, reason="missed")
            for k in range(0, len(backlog_ids), 500):
                part = backlog_ids[k:k + 500]
                rec.backlog += [SendRow(*r) for r in con.execute(
                    f"SELECT {_SEND_COLS} FROM sends WHERE id IN ({','.join('?' * len(part))})", part)]
            return rec

        return await self.write(fn, "recovery")

    @staticmethod
    def _settle_sync(con: sqlite3.Connection, rows: Sequence[tuple[int, str]], from_status: str, to_status: str,
                     detail: str, stamp: int, *, reason: str | None = None, last_error: str | None = None) -> int:
        """Move rows from one status to another (conditionally), each with its event."""
        if not rows:
            return 0
        cur = con.executemany(
            "UPDATE sends SET status=?, reason=coalesce(?, reason), last_error=coalesce(?, last_error), "
            "retry_at_ms=CASE WHEN ?='skipped' THEN NULL ELSE retry_at_ms END, updated_ms=? "
            "WHERE id=? AND status=?",
            [(to_status, reason, last_error, to_status, stamp, i, from_status) for i, _ in rows])
        con.executemany(_EVENT_SQL, [(stamp, i, a, from_status, to_status, detail) for i, a in rows])
        return int(cur.rowcount)

    async def cleanup(self, before_date: str, older_than_ms: int) -> int:
        """Delete finished rows of days before ``before_date`` and older events, in
        bounded batches (each its own short transaction), so that sends keep going."""
        q = ",".join("?" * len(FINISHED))
        n = self.CLEANUP_BATCH

        def sends_batch(con: sqlite3.Connection) -> int:
            return int(con.execute(
                f"DELETE FROM sends WHERE id IN (SELECT s.id FROM plan_batches b JOIN sends s ON s.id "
                f"BETWEEN b.first_id AND b.last_id WHERE b.local_date < ? AND s.status IN ({q}) LIMIT ?)",
                (before_date, *FINISHED, n)).rowcount)

        def batches_batch(con: sqlite3.Connection) -> int:
            return int(con.execute(
                "DELETE FROM plan_batches WHERE (account, local_date, first_id) IN (SELECT account, local_date, "
                "first_id FROM plan_batches WHERE local_date < ? AND NOT EXISTS (SELECT 1 FROM sends s WHERE "
                "s.id BETWEEN plan_batches.first_id AND plan_batches.last_id) LIMIT ?)", (before_date, n)).rowcount)

        def events_batch(con: sqlite3.Connection) -> int:
            # Events are appended in time order, so their ids order them by age.
            # With no event that recent, every event is older: all go.
            return int(con.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE id < coalesce((SELECT min(id) "
                "FROM events WHERE at_ms >= ?), (SELECT max(id) + 1 FROM events), 0) ORDER BY id LIMIT ?)",
                (older_than_ms, n)).rowcount)

        deleted = 0
        for step, what in ((sends_batch, "cleanup sends"), (batches_batch, "cleanup plan batches"),
                           (events_batch, "cleanup events")):
            while True:
                k = await self.write(step, what)
                if what == "cleanup sends":
                    deleted += k
                if k < n:
                    break
                await asyncio.sleep(0)
        return deleted

    # ------------------------------------------------------------ engagement (imap.py)

    async def send_links(self, send_id: int) -> tuple[int | None, int, int] | None:
        """(in_reply_to, depth, bounced) of a send, None when there is no such send."""
        def q(con: sqlite3.Connection) -> tuple[int | None, int, int] | None:
            r = con.execute("SELECT in_reply_to, depth, bounced FROM sends WHERE id=?", (send_id,)).fetchone()
            return (r[0], int(r[1]), int(r[2])) if r else None
        return await self.read(q)

    async def was_received(self, send_id: int, account: str) -> bool:
        return await self.read(lambda con: con.execute(
            "SELECT 1 FROM received WHERE send_id=? AND account=?", (send_id, account)).fetchone() is not None)

    async def record_received(self, send_id: int, account: str, folder: str, placement: str,
                              local_date: str, seen_ms: int, delay_ms: int | None, depth: int,
                              actions: Sequence[tuple[str, int, str | None]], message_id: str | None = None,
                              sender: str | None = None) -> list[ActionRow] | None:
        """Record where a warmup message landed and plan the receiver's actions on it,
        together. None when it was recorded before (nothing is planned again)."""
        stamp = now_ms()

        def fn(con: sqlite3.Connection) -> list[ActionRow] | None:
            cur = con.execute(
                "INSERT OR IGNORE INTO received (send_id, account, folder, placement, local_date, "
                "seen_ms, delay_ms, depth, message_id, sender) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (send_id, account, folder, placement, local_date, seen_ms, delay_ms, depth, message_id,
                 sender))
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

        return await self.write(fn, "received mail")

    async def pending_actions(self) -> list[ActionRow]:
        return await self.read(lambda con: [ActionRow(*r) for r in con.execute(
            f"SELECT {_ACTION_COLS} FROM actions WHERE status='pending' ORDER BY due_ms")])

    async def get_action(self, action_id: int) -> ActionRow | None:
        def q(con: sqlite3.Connection) -> ActionRow | None:
            r = con.execute(f"SELECT {_ACTION_COLS} FROM actions WHERE id=?", (action_id,)).fetchone()
            return ActionRow(*r) if r else None
        return await self.read(q)

    async def actions_for(self, send_id: int, account: str | None = None) -> list[ActionRow]:
        q = f"SELECT {_ACTION_COLS} FROM actions WHERE send_id=?"
        params: tuple[Any, ...] = (send_id,)
        if account is not None:
            q += " AND account=?"
            params = (send_id, account)
        return await self.read(lambda con: [ActionRow(*r) for r in con.execute(q + " ORDER BY id", params)])

    async def update_action(self, row: ActionRow, expect: str = "pending") -> bool:
        """Persist an action's status, due time, attempts and detail (durably), if its
        stored status is still ``expect``; False when another change won."""
        row.updated_ms = now_ms()
        return await self.write(lambda con: con.execute(
            "UPDATE actions SET status=?, due_ms=?, attempts=?, detail=?, updated_ms=? WHERE id=? AND status=?",
            (row.status, row.due_ms, row.attempts, row.detail, row.updated_ms, row.id, expect)).rowcount == 1,
            "engagement action")

    async def link_reply(self, action_id: int, reply_id: int, in_reply_to: int, depth: int,
                         subject: str, body: str, original_mid: str, refs: str) -> bool:
        """Tie a planned reply to what it answers and mark its action done, together
        (False, and nothing written, when the action is no longer pending)."""
        stamp = now_ms()

        def fn(con: sqlite3.Connection) -> bool:
            if not con.execute("UPDATE actions SET status='done', detail=?, updated_ms=? WHERE id=? AND "
                               "status='pending'", (f"reply send {reply_id}", stamp, action_id)).rowcount:
                return False
            con.execute("UPDATE sends SET in_reply_to=?, depth=?, kind='reply' WHERE id=?",
                        (in_reply_to, depth, reply_id))
            con.execute("INSERT OR REPLACE INTO reply_texts (send_id, subject, body, in_reply_to, refs) "
                        "VALUES (?,?,?,?,?)", (reply_id, subject, body, original_mid, refs))
            return True

        return await self.write(fn, "link reply")

    async def insert_reply(self, action_id: int, account: str, local_date: str, warmup_day: int, target: int,
                           send: Any, in_reply_to: int, depth: int, subject: str, body: str,
                           original_mid: str, refs: str) -> tuple[int, int] | None:
        """Plan one reply (its own one-row batch, kind 'reply', linked to the send it
        answers, with its text) and mark the reply action done, all in one transaction.
        Returns (at_ms, id); None, with nothing written, when the action is no longer pending."""
        stamp = now_ms()
        at_ms = int(send.at * 1000 + 0.5)

        def fn(con: sqlite3.Connection) -> tuple[int, int] | None:
            nid = self._reserve_ids(1)
            # An empty batch of the same day holds (account, local_date, that id) already:
            # it marks the day planned without using the id; take the next one.
            while con.execute("SELECT 1 FROM plan_batches WHERE account=? AND local_date=? AND first_id=?",
                              (account, local_date, nid)).fetchone():
                nid = self._reserve_ids(1)
            if not con.execute("UPDATE actions SET status='done', detail=?, updated_ms=? WHERE id=? AND "
                               "status='pending'", (f"reply send {nid}", stamp, action_id)).rowcount:
                raise _Abandon()
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
            return at_ms, nid

        try:
            return await self.write(fn, "reply")
        except _Abandon:
            return None

    async def reply_text(self, send_id: int) -> tuple[str, str, str, str] | None:
        """(subject, body, original Message-ID, References) of a planned reply."""
        def q(con: sqlite3.Connection) -> tuple[str, str, str, str] | None:
            r = con.execute("SELECT subject, body, in_reply_to, refs FROM reply_texts WHERE send_id=?",
                            (send_id,)).fetchone()
            return (r[0], r[1], r[2], r[3]) if r else None
        return await self.read(q)

    async def mark_bounced(self, send_id: int) -> bool:
        """Mark a send bounced; False when it was already (or there is no such send)."""
        stamp = now_ms()
        return await self.write(lambda con: con.execute(
            "UPDATE sends SET bounced=1, updated_ms=? WHERE id=? AND bounced=0", (stamp, send_id)).rowcount > 0,
            "bounce")

    async def bounce_window(self, account: str, since_date: str, n: int = 50) -> tuple[int, int]:
        """(bounced, total) over the last ``n`` sends ``account`` made (days from ``since_date``)."""
        def q(con: sqlite3.Connection) -> tuple[int, int]:
            r = con.execute(
                "SELECT coalesce(sum(bounced), 0), count(*) FROM (SELECT s.bounced FROM plan_batches b "
                "JOIN sends s ON s.id BETWEEN b.first_id AND b.last_id WHERE b.account=? AND "
                "b.local_date>=? AND s.status IN ('sent', 'uncertain') ORDER BY s.id DESC LIMIT ?)",
                (account, since_date, n)).fetchone()
            return (int(r[0]), int(r[1])) if r else (0, 0)
        return await self.read(q)

    async def placement_counts(self, sender: str, local_dates: Sequence[str]) -> dict[str, int]:
        """{placement: n} of the warmup mail ``sender`` sent on these local dates, as received."""
        if not local_dates:
            return {}
        q = ",".join("?" * len(local_dates))
        return await self.read(lambda con: {r[0]: int(r[1]) for r in con.execute(
            "SELECT r.placement, count(*) FROM plan_batches b JOIN sends s ON s.id BETWEEN "
            "b.first_id AND b.last_id JOIN received r ON r.send_id=s.id WHERE b.account=? AND "
            f"b.local_date IN ({q}) GROUP BY r.placement", (sender, *local_dates))})

    async def day_total(self, account: str, local_date: str) -> int:
        """New sends and replies of a day that count against its target: everything
        planned except what was skipped or failed before its DATA."""
        def q(con: sqlite3.Connection) -> int:
            r = con.execute(
                "SELECT count(*) FROM plan_batches b JOIN sends s ON s.id BETWEEN b.first_id AND b.last_id "
                "WHERE b.account=? AND b.local_date=? AND s.status!='skipped' AND "
                "NOT (s.status='failed' AND s.data_mark=0)", (account, local_date)).fetchone()
            return int(r[0]) if r else 0
        return await self.read(q)

    async def engagement_day(self, account: str, local_date: str, start_ms: int, end_ms: int) -> dict[str, int]:
        """An account's engagement counts for one local day (bounds in ms for the actions)."""
        def q(con: sqlite3.Connection) -> dict[str, int]:
            out = {"received": 0, "inbox": 0, "junk": 0, "rescued": 0, "opened": 0, "replied": 0,
                   "bounced": 0, "sends": 0}
            for placement, n in con.execute(
                    "SELECT placement, count(*) FROM received WHERE account=? AND local_date=? GROUP BY placement",
                    (account, local_date)):
                out[placement] = out.get(placement, 0) + int(n)
                out["received"] += int(n)
            for kind, n in con.execute(
                    "SELECT kind, count(*) FROM actions WHERE status='done' AND due_ms>=? AND due_ms<? "
                    "AND account=? GROUP BY kind", (start_ms, end_ms, account)):
                if kind == "rescue":
                    out["rescued"] = int(n)
                elif kind == "open":
                    out["opened"] = int(n)
            r = con.execute(
                "SELECT coalesce(sum(s.kind='reply' AND s.status IN ('sent', 'sending', 'uncertain')), 0), "
                "coalesce(sum(s.bounced), 0), coalesce(sum(s.status IN ('sent', 'sending', 'uncertain') "
                "OR (s.status='failed' AND s.data_mark=1)), 0) FROM plan_batches b JOIN sends s ON s.id "
                "BETWEEN b.first_id AND b.last_id WHERE b.account=? AND b.local_date=?",
                (account, local_date)).fetchone()
            if r:
                out["replied"], out["bounced"], out["sends"] = int(r[0]), int(r[1]), int(r[2])
            return out
        return await self.read(q)

    # ------------------------------------------------------------ OAuth (oauth.py)

    async def refresh_tokens(self) -> dict[tuple[str, str], str]:
        """Every stored refresh token by (account, client)."""
        def q(con: sqlite3.Connection) -> dict[tuple[str, str], str]:
            return {(r[0], r[1]): r[2] for r in con.execute(
                "SELECT account, client, refresh_token FROM oauth_tokens")}
        return await self.read(q)

    async def refresh_token(self, account: str, client: str) -> str | None:
        def q(con: sqlite3.Connection) -> str | None:
            r = con.execute("SELECT refresh_token FROM oauth_tokens WHERE account=? AND client=?",
                            (account, client)).fetchone()
            return str(r[0]) if r else None
        return await self.read(q)

    async def put_refresh_token(self, account: str, client: str, token: str,
                                replaces: str | None = None) -> bool:
        """Store ``token``; with ``replaces``, only if the stored one is still that one (a
        token `warmupd authorize` stored meanwhile wins). True if it was written."""
        stamp = now_ms()

        def fn(con: sqlite3.Connection) -> bool:
            if replaces is None:
                con.execute("INSERT INTO oauth_tokens(account, client, refresh_token, updated_ms) "
                            "VALUES (?,?,?,?) ON CONFLICT(account, client) DO UPDATE SET "
                            "refresh_token=excluded.refresh_token, updated_ms=excluded.updated_ms",
                            (account, client, token, stamp))
                return True
            cur = con.execute("UPDATE oauth_tokens SET refresh_token=?, updated_ms=? "
                              "WHERE account=? AND client=? AND refresh_token=?",
                              (token, stamp, account, client, replaces))
            return cur.rowcount == 1
        return await self.write(fn, "refresh token")

    # ------------------------------------------------------------ reputation (reputation.py)

    async def save_checks(self, kind: str, rows: Sequence[tuple[str, int, str, str]]) -> None:
        """Keep the latest check of each subject: (subject, checked_ms, verdict, result JSON)."""
        if not rows:
            return
        await self.write(lambda con: con.executemany(
            "INSERT OR REPLACE INTO reputation_checks (kind, subject, checked_ms, verdict, result) "
            "VALUES (?,?,?,?,?)", [(kind, *r) for r in rows]), "reputation checks")

    async def load_checks(self, kind: str) -> list[tuple[str, int, str, str]]:
        return await self.read(lambda con: [(str(r[0]), int(r[1]), str(r[2]), str(r[3])) for r in con.execute(
            "SELECT subject, checked_ms, verdict, result FROM reputation_checks WHERE kind=?", (kind,))])

    async def health_inputs(self, spans: Sequence[tuple[str, str, str]]
                            ) -> dict[str, tuple[dict[str, dict[str, int]], int, int]]:
        """For (account, first local date, last local date): {account: ({date: {placement:
        n}} of its warmup mail as received, sends that went out, of them bounced)}. Two
        grouped statements on the cold reader (the health loop's: never ahead of a send's
        read), whose work is all inside SQLite."""
        pairs = _json(spans)
        want = ("WITH w AS (SELECT " + _J.format(0) + " AS account, " + _J.format(1) + " AS first, "
                + _J.format(2) + " AS last FROM json_each(?1) j) ")

        def fn(con: sqlite3.Connection) -> tuple[str, str]:
            placed_text = con.execute(
                want + "SELECT json_group_array(json_array(account, day, placement, n)) FROM (SELECT "
                "w.account AS account, b.local_date AS day, r.placement AS placement, count(*) AS n FROM w "
                "JOIN plan_batches b ON b.account = w.account AND b.local_date BETWEEN w.first AND w.last "
                "JOIN sends s ON s.id BETWEEN b.first_id AND b.last_id JOIN received r ON r.send_id = s.id "
                "GROUP BY w.account, b.local_date, r.placement)", (pairs,)).fetchone()[0]
            sent_text = con.execute(
                want + "SELECT json_group_array(json_array(account, n, bounced)) FROM (SELECT w.account AS "
                "account, count(*) AS n, coalesce(sum(s.bounced), 0) AS bounced FROM w JOIN plan_batches b "
                "ON b.account = w.account AND b.local_date BETWEEN w.first AND w.last JOIN sends s ON s.id "
                "BETWEEN b.first_id AND b.last_id WHERE s.status IN ('sent', 'uncertain') GROUP BY w.account)",
                (pairs,)).fetchone()[0]
            return str(placed_text), str(sent_text)

        # The JSON is parsed here, on the loop's thread: Python work on the reader's
        # thread would contend with the loop for the GIL.
        placed_text, sent_text = await self.read(fn, cold=True)
        placed: dict[str, dict[str, dict[str, int]]] = {}
        for account, day, placement, n in json.loads(placed_text):
            placed.setdefault(account, {}).setdefault(day, {})[placement] = int(n)
        sent = {account: (int(n), int(b)) for account, n, b in json.loads(sent_text)}
        return {a: (placed.get(a, {}), *sent.get(a, (0, 0))) for a, _, _ in spans}

    async def save_health(self, rows: Sequence[tuple[str, str, int, str]]) -> None:
        """(account, local date, score, parts JSON): today's score, replaced as the day goes."""
        if not rows:
            return
        # One statement over a JSON array: an executemany of 100,000 rows on the writer
        # would take the GIL back from the event loop row by row (late sends meanwhile).
        text = _json(rows)
        await self.write(lambda con: con.execute(
            "INSERT OR REPLACE INTO health_days (account, local_date, score, parts) SELECT "
            + ", ".join(_J.format(k) for k in range(4)) + " FROM json_each(?1) j", (text,)), "health scores")

    async def health_history(self, account: str, since: str) -> list[tuple[str, int, str]]:
        """(local date, score, parts JSON) of an account's days from ``since`` on, oldest first."""
        return await self.read(lambda con: [(str(r[0]), int(r[1]), str(r[2])) for r in con.execute(
            "SELECT local_date, score, parts FROM health_days WHERE account=? AND local_date>=? "
            "ORDER BY local_date", (account, since))], cold=True)

    # ------------------------------------------------------------ mailbox hygiene (hygiene.py)

    async def warmup_copies(self, account: str, message_ids: Sequence[str]) -> dict[str, str]:
        """Of these Message-IDs, those of warmup mail ``account`` received (-> "received") or
        sent and saw received (-> "sent"), and not cleaned up yet."""
        if not message_ids:
            return {}

        def fn(con: sqlite3.Connection) -> dict[str, str]:
            out: dict[str, str] = {}
            for i in range(0, len(message_ids), 500):
                chunk = list(message_ids[i:i + 500])
                q = ",".join("?" * len(chunk))
                for mid, acc, sender, cleaned, sent_cleaned in con.execute(
                        f"SELECT message_id, account, sender, cleaned, sent_cleaned FROM received WHERE "
                        f"message_id IN ({q})", chunk):
                    if acc == account and not cleaned:
                        out[str(mid)] = "received"
                    elif sender == account and not sent_cleaned and str(mid) not in out:
                        out[str(mid)] = "sent"
            return out
        return await self.read(fn)

    async def mark_cleaned(self, account: str, received: Sequence[str], sent: Sequence[str]) -> None:
        def fn(con: sqlite3.Connection) -> None:
            con.executemany("UPDATE received SET cleaned=1 WHERE account=? AND message_id=?",
                            [(account, m) for m in received])
            con.executemany("UPDATE received SET sent_cleaned=1 WHERE sender=? AND message_id=?",
                            [(account, m) for m in sent])
        await self.write(fn, "hygiene")


    # ------------------------------------------------------------ the report

    async def report_rows(self, first: str, last: str, offsets_json: str, gap_edges_ms: Sequence[int],
                          late_edges_ms: Sequence[int], matrix_max: int) -> ReportRows:
        """What the report draws for local dates [first, last], aggregated inside SQLite
        on the cold reader (a few hundred rows come back, whatever the pool's size).

        ``offsets_json``: [[account, local_date, UTC offset in minutes at local noon], ...]
        for the local hour of each send; ``*_edges_ms``: histogram bins (the lower edges);
        ``matrix_max``: pairs are returned among at most this many busiest senders."""
        return await self.read(lambda con: _report_rows(con, first, last, offsets_json, gap_edges_ms,
                                                        late_edges_ms, matrix_max), cold=True)


def _keys(con: sqlite3.Connection, lo: int, hi: int) -> list[tuple[int, int, str]]:
    """(at_ms, id, account) of the planned pending sends due in [lo, hi), through the
    ``sends_due`` index, fetched as one JSON row: a row at a time would take the GIL
    back once per row on the writer thread, each time waiting for the loop's thread."""
    text = con.execute(
        "SELECT json_group_array(json_array(at_ms, id, account)) FROM sends WHERE status='pending' "
        "AND retry_at_ms IS NULL AND at_ms >= ? AND at_ms < ?", (lo, hi)).fetchone()[0]
    return [(int(a), int(i), str(e)) for a, i, e in json.loads(text)]


class _Abandon(Exception):
    """Raised inside a transaction function to roll it back without an error."""


@dataclass
class Recovery:
    """What ``Store.recover`` did."""

    stale: int = 0
    uncertain: int = 0
    retried: int = 0
    removed: int = 0
    paused: int = 0
    missed: int = 0
    backlog: list[SendRow] = field(default_factory=list)


def _advice(kind: str | None) -> str:
    return {
        "transient": " (another process holds the database's write lock; retrying)",
        "persistent": " (check free space, permissions and the disk of the state folder; retrying)",
        "fatal": " (the file is damaged: restore a backup or move it away to start afresh)",
    }.get(kind or "", "")


# commit_send's grouped statements over one JSON array of
# [id, expected status, *_MUTABLE, account, detail] rows.
_J = "json_extract(j.value, '$[{}]')"
_UNPLANNED_SQL = ("SELECT json_group_array(json_array(e, d)) FROM (SELECT " + _J.format(0) + " AS e, "
                  + _J.format(1) + " AS d FROM json_each(?1) j) WHERE NOT EXISTS (SELECT 1 FROM plan_batches b "
                  "WHERE b.account = e AND b.local_date = d)")
_WINNERS_SQL = ("SELECT json_group_array(s.id) FROM json_each(?1) j JOIN sends s ON s.id = " + _J.format(0)
                + " WHERE s.status IS " + _J.format(1))
_BATCH_UPDATE_SQL = ("UPDATE sends SET " + ", ".join(f"{c} = j.{c}" for c in _MUTABLE)
                     + " FROM (SELECT " + ", ".join(f"{_J.format(k)} AS {c}" for k, c in
                                                    enumerate(("id", "expect", *_MUTABLE)))
                     + " FROM json_each(?1) j) AS j WHERE sends.id = j.id AND sends.status IS j.expect")
_BATCH_EVENTS_SQL = (_EVENT_SQL.partition(" VALUES")[0] + " SELECT " + ", ".join(
    _J.format(k) for k in (2 + _MUTABLE.index("updated_ms"), 0, 2 + len(_MUTABLE), 1, 2, 3 + len(_MUTABLE)))
    + " FROM json_each(?1) j WHERE " + _J.format(0) + " IN (SELECT value FROM json_each(?2))")


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


@dataclass
class ReportRows:
    """The report's aggregates from ``Store.report_rows`` (plain tuples)."""

    days: list[tuple[str, str, int, int]]  # account, local_date, warmup_day, target
    statuses: list[tuple[str, str, str, str, str, int, int]]  # account, date, kind, status, reason, n, bounced
    hours: list[tuple[str, int, int]]  # period, local hour, n
    gaps: list[tuple[int, int]]  # bin, n
    late: list[tuple[int, int]]  # bin (-1: early), n
    weekdays: list[tuple[str, int]]  # local_date, n
    sent_by: list[tuple[str, int]]
    received_by: list[tuple[str, int]]
    pairs: list[tuple[str, str, int]]
    placements: list[tuple[str, str, str, int]]  # sender, sender's local date, inbox|junk, n
    actions: list[tuple[str, str, str, int]]  # acting account, local date received, kind, n
    # email, paused_reason, paused_ms, hold_until, hold_reason, graduated (local date)
    states: list[tuple[str, str | None, int | None, str | None, str | None, str | None]]
    health: list[tuple[str, str, int]]  # account, local_date, score


def _bins_case(expr: str, edges: Sequence[int]) -> str:
    """SQL: the index of the last edge <= expr (-1 below the first)."""
    whens = " ".join(f"WHEN {expr} >= {int(e)} THEN {i}" for i, e in reversed(list(enumerate(edges))))
    return f"CASE {whens} ELSE -1 END"


def _report_rows(con: sqlite3.Connection, first: str, last: str, offsets_json: str, gap_edges: Sequence[int],
                 late_edges: Sequence[int], matrix_max: int) -> ReportRows:
    rng = (first, last)
    live = "s.status != 'skipped' AND NOT (s.status = 'failed' AND s.data_mark = 0)"
    base = ("FROM plan_batches b JOIN sends s ON s.id BETWEEN b.first_id AND b.last_id "
            "WHERE b.local_date BETWEEN ? AND ?")
    days = [(r[0], r[1], int(r[2]), int(r[3])) for r in con.execute(
        "SELECT account, local_date, warmup_day, target, min(first_id) FROM plan_batches "
        "WHERE local_date BETWEEN ? AND ? GROUP BY account, local_date", rng)]
    statuses = [(r[0], r[1], r[2], r[3], r[4], int(r[5]), int(r[6])) for r in con.execute(
        "SELECT b.account, b.local_date, s.kind, s.status, coalesce(s.reason, ''), count(*), "
        f"coalesce(sum(s.bounced), 0) {base} GROUP BY 1, 2, 3, 4, 5", rng)]
    hours = [(r[0], int(r[1]), int(r[2])) for r in con.execute(
        "WITH o AS (SELECT " + _J.format(0) + " AS account, " + _J.format(1) + " AS day, " + _J.format(2)
        + " AS off FROM json_each(?3) j) SELECT s.period, ((s.at_ms / 60000 + o.off) % 1440 + 1440) % 1440 / 60, "
        "count(*) FROM plan_batches b JOIN o ON o.account = b.account AND o.day = b.local_date "
        "JOIN sends s ON s.id BETWEEN b.first_id AND b.last_id WHERE b.local_date BETWEEN ?1 AND ?2 AND "
        f"{live} GROUP BY 1, 2", (first, last, offsets_json))]
    gaps = [(int(r[0]), int(r[1])) for r in con.execute(
        f"SELECT {_bins_case('gap', gap_edges)}, count(*) FROM (SELECT s.at_ms - lag(s.at_ms) OVER "
        f"(PARTITION BY b.account, b.local_date ORDER BY s.at_ms) AS gap {base} AND {live}) "
        "WHERE gap IS NOT NULL GROUP BY 1", rng)]
    # Lateness at the DATA mark: MAIL FROM goes out at the instant, RCPT TO follows, and
    # the mark is committed right before DATA (its event's time). Retries count from their retry time.
    late = [(int(r[0]), int(r[1])) for r in con.execute(
        f"SELECT {_bins_case('late', late_edges)}, count(*) FROM (SELECT e.at_ms - coalesce(s.retry_at_ms, "
        "s.at_ms) AS late FROM plan_batches b JOIN sends s ON s.id BETWEEN b.first_id AND b.last_id "
        "JOIN events e ON e.send_id = s.id AND e.detail = 'DATA mark' WHERE b.local_date BETWEEN ? AND ?) "
        "GROUP BY 1", rng)]
    weekdays = [(r[0], int(r[1])) for r in con.execute(
        f"SELECT b.local_date, count(*) {base} AND {live} GROUP BY 1", rng)]
    sent_by = [(r[0], int(r[1])) for r in con.execute(
        f"SELECT b.account, count(*) {base} AND {live} GROUP BY 1", rng)]
    received_by = [(r[0], int(r[1])) for r in con.execute(
        f"SELECT s.recipient, count(*) {base} AND {live} GROUP BY 1", rng)]
    busiest = [a for a, _ in sorted(sent_by, key=lambda x: -x[1])[:matrix_max]]
    pairs: list[tuple[str, str, int]] = []
    if busiest:
        marks = ",".join("?" * len(busiest))
        pairs = [(r[0], r[1], int(r[2])) for r in con.execute(
            f"SELECT b.account, s.recipient, count(*) {base} AND {live} AND b.account IN ({marks}) "
            f"AND s.recipient IN ({marks}) GROUP BY 1, 2", (*rng, *busiest, *busiest))]
    placements = [(r[0], r[1], r[2], int(r[3])) for r in con.execute(
        "SELECT b.account, b.local_date, r.placement, count(*) FROM plan_batches b JOIN sends s ON s.id "
        "BETWEEN b.first_id AND b.last_id JOIN received r ON r.send_id = s.id WHERE b.local_date BETWEEN ? "
        "AND ? GROUP BY 1, 2, 3", rng)]
    actions = [(r[0], r[1], r[2], int(r[3])) for r in con.execute(
        "SELECT a.account, r.local_date, a.kind, count(*) FROM actions a JOIN received r ON "
        "r.send_id = a.send_id AND r.account = a.account WHERE a.status = 'done' AND r.local_date BETWEEN ? "
        "AND ? GROUP BY 1, 2, 3", rng)]
    states = [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in con.execute(
        "SELECT email, paused_reason, paused_ms, hold_until, hold_reason, graduated FROM accounts")]
    return ReportRows(days, statuses, hours, gaps, late, weekdays, sent_by, received_by, pairs, placements,
                      actions, states, _health_days(con, offsets_json))


def _health_days(con: sqlite3.Connection, offsets_json: str) -> list[tuple[str, str, int]]:
    """The stored health score of each (account, local date) the offsets list: one
    primary-key lookup each (the table keeps every day ever scored), all in one query
    whose rows come back grouped per account as JSON (one row per account, not per day)."""
    out: list[tuple[str, str, int]] = []
    for account, days in con.execute(
            "WITH o AS (SELECT " + _J.format(0) + " AS account, " + _J.format(1) + " AS day FROM json_each(?) j) "
            "SELECT h.account, json_group_array(json_array(h.local_date, h.score)) FROM o JOIN health_days h "
            "ON h.account = o.account AND h.local_date = o.day GROUP BY h.account", (offsets_json,)):
        out += [(str(account), str(d), int(n)) for d, n in json.loads(days)]
    return out
