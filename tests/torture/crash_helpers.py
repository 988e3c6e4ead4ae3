"""Helpers for tests/torture/test_crash.py: a pool of any size, seeding it, fake time,
and the one check of the promise after crashes (``Ledger``).

* ``pool_users`` / ``write_pool_config``: N accounts on one SMTP server, the config
  written by ``tests.daemon_helpers.write_config`` (its [daemon] and [defaults]) with
  the pool's own ``[[accounts]]`` tables (password files like write_config's);
* ``seed_pool``: exact sends per account (known Message-IDs, recipients from the pool)
  through ``Store.insert_plan``, as ``seed_plan`` does for the rig's three users;
* ``faketime_env``: libfaketime starting the daemon's clock at a given instant;
* ``snapshot``: what a killed daemon left in the store (rows in ``sending``);
* ``Ledger``: every kill's snapshot, then ``check`` of the rows against what the SMTP
  server accepted: no Message-ID twice, nothing left pending or sending, every
  arrival's row sent (or uncertain because it was past its DATA mark at a kill),
  every sent row arrived, every uncertain row explained by a kill.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from tests.daemon_helpers import _connect_ro, db_path, send_rows, utc_today, write_config

FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
CRASH_UNCERTAIN = "crashed after the DATA mark; not resent"  # store.recover's last_error


# ---------------------------------------------------------------- a pool of any size


def pool_users(n: int, domain: str = "pool.test") -> dict[str, str]:
    """n addresses with their (distinct) passwords, for SMTPServer(users=...) and the config."""
    return {f"w{i:02d}@{domain}": f"pw-{i:02d}-{uuid.uuid5(uuid.NAMESPACE_DNS, str(i)).hex[:10]}"
            for i in range(n)}


def write_pool_config(tmp_path: Path, port: int, users: Mapping[str, str], *,
                      start_date: date | None = None, timeout: str = "10s", **kw: Any) -> Path:
    """write_config's [daemon] and [defaults] (``kw`` as for it), then one [[accounts]]
    table per user, each with its password in its own file (mode 0600)."""
    path = write_config(tmp_path, port, accounts=(), start_date=start_date, **kw)
    start = start_date or date.fromordinal(utc_today().toordinal() + 60)
    lines = [path.read_text().rstrip("\n"), ""]
    for email, password in users.items():
        pw_file = tmp_path / f"{email.split('@')[0]}.pw"
        pw_file.write_text(password + "\n")
        pw_file.chmod(0o600)
        smtp = (f'{{ host = "127.0.0.1", port = {port}, security = "none", username = {json.dumps(email)}, '
                f'password_file = "{pw_file.name}", timeout = "{timeout}" }}')
        lines += ["[[accounts]]", f"email = {json.dumps(email)}", f'start_date = "{start.isoformat()}"',
                  f"smtp = {smtp}", ""]
    path.write_text("\n".join(lines))
    return path


@dataclass(frozen=True)
class PoolSeed:
    at: float
    period: str
    recipient: str
    message_id: str


def seed_pool(tmp_path: Path, sends: Mapping[str, Sequence[float]], *,
              local_date: date | None = None) -> dict[int, tuple[str, float, str]]:
    """Plan exactly these instants per account for ``local_date`` (UTC today) before the
    daemon starts; recipients walk the other accounts of ``sends``. Returns
    {id: (account, at, message_id)}."""
    from warmupd.store import Store

    day = (local_date or utc_today()).isoformat()
    pool = sorted(sends)
    days, mids = [], {}
    for email, instants in sends.items():
        others = [e for e in pool if e != email]
        seeds = [PoolSeed(round(t, 3), "peak", others[i % len(others)],
                          f"<crash.{uuid.uuid4().hex}@{email.split('@')[1]}>")
                 for i, t in enumerate(sorted(instants))]
        days.append((email, day, 1, len(seeds), seeds))
        mids[email] = [s.message_id for s in seeds]

    async def run() -> list[tuple[int, int, str]]:
        store = await Store.open(db_path(tmp_path))
        try:
            return await store.insert_plan(days)
        finally:
            await store.close()

    out: dict[int, tuple[str, float, str]] = {}
    seen: Counter[str] = Counter()
    for at_ms, ident, account in sorted(asyncio.run(run()), key=lambda k: k[1]):
        out[ident] = (account, at_ms / 1000, mids[account][seen[account]])
        seen[account] += 1
    return out


# ---------------------------------------------------------------- fake time


def faketime_env(start: datetime) -> dict[str, str]:
    """The daemon's clock (wall and monotonic) starts at ``start`` and runs at the real rate."""
    return {"LD_PRELOAD": FAKETIME_LIB, "FAKETIME": "@" + start.strftime("%Y-%m-%d %H:%M:%S"),
            "FAKETIME_DONT_RESET": "1"}


def have_faketime() -> bool:
    return os.path.exists(FAKETIME_LIB)


# ---------------------------------------------------------------- the store after a kill


