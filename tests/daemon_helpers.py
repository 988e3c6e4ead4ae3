"""Helpers for tests/test_daemon.py: run the real ``warmupd run`` against the test SMTP rig.

* ``write_config``: a config.toml in tmp_path whose single period covers now (UTC);
* ``seed_plan``: pre-plan exact sends through ``Store.insert_plan`` before the daemon
  starts, so the test does not depend on the random planner (the daemon never
  plans an account-day again once it is in ``plan_batches``);
* ``DaemonProc``: ``python -m warmupd.cli run --config ...`` as a subprocess with
  its JSON log in a file (stderr in it or, with ``split_stderr``, apart), waiting for log
  events, signals, kill -9; ``DaemonFactory`` starts them and stops them all at test end
  (tests/test_daemon_ops.py uses them too);
* ``send_rows`` / ``wait_rows``: read-only looks at the ``sends`` table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.rig.fixtures import RIG_USERS

REPO_ROOT = Path(__file__).resolve().parents[1]
ALICE, BOB, CAROL = "alice@warmup.test", "bob@warmup.test", "carol@warmup.test"
ACCOUNTS = (ALICE, BOB, CAROL)
ALL_WEEKDAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
FINAL = ("sent", "failed", "skipped", "uncertain")
SEND_COLUMNS = ("id", "account", "local_date", "at_ms", "status", "attempts", "retry_at_ms",
                "data_mark", "last_error", "reason", "sent_at_ms", "message_id", "recipient")


# ---------------------------------------------------------------- time


def seconds_to_utc_midnight(now: float | None = None) -> float:
    now = time.time() if now is None else now
    today = datetime.fromtimestamp(now, UTC).date()
    midnight = datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC)
    return midnight.timestamp() - now


def skip_near_midnight(need: float) -> None:
    """Skip a test that needs ``need`` seconds of the current UTC day (its window and
    its plan are for today; crossing midnight would make the daemon roll over)."""
    left = seconds_to_utc_midnight()
    if left < need:
        pytest.skip(f"only {left:.0f} s to UTC midnight, the test needs {need:.0f} s of today")


def window_covering_now(now: float | None = None) -> str:
    """"HH:00-HH+2:00" for the current UTC hour, never past "24:00"."""
    now = time.time() if now is None else now
    hour = datetime.fromtimestamp(now, UTC).hour
    return f"{hour:02d}:00-{min(hour + 2, 24):02d}:00"


def utc_today() -> date:
    return datetime.now(UTC).date()


# ---------------------------------------------------------------- config


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string


def account_lines(email: str, start: str, smtp: str, *extra: str) -> list[str]:
    """One ``[[accounts]]`` table of a generated config: ``smtp`` is its inline table,
    ``extra`` further lines of it (``imap = {...}``, ``weekdays = [...]``)."""
    return ["[[accounts]]", f"email = {_toml_str(email)}", f"start_date = {_toml_str(start)}",
            *extra, f"smtp = {smtp}", ""]


def rig_password_file(folder: Path, email: str) -> Path:
    """``folder/<user>.pw`` holding the rig's password for ``email``, owner-only."""
    pw_file = folder / f"{email.split('@')[0]}.pw"
    pw_file.write_text(RIG_USERS[email] + "\n")
    pw_file.chmod(0o600)
    return pw_file


