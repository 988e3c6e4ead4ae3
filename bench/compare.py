"""warmupd side by side with what users would pick instead, on one plan and one recording server.

    .venv/bin/python bench/compare.py [--accounts 36] [--span 3] [--per-account 6]
        [--only warmupd,apscheduler,polling] [--seed 1] [--lead 15] [--grace 300]
        [--poll 120] [--min-gap 20] [--svg bench/compare.svg] [--keep-dir DIR]

The plan: ``warmupd.planner.plan_day`` (the planner's own output, ``random.Random(--seed)``)
for ``--accounts`` accounts on a fixed day (2026-01-05, UTC) whose one period window is
12:00 to 12:00 + ``--span`` minutes; ramp start = max = ``--per-account`` sends, min_gap
``--min-gap`` s, jitter 5 s, micro jitter 1 s. Every contender gets that same plan
shifted by one offset: its window opens ``--lead`` s after the contender's process is
spawned, so each sees an identical schedule relative to its own start. Each contender
has its own Message-ID prefix (``<wd.``, ``<aps.``, ``<poll.`` before the planner's id),
which attributes the arrivals at the server.

One recording SMTP server for all three, in its own process: ``python -m
tests.rig.smtp_server --users ... --record FILE --fast`` (aiosmtpd, AUTH PLAIN/LOGIN
checked against each account's password, 127.0.0.1), which records ``mail_from_at`` (its
``time.time()`` when MAIL FROM arrived) for every accepted message.

The contenders, one after the other, each its own child process:

1. ``warmupd``: ``python -m warmupd.cli run --config ...`` on this checkout; the plan is
   seeded into its database (``Store.insert_plan``: exact instants and Message-IDs) before
   it starts; the accounts' ``start_date`` is 60 days ahead, so its own planner plans
   nothing else. Its one window covers the current hours of a zone whose midnight is not
   near; grace as ``--grace``.
2. ``apscheduler``: APScheduler 3 ``AsyncIOScheduler`` (asyncio's default loop) with a
   ``SQLAlchemyJobStore`` on an SQLite file, one ``date`` job per send (run_date = the
   instant, ``misfire_grace_time`` = ``--grace``), seeded into the job store by a separate
   process before the scheduler starts; each job builds the message with the ``email``
   package and sends it with aiosmtplib (connect, login, sendmail, quit).
3. ``polling``: the design warmupd replaces: the plan in an SQLite table, a loop that wakes
   every ``--poll`` s (aligned to its own start: at start, start + poll, ...), selects
   the pending sends that are due and sends them one after another the same way
   (skipping any more than the grace late), marking each row sent.

Figures per contender: lateness at the server (``mail_from_at`` minus the planned instant)
p50 / p99 / max, early arrivals (lateness below -1 ms), sends arrived vs planned, CPU
seconds of the child (user + sys from ``wait4``'s rusage, over its whole life and from
2 s before its window opens to its exit), peak RSS (``VmHWM`` of ``/proc/PID/status``,
sampled through the run and last just before SIGTERM: ``ru_maxrss`` of a child can carry
the parent's size from before exec). A markdown table on stdout and ``--svg``: the three lateness ECDFs on a
log axis (ms). For the two others, each send first prints its own start time to the
child's log (one line), which splits their lateness into the scheduler's part (job start
minus instant) and the session's (message, connect, EHLO, AUTH up to MAIL FROM).

A run takes about 3 x (5 s + ``--lead`` + ``--span``) plus one ``--poll`` (~11 min with
the defaults). Children die with the bench (PR_SET_PDEATHSIG) and are stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DOMAIN = "compare.bench.warmup.test"
PLAN_DAY = date(2026, 1, 5)  # a Monday; the plan's window opens at 12:00 UTC of it
CONTENDERS = ("warmupd", "apscheduler", "polling")
PREFIX = {"warmupd": "wd", "apscheduler": "aps", "polling": "poll"}
EARLY_MS = -1.0
ZONES = ["UTC", "Europe/London", "America/New_York", "Asia/Tokyo", "Asia/Kolkata",
         "America/Los_Angeles", "Australia/Sydney", "Europe/Berlin"]
INHERITED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "STATE_DIRECTORY",
                 "RUNTIME_DIRECTORY", "CREDENTIALS_DIRECTORY", "WARMUPD_SOCKET", "LISTEN_FDS",
                 "LISTEN_PID", "FAKETIME", "LD_PRELOAD")
PREP_S = 5.0  # seconds from choosing the instants to spawning a contender (seeding fits in it)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ================================================================ the children (no warmupd import)


def _message(s: dict[str, Any]) -> bytes:
    """What a user's script would write: the email package, the same headers as warmupd's."""
    from email.message import EmailMessage
    from email.utils import format_datetime

    msg = EmailMessage()
    msg["From"] = s["from"]
    msg["To"] = s["to"]
    msg["Subject"] = s["subject"]
    msg["Date"] = format_datetime(datetime.fromtimestamp(s["at"], UTC))
    msg["Message-ID"] = s["message_id"]
    msg["X-Warmup-Id"] = str(s["warmup_id"])
    msg.set_content(s["body"])
    return msg.as_bytes()


async def send_one(port: int, s: dict[str, Any]) -> None:
    """One send: connect, login, sendmail, quit (aiosmtplib). The APScheduler job function."""
    import aiosmtplib

    print(f"JOB {s['message_id']} {time.time():.6f}", flush=True)  # when the job itself began
    try:
        raw = _message(s)
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30)
        await client.connect()
        try:
            await client.login(s["from"], s["password"])
            await client.sendmail(s["from"], [s["to"]], raw)
        finally:
            with contextlib.suppress(Exception):
                await client.quit()
    except Exception as e:  # noqa: BLE001 - counted by the bench from this line
        print(f"SEND FAILED {s['message_id']}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def child_aps_seed(a: argparse.Namespace) -> None:
    """Write one date job per send into the SQLAlchemy job store, then stop (nothing runs)."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    sends = json.loads(Path(a.plan).read_text())
    sched = AsyncIOScheduler(jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{a.db}")},
                             timezone=UTC)
    sched.start(paused=True)
    for s in sends:
        sched.add_job(send_one, "date", run_date=datetime.fromtimestamp(s["at"], UTC), args=[a.port, s],
                      id=s["message_id"], misfire_grace_time=int(a.grace), replace_existing=True)
    sched.shutdown(wait=False)
    print(f"seeded {len(sends)} jobs", flush=True)