def query(tmp_path: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    con = _connect_ro(db_path(tmp_path))
    try:
        return [tuple(r) for r in con.execute(sql, tuple(params))]
    finally:
        con.close()


@dataclass
class Snapshot:
    """What a killed daemon left: the rows in ``sending``, by DATA mark."""

    marked: set[int]  # in flight past the DATA mark: the server may have it
    unmarked: set[int]  # in flight before it: the server cannot have it
    accepted: int  # messages the server had accepted by then

    @property
    def in_flight(self) -> int:
        return len(self.marked) + len(self.unmarked)


def snapshot(tmp_path: Path, accepted: int) -> Snapshot:
    try:
        rows = query(tmp_path, "SELECT id, data_mark FROM sends WHERE status='sending'")
    except sqlite3.OperationalError:  # killed before the schema existed
        rows = []
    return Snapshot({i for i, m in rows if m}, {i for i, m in rows if not m}, accepted)


# ---------------------------------------------------------------- the promise


@dataclass
class Totals:
    kills: int
    sends: int
    arrivals: int
    duplicates: int
    by_status: Counter[str]
    skipped: Counter[str]
    in_flight: int  # distinct sends left in `sending` by a kill
    in_flight_marked: int  # of which past their DATA mark
    max_late_s: float

    def line(self) -> str:
        skipped = ", ".join(f"{r!r}: {n}" for r, n in sorted(self.skipped.items())) or "none"
        return (f"kills={self.kills} sends={self.sends} arrivals={self.arrivals} "
                f"sent={self.by_status['sent']} uncertain={self.by_status['uncertain']} "
                f"skipped={self.by_status['skipped']} ({skipped}) failed={self.by_status['failed']} "
                f"pending/sending left={self.by_status['pending'] + self.by_status['sending']} "
                f"duplicates={self.duplicates} in flight at kills={self.in_flight} "
                f"(past the DATA mark: {self.in_flight_marked}) max MAIL FROM lateness={self.max_late_s:.3f} s")


@dataclass
class Ledger:
    kills: list[Snapshot] = field(default_factory=list)

    def killed(self, tmp_path: Path, accepted: int) -> Snapshot:
        snap = snapshot(tmp_path, accepted)
        self.kills.append(snap)
        return snap

    @property
    def marked(self) -> set[int]:
        return set().union(*(k.marked for k in self.kills)) if self.kills else set()

    def check(self, tmp_path: Path, messages: Sequence[dict[str, Any]], *,
              late_limit: float | None = None, clock_offset: float = 0.0) -> Totals:
        """Assert the promise over every row and every accepted message; return the totals.

        ``late_limit``: at most this many seconds from a row's instant to its MAIL FROM at
        the server; ``clock_offset``: the daemon's clock minus the server's (fake time)."""
        rows = {r["id"]: r for r in send_rows(tmp_path)}
        by_mid = {r["message_id"]: r for r in rows.values()}
        mids = Counter(m["message_id"] for m in messages)
        dups = {m: n for m, n in mids.items() if n > 1}
        problems: list[str] = []
        if dups:
            problems.append(f"Message-IDs accepted more than once: {dups}")
        left = [r for r in rows.values() if r["status"] in ("pending", "sending")]
        if left:
            problems.append(f"rows left pending/sending: {left}")
        marked = self.marked
        late = 0.0
        for m in messages:
            r = by_mid.get(m["message_id"])
            if r is None:
                problems.append(f"an arrival with no row: {m['message_id']}")
                continue
            if r["status"] == "uncertain" and r["id"] in marked:
                pass  # in flight past its DATA mark at a kill: the server may well have it
            elif r["status"] != "sent":
                problems.append(f"arrived, but its row says {r['status']}: {r}")
            if m["x_warmup_id"] != str(r["id"]):
                problems.append(f"X-Warmup-Id {m['x_warmup_id']} on the message of row {r['id']}")
            late = max(late, m["mail_from_at"] + clock_offset - r["at_ms"] / 1000)
        for r in rows.values():
            if r["status"] == "sent" and mids[r["message_id"]] != 1:
                problems.append(f"row sent, arrived {mids[r['message_id']]} times: {r}")
            if r["status"] == "uncertain" and (r["id"] not in marked or r["last_error"] != CRASH_UNCERTAIN):
                problems.append(f"uncertain without a kill past its DATA mark to explain it: {r}")
            if r["status"] == "skipped" and not r["reason"]:
                problems.append(f"skipped without a reason: {r}")
            if r["status"] == "failed":
                problems.append(f"failed (the server had no faults): {r}")
        if late_limit is not None and late > late_limit:
            problems.append(f"a MAIL FROM came {late:.3f} s after its instant (limit {late_limit} s)")
        assert not problems, "\n".join(problems[:30]) + (f"\n... {len(problems)} problems" if len(problems) > 30 else "")
        statuses = Counter(r["status"] for r in rows.values())
        return Totals(kills=len(self.kills), sends=len(rows), arrivals=len(messages), duplicates=len(dups),
                      by_status=statuses,
                      skipped=Counter(r["reason"] for r in rows.values() if r["status"] == "skipped"),
                      in_flight=len(marked | set().union(*(k.unmarked for k in self.kills))),
                      in_flight_marked=len(marked), max_late_s=late)