def write_config(tmp_path: Path, port: int, *, ports: Mapping[str, int] | None = None,
                 accounts: Sequence[str] = ACCOUNTS, grace: str = "3s", min_gap: str = "2s",
                 jitter: str = "1s", timeouts: Mapping[str, str] | None = None,
                 default_timeout: str = "10s", max_attempts: int = 3,
                 start_date: date | None = None, shutdown_timeout: str = "15s",
                 window: str | None = None, ramp: tuple[int, int, int] = (2, 2, 40),
                 extra: Mapping[str, Sequence[str]] | None = None) -> Path:
    """Write tmp_path/config.toml for ``accounts`` on the rig's SMTP server at ``port``
    (``ports`` overrides it per account). The accounts start far in the future by default,
    so the daemon's own planner plans nothing for them: only seeded sends go out.
    ``extra`` adds TOML lines (e.g. ``weekdays = [...]``) to an account's table."""
    ports = dict(ports or {})
    timeouts = dict(timeouts or {})
    start = start_date or (utc_today() + timedelta(days=60))
    # The control socket lives in a short folder: sun_path holds 107 bytes at most.
    sock_dir = Path(tempfile.mkdtemp(prefix="wd-", dir="/tmp"))
    lines = [
        "[daemon]",
        'state_dir = "state"',
        f"socket = {_toml_str(str(sock_dir / 'warmupd.sock'))}",
        f'grace = "{grace}"',
        'log_format = "json"',
        'log_level = "info"',
        f'shutdown_timeout = "{shutdown_timeout}"',
        "",
        "[defaults]",
        'timezone = "UTC"',
        f"weekdays = {json.dumps(ALL_WEEKDAYS)}",
        f'jitter = "{jitter}"',
        'micro_jitter = "0s"',
        f'min_gap = "{min_gap}"',
        f"max_attempts = {max_attempts}",
        "",
        "[defaults.periods]",
        f'peak = {{ windows = ["{window or window_covering_now()}"], weight = 1.0 }}',
        "",
        "[defaults.ramp]",
        f"start = {ramp[0]}",
        f"step = {ramp[1]}",
        f"max = {ramp[2]}",
        "",
    ]
    for email in accounts:
        pw_file = rig_password_file(tmp_path, email)
        smtp = (f'{{ host = "127.0.0.1", port = {ports.get(email, port)}, security = "none", '
                f'username = "{email}", password_file = "{pw_file.name}", '
                f'timeout = "{timeouts.get(email, default_timeout)}" }}')
        lines += account_lines(email, start.isoformat(), smtp, *(extra or {}).get(email, ()))
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines))
    return path


def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "warmupd.db"


# ---------------------------------------------------------------- seeding the plan


@dataclass(frozen=True)
class Seed:
    at: float
    period: str
    recipient: str
    message_id: str


@dataclass(frozen=True)
class Seeded:
    id: int
    account: str
    at: float
    message_id: str


def seed_plan(tmp_path: Path, sends: Mapping[str, Sequence[float]], *,
              local_date: date | None = None, warmup_day: int = 1,
              statuses: Mapping[str, str] | None = None) -> list[Seeded]:
    """Plan exactly these instants per account for ``local_date`` (UTC today), before the
    daemon starts. ``statuses`` may set the status of every row of an account afterwards
    (e.g. "sent" for a day of history). Returns the rows in id order."""
    from warmupd.store import Store

    day = (local_date or utc_today()).isoformat()
    emails = sorted(RIG_USERS)
    days = []
    for email, instants in sends.items():
        others = [e for e in emails if e != email]
        seeds = [Seed(at=round(t, 3), period="peak", recipient=others[i % len(others)],
                      message_id=f"<seed.{uuid.uuid4().hex}@{email.split('@')[1]}>")
                 for i, t in enumerate(sorted(instants))]
        days.append((email, day, warmup_day, len(seeds), seeds))

    async def run() -> list[tuple[int, int, str]]:
        store = await Store.open(db_path(tmp_path))
        try:
            keys = await store.insert_plan(days)
            for email, status in (statuses or {}).items():
                await store.write(lambda con, s=status, e=email: con.execute(
                    "UPDATE sends SET status=?, attempts=1, sent_at_ms=at_ms WHERE account=? "
                    "AND local_date=?", (s, e, day)))
            return keys
        finally:
            await store.close()

    keys = asyncio.run(run())
    mids = {d[0]: [s.message_id for s in d[4]] for d in days}
    out: list[Seeded] = []
    seen: dict[str, int] = {}
    for at_ms, ident, account in keys:
        i = seen.get(account, 0)
        seen[account] = i + 1
        out.append(Seeded(ident, account, at_ms / 1000, mids[account][i]))
    return sorted(out, key=lambda s: s.id)