async def child_apscheduler(a: argparse.Namespace) -> None:
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    stop = _stop_event()
    sched = AsyncIOScheduler(jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{a.db}")},
                             timezone=UTC)
    sched.start()
    print(f"READY jobs={len(sched.get_jobs())}", flush=True)
    await stop.wait()
    sched.shutdown(wait=False)


async def child_polling(a: argparse.Namespace) -> None:
    stop = _stop_event()
    con = sqlite3.connect(a.db)
    start = time.time()  # the wakes are aligned to this moment
    print("READY", flush=True)
    k = 0
    while not stop.is_set():
        now = time.time()
        due = con.execute("SELECT id, doc FROM sends WHERE status = 'pending' AND at <= ? ORDER BY at",
                          (now,)).fetchall()
        for ident, doc in due:
            s = json.loads(doc)
            if time.time() - s["at"] > a.grace:
                con.execute("UPDATE sends SET status = 'skipped' WHERE id = ?", (ident,))
            else:
                await send_one(a.port, s)
                con.execute("UPDATE sends SET status = 'sent' WHERE id = ?", (ident,))
            con.commit()
        print(f"wake {k} at +{now - start:.3f} s: {len(due)} due", flush=True)
        k += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, start + k * a.poll - time.time()))
    con.close()


def child_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--child", choices=["aps-seed", "apscheduler", "polling"], required=True)
    p.add_argument("--plan")
    p.add_argument("--db", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--grace", type=float, required=True)
    p.add_argument("--poll", type=float, default=120.0)
    a = p.parse_args(argv)
    fn = {"aps-seed": child_aps_seed, "apscheduler": child_apscheduler, "polling": child_polling}[a.child]
    asyncio.run(fn(a))
    return 0


# ================================================================ processes (the bench side)


_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:  # in the child between fork and exec
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Procs:
    """Every process the bench started; ``close()`` ends each one by its pid."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, cmd: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True,
                             preexec_fn=_die_with_parent, **kw)
        self.procs.append(p)
        return p

    @staticmethod
    def stop(p: subprocess.Popen[bytes], timeout: float = 10.0) -> tuple[int | None, Any]:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL. (exit status, rusage or None)."""
        if p.returncode is not None:
            return p.returncode, None
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        killed = False
        while True:
            try:
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            except ChildProcessError:
                p.returncode = p.returncode if p.returncode is not None else -1
                return p.returncode, None
            if pid:
                p.returncode = os.waitstatus_to_exitcode(status)
                return p.returncode, ru
            if time.monotonic() > deadline and not killed:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                killed, deadline = True, time.monotonic() + 10
            elif time.monotonic() > deadline:
                return None, None
            time.sleep(0.02)

    def close(self) -> None:
        for p in self.procs:
            if p.returncode is None and p.poll() is None:
                self.stop(p, timeout=5.0)
        self.procs.clear()


PROCS = Procs()


def proc_status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def proc_cpu(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _readline(p: subprocess.Popen[bytes], timeout: float) -> bytes:
    got: list[bytes] = []
    assert p.stdout is not None
    t = threading.Thread(target=lambda: got.append(p.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    t.start()
    t.join(timeout)
    return got[0] if got else b""


class Recorder:
    """tests.rig.smtp_server in its own process (the form SMTPServerProcess starts)."""

    def __init__(self, record: Path, users: dict[str, str]) -> None:
        self.record = record
        self.err = open(record.with_suffix(".err"), "wb")  # noqa: SIM115
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = PROCS.spawn([sys.executable, "-m", "tests.rig.smtp_server", "--host", "127.0.0.1",
                                 "--port", "0", "--users", ",".join(f"{u}:{p}" for u, p in users.items()),
                                 "--record", str(record), "--fast"],
                                stdout=subprocess.PIPE, stderr=self.err, env=env, cwd=str(REPO))
        line = _readline(self.proc, 20.0)
        if not line.startswith(b"READY"):
            PROCS.stop(self.proc)
            raise SystemExit(f"the recording SMTP server did not start (got {line!r}; see {self.err.name})")
        self.port = int(dict(kv.split("=") for kv in line.decode().split()[1:])["smtp_port"])

    def records(self) -> list[dict[str, Any]]:
        out = []
        if self.record.exists():
            with open(self.record, encoding="utf-8") as f:
                for line in f:
                    if line.endswith("\n"):
                        r = json.loads(line)
                        r.pop("raw", None)
                        out.append(r)
        return out

    def stop(self) -> None:
        PROCS.stop(self.proc)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.err.close()


# ================================================================ the plan


@dataclass(frozen=True)
class Send:
    rel: float  # seconds after the window opens
    account: str
    recipient: str
    period: str
    mid: str  # the planner's Message-ID, without the angle brackets
    subject: str
    body: str


def account_emails(n: int) -> list[str]:
    return [f"a{i:03d}@{DOMAIN}" for i in range(n)]


def password(email: str) -> str:
    return "pw-" + email.split("@")[0]


def make_plan(work: Path, args: argparse.Namespace) -> list[Send]:
    """The planner's own output for the fixed day, relative to its window's opening."""
    from warmupd.config import load_config
    from warmupd.planner import Pool, plan_day
    from warmupd.templates import compose

    emails = account_emails(args.accounts)
    window = f"12:00-12:{args.span:02d}"
    lines = ["[daemon]", f'state_dir = "{work / "plan-state"}"', "", "[defaults]", 'timezone = "UTC"',
             'weekdays = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]', 'jitter = "5s"',
             'micro_jitter = "1s"', f'min_gap = "{args.min_gap:g}s"', "",
             "[defaults.periods]", f'peak = {{ windows = ["{window}"], weight = 1.0 }}', "",
             "[defaults.ramp]", f"start = {args.per_account}", "step = 1", f"max = {args.per_account}", ""]
    for e in emails:
        lines += ["[[accounts]]", f'email = "{e}"', f'start_date = "{PLAN_DAY.isoformat()}"',
                  f'smtp = {{ host = "127.0.0.1", port = 2525, security = "none", password = "{password(e)}" }}',
                  ""]
    path = work / "plan.toml"
    path.write_text("\n".join(lines))
    cfg = load_config(path)
    pool = Pool(emails)
    rng = random.Random(args.seed)
    text_rng = random.Random(args.seed + 1)
    w0 = datetime.combine(PLAN_DAY, datetime.min.time(), UTC).timestamp() + 12 * 3600
    out: list[Send] = []
    for acct in cfg.accounts:
        for s in plan_day(acct, PLAN_DAY, 1, rng, pool):
            subject, body = compose(text_rng, acct.email, s.recipient)
            out.append(Send(round(s.at - w0, 3), acct.email, s.recipient, s.period, s.message_id.strip("<>"),
                            subject, body))
    out.sort(key=lambda s: (s.rel, s.account))
    return out


def instant(base: float, s: Send) -> float:
    """The planned instant handed to a contender (the store keeps milliseconds)."""
    return round(base + s.rel, 3)


def tagged(mid: str, who: str) -> str:
    return f"<{PREFIX[who]}.{mid}>"


# ================================================================ the contenders


@dataclass
class Result:
    name: str
    setup: str = ""
    planned: int = 0
    base: float = 0.0  # the window's opening for this contender (bench clock)
    spawned: float = 0.0
    ready_s: float | None = None
    late_ms: list[float] = field(default_factory=list)
    duplicates: int = 0
    cpu_life: float | None = None
    cpu_firing: float | None = None
    hwm: int | None = None
    rc: int | None = None
    outcomes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in INHERITED_ENV}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    env["WARMUPD_SYSTEM_RESOLVER"] = "off"  # no reputation lookups beyond loopback
    return env


def choose_zone(now: float, need_s: float) -> tuple[str, str]:
    """A zone whose local midnight is more than ``need_s`` away, and its 'HH:00-HH+2:00' window."""
    from zoneinfo import ZoneInfo

    for tz in ZONES:
        local = datetime.fromtimestamp(now, ZoneInfo(tz))
        midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), ZoneInfo(tz))
        if local.hour <= 21 and midnight.timestamp() - now > need_s:
            return tz, f"{local.hour:02d}:00-{local.hour + 2:02d}:00"
    raise SystemExit("every candidate zone is near its midnight; try again in an hour")


def warmupd_config(d: Path, emails: list[str], port: int, tz: str, window: str,
                   args: argparse.Namespace) -> Path:
    start = (datetime.now(UTC).date() + timedelta(days=60)).isoformat()
    lines = ["[daemon]", 'state_dir = "state"', f'socket = "{d / "ctl.sock"}"', f'grace = "{args.grace:g}s"',
             'log_format = "json"', 'log_level = "info"', 'shutdown_timeout = "10s"', "",
             "[defaults]", f'timezone = "{tz}"', 'weekdays = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]',
             'jitter = "5s"', 'micro_jitter = "1s"', f'min_gap = "{args.min_gap:g}s"', "",
             "[defaults.periods]", f'peak = {{ windows = ["{window}"], weight = 1.0 }}', "",
             "[defaults.ramp]", f"start = {args.per_account}", "step = 1", f"max = {args.per_account}", ""]
    for e in emails:
        lines += ["[[accounts]]", f'email = "{e}"', f'start_date = "{start}"',
                  f'smtp = {{ host = "127.0.0.1", port = {port}, security = "none", username = "{e}", '
                  f'password = "{password(e)}", timeout = "30s" }}', ""]
    path = d / "config.toml"
    path.write_text("\n".join(lines))
    return path


def seed_warmupd(db: Path, plan: list[Send], base: float, tz: str) -> None:
    from warmupd.planner import PlannedSend
    from warmupd.store import Store

    local_day = datetime.fromtimestamp(base, __import__("zoneinfo").ZoneInfo(tz)).date().isoformat()
    per: dict[str, list[PlannedSend]] = {}
    for s in plan:
        per.setdefault(s.account, []).append(
            PlannedSend(instant(base, s), s.period, s.recipient, tagged(s.mid, "warmupd")))
    days = [(acct, local_day, 1, len(sends), sorted(sends, key=lambda x: x.at)) for acct, sends in per.items()]

    async def run() -> None:
        store = await Store.open(db)
        try:
            await store.insert_plan(days)
        finally:
            await store.close()

    asyncio.run(run())


def send_docs(plan: list[Send], base: float, who: str) -> list[dict[str, Any]]:
    return [{"at": instant(base, s), "from": s.account, "password": password(s.account), "to": s.recipient,
             "message_id": tagged(s.mid, who), "warmup_id": i, "subject": s.subject, "body": s.body}
            for i, s in enumerate(plan)]


def has_ready(text: str, needle: str) -> bool:
    if needle != "ready":
        return needle in text
    for line in text.splitlines():  # warmupd: its JSON log's "ready" event
        if '"ready"' in line:
            with contextlib.suppress(ValueError):
                if json.loads(line).get("event") == "ready":
                    return True
    return False


def wait_line(path: Path, needle: str, p: subprocess.Popen[bytes], timeout: float) -> float | None:
    """When ``needle`` appeared in the child's output (None: timed out or the process ended)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        with contextlib.suppress(FileNotFoundError):
            if has_ready(path.read_text(errors="replace"), needle):
                return time.time()
        if p.poll() is not None:
            return None
        time.sleep(0.02)
    return None


def sleep_until(t: float) -> None:
    while (left := t - time.time()) > 0:
        time.sleep(min(left, 0.5))


def run_contender(who: str, plan: list[Send], rec: Recorder, work: Path, args: argparse.Namespace,
                  versions: dict[str, str]) -> Result:
    d = work / who
    d.mkdir()
    res = Result(who, planned=len(plan))
    last_rel = max(s.rel for s in plan)
    t_spawn = time.time() + PREP_S
    base = res.base = round(t_spawn + args.lead, 3)
    out_path = d / "child.log"
    env = child_env()
    py = sys.executable
    if who == "warmupd":
        tz, window = choose_zone(time.time(), PREP_S + args.lead + last_rel + 600)
        cfg = warmupd_config(d, account_emails(args.accounts), rec.port, tz, window, args)
        seed_warmupd(d / "state" / "warmupd.db", plan, base, tz)
        cmd = [py, "-m", "warmupd.cli", "run", "--config", str(cfg)]
        ready_needle = "ready"
        res.setup = (f"`warmupd run` ({tree_rev()}), {versions['loop']}; plan seeded with "
                     f"Store.insert_plan; timezone {tz}, window {window}, grace {args.grace:g} s; it opens each "
                     "SMTP session about 1 s ahead and issues MAIL FROM at the instant")
    elif who == "apscheduler":
        db = d / "jobs.sqlite"
        (d / "plan.json").write_text(json.dumps(send_docs(plan, base, who)))
        seed = subprocess.run([py, str(Path(__file__).resolve()), "--child", "aps-seed", "--plan", str(d / "plan.json"),
                               "--db", str(db), "--port", str(rec.port), "--grace", str(args.grace)],
                              capture_output=True, text=True, env=env, cwd=str(d), timeout=60)
        if seed.returncode != 0:
            res.error = f"seeding the job store failed: {seed.stderr.strip()[-500:]}"
            return res
        cmd = [py, str(Path(__file__).resolve()), "--child", "apscheduler", "--db", str(db),
               "--port", str(rec.port), "--grace", str(args.grace)]
        ready_needle = "READY"
        res.setup = (f"APScheduler {versions['apscheduler']} AsyncIOScheduler (asyncio default loop), "
                     f"SQLAlchemyJobStore (SQLAlchemy {versions['sqlalchemy']}) on SQLite, {len(plan)} `date` jobs, "
                     f"misfire_grace_time {args.grace:g} s; each job connects at its instant; aiosmtplib {versions['aiosmtplib']}")
    else:
        db = d / "plan.sqlite"
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE sends (id INTEGER PRIMARY KEY, at REAL NOT NULL, status TEXT NOT NULL, doc TEXT)")
        con.executemany("INSERT INTO sends (at, status, doc) VALUES (?, 'pending', ?)",
                        [(s["at"], json.dumps(s)) for s in send_docs(plan, base, who)])
        con.commit()
        con.close()
        cmd = [py, str(Path(__file__).resolve()), "--child", "polling", "--db", str(db), "--port", str(rec.port),
               "--grace", str(args.grace), "--poll", str(args.poll)]
        ready_needle = "READY"
        res.setup = (f"asyncio loop waking every {args.poll:g} s from its own start, SQLite table, due sends "
                     f"one after another; aiosmtplib {versions['aiosmtplib']}")
    if time.time() > t_spawn:
        res.notes.append(f"seeding ran {time.time() - t_spawn:.2f} s past the planned spawn")
    sleep_until(t_spawn)
    log(f"{who}: spawning; window opens in {args.lead:g} s, last send at +{args.lead + last_rel:.0f} s")
    with open(out_path, "wb") as out:
        res.spawned = time.time()
        p = PROCS.spawn(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(d))
    ready_at = wait_line(out_path, ready_needle, p, args.lead)
    if ready_at is not None:
        res.ready_s = ready_at - res.spawned
    elif p.poll() is not None:
        res.error = f"exited with {p.returncode} before it was ready; see {out_path}"
    else:
        res.notes.append(f"not ready after {args.lead:g} s (the window opened before)")

    prefix = f"<{PREFIX[who]}."
    tail = 15.0 + (args.poll if who == "polling" else 0.0)
    deadline = base + last_rel + tail
    cpu_mark_at = base - 2.0
    cpu_mark: float | None = None
    hwm = 0
    while res.error is None:
        now = time.time()
        if cpu_mark is None and now >= cpu_mark_at:
            cpu_mark = proc_cpu(p.pid)
        hwm = max(hwm, proc_status(p.pid).get("VmHWM", 0))
        if p.poll() is not None:
            res.error = f"exited with {p.returncode} during the run; see {out_path}"
            break
        if now > base + last_rel:
            got = sum(1 for r in rec.records() if (r.get("message_id") or "").startswith(prefix))
            if got >= len(plan) or now > deadline:
                break
        time.sleep(0.25 if now > cpu_mark_at or cpu_mark_at - now > 1 else 0.01)
    hwm = max(hwm, proc_status(p.pid).get("VmHWM", 0))
    res.hwm = hwm or None
    res.rc, ru = PROCS.stop(p, timeout=30.0)
    if ru is not None:
        res.cpu_life = ru.ru_utime + ru.ru_stime
        if cpu_mark is not None:
            res.cpu_firing = res.cpu_life - cpu_mark
    log(f"{who}: stopped (exit {res.rc})")

    # lateness: the first arrival of each planned Message-ID
    planned_at = {tagged(s.mid, who): instant(base, s) for s in plan}
    first: dict[str, float] = {}
    for r in rec.records():
        mid = r.get("message_id") or ""
        if mid in planned_at:
            if mid in first:
                res.duplicates += 1
                first[mid] = min(first[mid], r["mail_from_at"])
            else:
                first[mid] = r["mail_from_at"]
    res.late_ms = sorted((first[m] - planned_at[m]) * 1000 for m in first)
    res.outcomes = outcomes(who, d, out_path)
    if who != "warmupd":  # split the lateness: the scheduler's part, then the SMTP session's
        began = job_starts(out_path)
        sched = [(began[m] - planned_at[m]) * 1000 for m in first if m in began]
        session = [(first[m] - began[m]) * 1000 for m in first if m in began]
        if sched:
            res.notes.append(f"job began after its instant p50 {fmt_ms(pct(sched, 50))}, p99 {fmt_ms(pct(sched, 99))}, "
                             f"max {fmt_ms(max(sched))}; from the job's start to MAIL FROM at the server (message, "
                             f"connect, EHLO, AUTH) p50 {fmt_ms(pct(session, 50))}, max {fmt_ms(max(session))}")
    return res


def job_starts(path: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("JOB "):
                parts = line.split()
                if len(parts) == 3:
                    out.setdefault(parts[1], float(parts[2]))
    return out


def outcomes(who: str, d: Path, out_path: Path) -> dict[str, int]:
    """What the contender itself says happened to the sends."""
    text = out_path.read_text(errors="replace") if out_path.exists() else ""
    if who == "warmupd":
        db = d / "state" / "warmupd.db"
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            rows = con.execute("SELECT status, count(*) FROM sends GROUP BY status").fetchall()
        except sqlite3.Error:
            con = sqlite3.connect(str(db), timeout=5)
            rows = con.execute("SELECT status, count(*) FROM sends GROUP BY status").fetchall()
        con.close()
        return dict(rows)
    if who == "polling":
        con = sqlite3.connect(str(d / "plan.sqlite"))
        rows = dict(con.execute("SELECT status, count(*) FROM sends GROUP BY status").fetchall())
        con.close()
        return rows
    out = {"send errors": text.count("SEND FAILED")}
    out["misfired (log)"] = text.count("was missed by")
    return out


# ================================================================ report


def pct(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))]


def fmt_ms(v: float) -> str:
    if math.isnan(v):
        return "-"
    if abs(v) >= 10_000:
        return f"{v / 1000:,.1f} s"
    return f"{v:.2f} ms" if abs(v) < 100 else f"{v:,.0f} ms"


def table(results: list[Result]) -> str:
    head = ("| contender | arrived / planned | lateness p50 | p99 | max | early (< -1 ms) | CPU s, whole life "
            "| CPU s, from 2 s before the window | peak RSS (VmHWM) | ready after start |")
    rows = [head, "|" + "---|" * 10]
    for r in results:
        late = r.late_ms
        rows.append("| " + " | ".join([
            r.name,
            f"{len(late)} / {r.planned}" + (f" (+{r.duplicates} dup)" if r.duplicates else ""),
            fmt_ms(pct(late, 50)), fmt_ms(pct(late, 99)), fmt_ms(max(late, default=math.nan)),
            str(sum(1 for x in late if x < EARLY_MS)),
            "-" if r.cpu_life is None else f"{r.cpu_life:.2f}",
            "-" if r.cpu_firing is None else f"{r.cpu_firing:.2f}",
            "-" if not r.hwm else f"{r.hwm / 2**20:.0f} MiB",
            "-" if r.ready_s is None else f"{r.ready_s:.2f} s",
        ]) + " |")
    return "\n".join(rows)


def plot(results: list[Result], path: Path, args: argparse.Namespace, n_planned: int) -> None:
    import matplotlib

    matplotlib.use("svg")
    matplotlib.rcParams["svg.hashsalt"] = "warmupd-bench-compare"
    import matplotlib.pyplot as plt

    lows = [x for r in results for x in r.late_ms]
    # ms: lateness at or below the floor (early arrivals included) is drawn at the floor
    floor = 0.1 if min(lows, default=1.0) >= 0.1 else 0.01
    colors = {"warmupd": "#1b7837", "apscheduler": "#2166ac", "polling": "#b2182b"}
    fig, ax = plt.subplots(figsize=(10, 6.4))
    top = 1.0
    for r in results:
        if not r.late_ms:
            continue
        xs = [max(floor, x) for x in sorted(r.late_ms)]
        ys = [(i + 1) / r.planned for i in range(len(xs))]
        top = max(top, xs[-1])
        early = sum(1 for x in r.late_ms if x < EARLY_MS)
        label = (f"{r.name}: p50 {fmt_ms(pct(r.late_ms, 50))}, p99 {fmt_ms(pct(r.late_ms, 99))}, "
                 f"max {fmt_ms(max(r.late_ms))}; {len(r.late_ms)}/{r.planned} arrived, {early} early")
        ax.step([floor, *xs], [0.0, *ys], where="post", color=colors.get(r.name), lw=2, label=label)
    ax.set_xscale("log")
    ax.set_xlim(floor, top * 2)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("lateness at the SMTP server: MAIL FROM arrival minus planned instant (ms, log scale)")
    ax.set_ylabel("share of planned sends arrived (ECDF)")
    ax.set_title(f"Same plan, three schedulers: {n_planned} sends of {args.accounts} accounts over "
                 f"{args.span} min (warmupd planner, seed {args.seed})", fontsize=11)
    ax.axvline(args.poll * 1000, color="#999999", ls=":", lw=1)
    ax.text(args.poll * 1000, 0.03, f"poll interval {args.poll:g} s ", color="#666666", fontsize=8, ha="right")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=9, frameon=False)
    fig.text(0.01, 0.01, f"Values <= {floor:g} ms (and early arrivals) are drawn at {floor:g} ms. One recording "
             "aiosmtpd server on 127.0.0.1; each contender in its own process, the plan shifted to open "
             f"{args.lead:g} s after its start.", fontsize=7.5, color="#555555")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)


def tree_rev() -> str:
    """The checkout whose warmupd runs, as it is now (others may be editing it)."""
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "warmupd"],
                           capture_output=True, text=True).stdout.splitlines()
    return f"checkout {rev}" + (f" + uncommitted changes in {len(dirty)} files of warmupd/" if dirty else "")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for name in ("apscheduler", "sqlalchemy", "aiosmtplib", "aiosmtpd", "uvloop", "matplotlib"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    out["loop"] = f"uvloop {out['uvloop']}" if out["uvloop"] != "missing" else "asyncio loop"
    return out


# ================================================================ main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--child" in argv:
        return child_main(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--accounts", type=int, default=36)
    p.add_argument("--span", type=int, default=3, help="the plan's window, in whole minutes (1-59)")
    p.add_argument("--per-account", type=int, default=6, help="sends per account (ramp start = max)")
    p.add_argument("--only", default=",".join(CONTENDERS), help="a subset of " + ",".join(CONTENDERS))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--lead", type=float, default=15.0, help="seconds from a contender's spawn to its window")
    p.add_argument("--grace", type=float, default=300.0)
    p.add_argument("--poll", type=float, default=120.0, help="the polling contender's interval, s")
    p.add_argument("--min-gap", type=float, default=20.0, help="the plan's min_gap, s")
    p.add_argument("--svg", type=Path, default=REPO / "bench" / "compare.svg")
    p.add_argument("--keep-dir", type=Path, help="work here and keep the files")
    args = p.parse_args(argv)
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    bad = [c for c in only if c not in CONTENDERS]
    if bad or not only:
        p.error(f"--only takes {','.join(CONTENDERS)}, got {args.only!r}")
    if not 1 <= args.span <= 59:
        p.error("--span is whole minutes, 1-59")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    vers = versions()
    print("command: " + " ".join([Path(sys.executable).name, *([sys.argv[0]] + argv)]))
    est = sum(PREP_S + args.lead + args.span * 60 + 2 + (args.poll if c == "polling" else 0) for c in only)
    print(f"python {sys.version.split()[0]}, cpus {os.cpu_count()}, load {os.getloadavg()[0]:.2f}; "
          f"expected run time ~{est / 60:.1f} min")
    if args.keep_dir:
        work = args.keep_dir.resolve()
        work.mkdir(parents=True, exist_ok=True)
        if any(work.iterdir()):
            p.error(f"--keep-dir {work} is not empty")
    else:
        work = Path(tempfile.mkdtemp(prefix="wu-compare-", dir="/tmp"))
    results: list[Result] = []
    rec = None
    try:
        plan = make_plan(work, args)
        per_acct = {s.account for s in plan}
        rels = [s.rel for s in plan]
        print(f"plan: warmupd.planner.plan_day, seed {args.seed}, {len(plan)} sends of {len(per_acct)} accounts "
              f"on {PLAN_DAY} in one window 12:00-12:{args.span:02d} UTC (min_gap {args.min_gap:g} s, jitter 5 s, "
              f"micro 1 s); first at +{min(rels):.3f} s, last at +{max(rels):.3f} s. Every contender gets it "
              f"shifted by one offset, so that the window opens {args.lead:g} s after that contender's process "
              "is spawned: an identical schedule relative to each start.")
        rec = Recorder(work / "records.jsonl", {e: password(e) for e in account_emails(args.accounts)})
        log(f"recording SMTP server on 127.0.0.1:{rec.port} (pid {rec.proc.pid})")
        for who in only:
            results.append(run_contender(who, plan, rec, work, args, vers))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if rec is not None:
            rec.stop()
        PROCS.close()
    print()
    print(table(results))
    print()
    for r in results:
        print(f"* {r.name}: {r.setup}. Exit {r.rc}. Own account of the sends: {json.dumps(r.outcomes)}"
              + (f". ERROR: {r.error}" if r.error else "") + ("".join(f"; {n}" for n in r.notes)))
    print(f"* server: tests.rig.smtp_server (aiosmtpd {vers['aiosmtpd']}), one process for all, --fast header scan, "
          "AUTH checked; lateness = its mail_from_at minus the shifted planned instant, first arrival per Message-ID")
    if any(r.late_ms for r in results):
        args.svg.parent.mkdir(parents=True, exist_ok=True)
        plot(results, args.svg, args, len(plan))
        print(f"plot: {args.svg} (matplotlib {vers['matplotlib']})")
    print(f"work dir: {work}" + ("" if args.keep_dir else " (removed)"))
    if not args.keep_dir:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    ok = all(r.error is None and len(r.late_ms) == r.planned for r in results)
    print("SUMMARY " + "; ".join(
        f"{r.name} {len(r.late_ms)}/{r.planned} p50 {fmt_ms(pct(r.late_ms, 50))} p99 {fmt_ms(pct(r.late_ms, 99))} "
        f"max {fmt_ms(max(r.late_ms, default=math.nan))}" for r in results))
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