# ---------------------------------------------------------------- the database


def _connect_ro(path: Path) -> sqlite3.Connection:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        con.execute("SELECT count(*) FROM sends").fetchone()
        return con
    except sqlite3.OperationalError:
        # A WAL database whose -shm/-wal files are gone (clean exit) cannot always be
        # opened with mode=ro; a normal connection that only reads is as good.
        return sqlite3.connect(str(path), timeout=5)


def send_rows(tmp_path: Path, where: str = "1", params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Rows of ``sends`` (as dicts of SEND_COLUMNS), in id order."""
    con = _connect_ro(db_path(tmp_path))
    try:
        cur = con.execute(f"SELECT {', '.join(SEND_COLUMNS)} FROM sends WHERE {where} ORDER BY id",
                          tuple(params))
        return [dict(zip(SEND_COLUMNS, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


def send_events(tmp_path: Path, send_id: int) -> list[tuple[str | None, str, str | None]]:
    con = _connect_ro(db_path(tmp_path))
    try:
        return [tuple(r) for r in con.execute(
            "SELECT from_status, to_status, detail FROM events WHERE send_id=? ORDER BY id",
            (send_id,))]  # type: ignore[misc]
    finally:
        con.close()


def account_row(tmp_path: Path, email: str) -> dict[str, Any] | None:
    con = _connect_ro(db_path(tmp_path))
    try:
        r = con.execute("SELECT email, warmup_day, advanced_through, paused_reason FROM accounts "
                        "WHERE email=?", (email,)).fetchone()
    finally:
        con.close()
    return dict(zip(("email", "warmup_day", "advanced_through", "paused_reason"), r, strict=True)) if r else None


def wait_until(pred: Callable[[], Any], timeout: float, what: str = "condition",
               interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_rows(tmp_path: Path, pred: Callable[[list[dict[str, Any]]], bool], timeout: float,
              what: str = "the sends table") -> list[dict[str, Any]]:
    """Poll the sends table until ``pred(rows)`` holds; returns the rows."""
    last: list[dict[str, Any]] = []

    def check() -> bool:
        nonlocal last
        try:
            last = send_rows(tmp_path)
        except sqlite3.OperationalError:
            return False
        return pred(last)

    try:
        wait_until(check, timeout, what)
    except AssertionError as e:
        raise AssertionError(f"{e}; rows: {last}") from None
    return last


def all_final(rows: list[dict[str, Any]]) -> bool:
    return bool(rows) and all(r["status"] in FINAL for r in rows)


# ---------------------------------------------------------------- the daemon process

# Strip whatever a surrounding systemd (or the developer's shell) may have set.
INHERITED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "STATE_DIRECTORY",
                 "RUNTIME_DIRECTORY", "CREDENTIALS_DIRECTORY", "WARMUPD_SOCKET", "LISTEN_FDS",
                 "LISTEN_PID")


class DaemonProc:
    """``warmupd run --config`` as a subprocess. Each start is a new run with its own files:
    tmp_path/daemon-N.log gets stdout and stderr, or with ``split_stderr`` stdout only and
    stderr goes to tmp_path/daemon-N.err (N counts the runs of every DaemonProc in tmp_path).
    The log methods take ``run`` (1 = this object's first start; default: the current one)."""

    def __init__(self, config: Path, tmp_path: Path, env: Mapping[str, str] | None = None, *,
                 split_stderr: bool = False) -> None:
        self.config = config
        self.tmp_path = tmp_path
        self.extra_env = dict(env or {})
        self.split_stderr = split_stderr
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []  # the stdout file of each run

    def start(self, wait_ready: bool = True, timeout: float = 20.0) -> DaemonProc:
        assert not self.running(), "already running"
        log = self.tmp_path / f"daemon-{len(list(self.tmp_path.glob('daemon-*.log'))) + 1}.log"
        self.logs.append(log)
        env = {k: v for k, v in os.environ.items() if k not in INHERITED_ENV}
        env.update({"WARMUPD_RETRY_BASE": "1", "PYTHONUNBUFFERED": "1"})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env.update(self.extra_env)
        with contextlib.ExitStack() as files:
            out = files.enter_context(open(log, "wb"))
            err = (files.enter_context(open(log.with_suffix(".err"), "wb")) if self.split_stderr
                   else subprocess.STDOUT)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "warmupd.cli", "run", "--config", str(self.config)],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=self.tmp_path)
        if wait_ready:
            self.wait_event("ready", timeout=timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- the log

    def _read(self, run: int | None, stderr: bool) -> str:
        if not self.logs:
            return ""
        path = self.logs[-1 if run is None else run - 1]
        if stderr and self.split_stderr:
            path = path.with_suffix(".err")
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def stdout(self, run: int | None = None) -> str:
        """What the run wrote to stdout (and to stderr, unless ``split_stderr``)."""
        return self._read(run, stderr=False)

    def stderr(self, run: int | None = None) -> str:
        """What the run wrote to stderr (mixed with stdout, unless ``split_stderr``)."""
        return self._read(run, stderr=True)

    def output(self, run: int | None = None) -> str:
        """Everything the run wrote."""
        return self.stdout(run) + (self.stderr(run) if self.split_stderr else "")

    def tail(self) -> str:
        """The end of the current run's output, for assertion messages."""
        if self.split_stderr:
            return f"stdout:\n{self.stdout()[-3000:]}\nstderr:\n{self.stderr()[-2000:]}"
        return f"output:\n{self.output()[-4000:]}"

    def events(self, run: int | None = None) -> list[dict[str, Any]]:
        """The JSON log lines (on stdout) of one run; other lines are dropped."""
        out = []
        for line in self.stdout(run).splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            with contextlib.suppress(json.JSONDecodeError):  # a line being written
                obj = json.loads(line)
                if isinstance(obj, dict):
                    out.append(obj)
        return out

    def find(self, event: str, run: int | None = None, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.events(run) if e.get("event") == event
                and all(e.get(k) == v for k, v in match.items())]

    def wait_event(self, event: str, timeout: float = 10.0, count: int = 1,
                   **match: Any) -> list[dict[str, Any]]:
        """Wait until ``count`` log events named ``event`` (with these fields) appeared in
        the current run."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(event, **match)
            if len(found) >= count:
                return found
            if self.proc is not None and self.proc.poll() is not None:
                found = self.find(event, **match)
                if len(found) >= count:
                    return found
                raise AssertionError(f"warmupd exited ({self.proc.returncode}) before {count} "
                                     f"{event!r} {match}; {self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count} {event!r} {match} within {timeout} s; "
                                     f"{self.tail()}")
            time.sleep(0.05)

    def errors(self, run: int | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events(run) if e.get("level") in ("error", "critical")]

    # -- stopping

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then the exit code."""
        self.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def close(self) -> None:
        """The finalizer: whatever state it is in, the process is gone afterwards."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class DaemonFactory:
    """What the tests' daemon fixtures yield: ``factory(config, tmp_path, ...)`` starts a
    DaemonProc; ``close()``, the fixture's finalizer, stops every one it started."""

    def __init__(self) -> None:
        self.procs: list[DaemonProc] = []

    def __call__(self, config: Path, tmp_path: Path, *, env: Mapping[str, str] | None = None,
                 split_stderr: bool = False, wait_ready: bool = True) -> DaemonProc:
        d = DaemonProc(config, tmp_path, env, split_stderr=split_stderr)
        self.procs.append(d)
        return d.start(wait_ready=wait_ready)

    def close(self) -> None:
        for d in self.procs:
            d.close()
