"""Scale benchmark: ``warmupd run`` as a subprocess on generated pools of N accounts.

    .venv/bin/python bench/scale.py [--accounts 1000 10000 100000] [--inline] [--one-zone]
        [--tree DIR] [--start-timeout 300] [--measure 30] [--probe-rate 30] [--py-spy]
        [--skip-restart] [--skip-rollover] [--check-with-db] [--keep-dir DIR]

Per N (each in its own folder under /tmp, removed afterwards unless ``--keep-dir``):

* the pool: N accounts over a dozen real IANA zones (the one with the most of its day
  ahead holds a third of them, ``--one-zone``: all), chosen from the current time so
  that each zone has at least 8 h of its local day ahead; 40 sends a day (ramp
  start = max = 40); all seven weekdays; per zone, peak/normal/low windows that
  together cover the rest of the local day from the current minute to 24:00; min_gap
  4m, jitter 3m, micro_jitter 30s, grace 5m. One ``password_file`` per account
  (``secrets/uNNNNNN``, a relative name). The accounts live in ``accounts.d/*.toml``
  (1,000 a file) referenced by ``[daemon] include = ["accounts.d/*.toml"]``, or with
  ``--inline`` in the main file (code without ``include``). ``accounts.d/secrets`` is
  a link to ``../secrets`` so that the relative names resolve whether an included
  file's names are taken relative to it or to the main file.
* SMTP goes to ``tests.rig.smtp_server`` (aiosmtpd, its own process, no AUTH check,
  127.0.0.1) which appends one JSON line per accepted message with ``mail_from_at``
  (its ``time.time()`` when MAIL FROM arrived), ``x_warmup_id`` and ``message_id``.
* figures, each printed beside the project's target (targets are stated for 100,000
  accounts; they are printed, and flagged, at every N):
  - ``warmupd check`` wall time (no database yet; ``--check-with-db``: again with the
    stored plan present, which makes check read the warmup day per account);
  - first status, fresh: from spawning ``python -m warmupd.cli run`` on an empty state
    folder to the first ``{"ok": true}`` answer to ``{"cmd": "status"}`` on the control
    socket (polled every 50 ms; "still starting" answers and refused connections are
    retried); the daemon plans the rest of today for the whole pool in that time;
  - first status, restart: the same after SIGTERM, waiting for exit, and starting again
    on the stored plan;
  - RSS: VmRSS and VmHWM from /proc/PID/status at each first status (and at the end of
    each run);
  - status latency: median and max round trip of ``--status-requests`` sequential
    ``status`` requests over the socket (one connection each, as warmupctl does), once
    ready; and the wall time of the ``warmupctl --json status`` command (Python start
    included) for comparison;
  - fire lateness: MAIL FROM arrival at the recorder minus the planned instant
    (``sends.at_ms``), p50/p99/max and early count, for the sends planned inside the
    ``--measure`` window that follows the status probes of each run, during which the
    bench asks only ``metrics`` every 0.5 s (its loop lag: "loop lag max"), never
    ``status``: at 10,000 accounts one status answer holds the daemon's loop for about
    half a second, which would show up as lateness. Sends planned during start-up
    (sent late on purpose, or skipped) are counted apart;
  - before the restart, the fresh run is let finish its background plan of the whole
    day (status without ``planning``; at most ``--plan-timeout`` s, "whole day planned
    after"), so that the restart is over the whole stored day;
  - the rollover (``--skip-rollover`` to leave it out): a fresh pool (same zones and
    accounts) in its own state folder, with the daemon *and* the recorder started under
    libfaketime with the same relative offset (``FAKETIME=+S``, ``FAKETIME_DONT_RESET=1``,
    ``LD_PRELOAD=libfaketime.so.1``) so that their clocks start a little before local
    midnight of the big zone Z. Lateness and the log's timestamps are thus all in the
    daemon's own (faked) time frame; the bench converts its own clock by adding S. At
    Z's midnight the daemon plans Z's whole day (a third of the pool, or all of it with
    ``--one-zone``), while "probe" accounts of other zones (as many as give
    ``--probe-rate`` sends/s, each with 40 sends in a 3-minute window from 1 min before
    to 2 min after that midnight, min_gap 2s) have sends falling due. The rollover runs
    from the log's ``rollover`` event to its last ``plan stored``/``status summary``
    event; loop lag is the daemon's own sample (how late its last 0.5 s sleep woke up:
    ``warmupd_loop_lag_seconds`` of ``metrics``, or with ``--lag-cmd status`` the status
    answer's ``loop_lag_ms``, which costs the loop much more at scale), asked every
    ``--lag-interval`` s, taking the answers that came between the rollover's start and
    1 s after its end. That sample sees only the part of a stall that runs past the
    sleep's due time, so the stall a client sees is shown beside it: the largest round
    trip of those requests during the rollover minus the median of the others; fire lateness for the sends
    planned inside the rollover, and, for comparison, for the other probe sends.

Every wait has a timeout; every process the bench starts is stopped on exit (also on
Ctrl-C or an exception) by its pid, and gets SIGKILL from the kernel if the bench dies.
Exit status 0 when every target is met, 2 when one is missed (1: the bench failed).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import secrets as pysecrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parents[1]
LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
PREPARE_LEAD = 1.0  # warmupd.daemon.PREPARE_LEAD: a send opens its session this long ahead
CANDIDATE_ZONES = [
    "Pacific/Pago_Pago", "Pacific/Honolulu", "America/Anchorage", "America/Los_Angeles",
    "America/Denver", "America/Chicago", "America/New_York", "America/Halifax", "America/St_Johns",
    "America/Sao_Paulo", "America/Noronha", "Atlantic/Azores", "UTC", "Europe/London",
    "Europe/Berlin", "Africa/Lagos", "Europe/Athens", "Africa/Nairobi", "Europe/Moscow",
    "Asia/Dubai", "Asia/Karachi", "Asia/Kolkata", "Asia/Kathmandu", "Asia/Dhaka", "Asia/Bangkok",
    "Asia/Shanghai", "Asia/Tokyo", "Australia/Adelaide", "Australia/Sydney", "Pacific/Noumea",
    "Pacific/Auckland", "Pacific/Tongatapu", "Pacific/Kiritimati",
]
DOMAIN = "scale.warmup.test"
GiB = 1 << 30
TARGETS = {  # from the project's issue, for 100,000 accounts
    "restart_s": 3.0, "fresh_s": 10.0, "rss_bytes": 1 * GiB, "rollover_lag_ms": 20.0,
    "rollover_p99_ms": 5.0, "status_ms": 200.0,
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Procs:
    """Every process the bench started; ``close()`` ends each one by its pid."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, cmd: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        if threading.current_thread() is threading.main_thread():
            kw.setdefault("preexec_fn", _die_with_parent)  # the parent thread must outlive it
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    @staticmethod
    def stop(p: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit status."""
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
        return p.returncode

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                self.stop(p, timeout=5.0)
        self.procs.clear()


PROCS = Procs()


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes (empty once it is gone)."""
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


# ---------------------------------------------------------------- the control socket


def ctl(sock: Path, req: dict[str, Any], timeout: float) -> tuple[dict[str, Any] | None, str | None, float]:
    """One request on its own connection: (reply, error, seconds)."""
    t0 = time.perf_counter()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(sock))
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = bytearray()
        while b"\n" not in buf:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
        if not buf.strip():
            return None, "closed without an answer", time.perf_counter() - t0
        return json.loads(bytes(buf).split(b"\n", 1)[0]), None, time.perf_counter() - t0
    except (OSError, ValueError) as e:
        return None, f"{type(e).__name__}: {e}", time.perf_counter() - t0
    finally:
        s.close()


# ---------------------------------------------------------------- the recorder (SMTP sink)


class Sink:
    def __init__(self, python: str, record: Path, env: dict[str, str], port: int = 0) -> None:
        self.record = record
        out = record.with_suffix(".out")
        self.out = open(out, "wb")  # noqa: SIM115
        env = {**env, "PYTHONPATH": str(REPO)}  # the bench's own rig: the instrument
        self.proc = PROCS.spawn([python, "-m", "tests.rig.smtp_server", "--host", "127.0.0.1",
                                 "--port", str(port), "--record", str(record), "--fast"],
                                stdout=subprocess.PIPE, stderr=self.out, env=env, cwd=str(REPO))
        line = _readline(self.proc, 20.0)
        if not line.startswith(b"READY"):
            PROCS.stop(self.proc)
            raise RuntimeError(f"the SMTP recorder did not start (got {line!r}; see {out})")
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
        self.out.close()


def _readline(p: subprocess.Popen[bytes], timeout: float) -> bytes:
    got: list[bytes] = []
    assert p.stdout is not None
    t = threading.Thread(target=lambda: got.append(p.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    t.start()
    t.join(timeout)
    return got[0] if got else b""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- the pool


def local_minute(tz: str, t: float) -> float:
    d = datetime.fromtimestamp(t, ZoneInfo(tz))
    return d.hour * 60 + d.minute + d.second / 60


def next_midnight(tz: str, t: float) -> float:
    z = ZoneInfo(tz)
    d = datetime.fromtimestamp(t, z).date() + timedelta(days=1)
    return datetime(d.year, d.month, d.day, tzinfo=z).timestamp()


def utc_offset_min(tz: str, t: float) -> int:
    off = datetime.fromtimestamp(t, ZoneInfo(tz)).utcoffset()
    return int(off.total_seconds() // 60) if off else 0


def choose_zones(now: float, n: int = 12, min_ahead_h: float = 8.0) -> list[str]:
    """``n`` zones with at least ``min_ahead_h`` of the local day ahead, most ahead first,
    distinct UTC offsets first."""
    ahead = {tz: next_midnight(tz, now) - now for tz in CANDIDATE_ZONES}
    ok = sorted((tz for tz in CANDIDATE_ZONES if ahead[tz] >= min_ahead_h * 3600), key=lambda z: -ahead[z])
    out: list[str] = []
    offsets: set[int] = set()
    for tz in ok:
        if utc_offset_min(tz, now) not in offsets:
            out.append(tz)
            offsets.add(utc_offset_min(tz, now))
    out += [tz for tz in ok if tz not in out]
    if len(out) < n:
        raise SystemExit(f"only {len(out)} candidate zones have {min_ahead_h} h of their day ahead")
    return out[:n]


def hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def rest_of_day_periods(tz: str, now: float) -> str:
    """peak / normal / low covering [this minute, 24:00) of the zone's local day, 50/30/20 %
    of that span, weights 0.6/0.3/0.1 (as the defaults). The first window opens at the start
    of the current minute, so that sends fall due right after the daemon is up (it plans only
    the share of window time still ahead: 40 sends less at most one)."""
    s = int(local_minute(tz, now))
    span = 1440 - s
    a, b = s + round(span * 0.5), s + round(span * 0.8)
    return (f'{{ peak = {{ windows = ["{hhmm(s)}-{hhmm(a)}"], weight = 0.6 }}, '
            f'normal = {{ windows = ["{hhmm(a)}-{hhmm(b)}"], weight = 0.3 }}, '
            f'low = {{ windows = ["{hhmm(b)}-24:00"], weight = 0.1 }} }}')


@dataclass
class Acct:
    email: str
    zone: str
    secret: str
    periods: str = ""  # an inline TOML table, "" for [defaults.periods]
    extra: list[str] = field(default_factory=list)


def make_pool(n: int, zones: list[str], one_zone: bool) -> list[Acct]:
    out = []
    big = (n + 2) // 3
    for i in range(n):
        if one_zone or i < big:
            z = zones[0]
        else:
            z = zones[1 + (i - big) % (len(zones) - 1)]
        out.append(Acct(f"u{i:06d}@{DOMAIN}", z, pysecrets.token_urlsafe(12)))
    return out


def write_pool(d: Path, accts: list[Acct], port: int, sock: Path, inline: bool, per_file: int,
               start: date) -> Path:
    """config.toml (+ accounts.d/*.toml unless inline) and secrets/ under ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    sec = d / "secrets"
    sec.mkdir(mode=0o700, exist_ok=True)
    for a in accts:
        p = sec / a.email.split("@")[0]
        p.write_text(a.secret + "\n")
        p.chmod(0o600)
    head = [
        "# generated by bench/scale.py",
        "[daemon]",
        'state_dir = "state"',
        f"socket = {json.dumps(str(sock))}",
        'grace = "5m"',
        'log_format = "json"',
        'log_level = "info"',
        'shutdown_timeout = "10s"',
    ]
    if not inline:
        head.append('include = ["accounts.d/*.toml"]')
    head += [
        "",
        "[defaults]",
        'timezone = "UTC"',
        'weekdays = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]',
        'holidays = ""',
        'jitter = "3m"',
        'micro_jitter = "30s"',
        'min_gap = "4m"',
        "max_attempts = 3",
        "",
        "[defaults.periods]",
        'peak   = { windows = ["09:00-11:00", "14:00-16:00"], weight = 0.60 }',
        'normal = { windows = ["11:00-12:00", "16:00-18:00"], weight = 0.30 }',
        'low    = { windows = ["12:00-14:00"], weight = 0.10 }',
        "",
        "[defaults.ramp]",
        "start = 40",
        "step = 2",
        "max = 40",
        "",
    ]

    def block(a: Acct) -> str:
        user = a.email.split("@")[0]
        lines = ["[[accounts]]", f'email = "{a.email}"', f'timezone = "{a.zone}"',
                 f'start_date = "{start.isoformat()}"', *a.extra]
        if a.periods:
            lines.append(f"periods = {a.periods}")
        lines.append(f'smtp = {{ host = "127.0.0.1", port = {port}, security = "none", '
                     f'username = "{a.email}", password_file = "secrets/{user}", timeout = "30s" }}')
        return "\n".join(lines) + "\n"

    cfg = d / "config.toml"
    if inline:
        with open(cfg, "w") as f:
            f.write("\n".join(head) + "\n")
            for a in accts:
                f.write(block(a) + "\n")
    else:
        cfg.write_text("\n".join(head) + "\n")
        inc = d / "accounts.d"
        inc.mkdir(exist_ok=True)
        link = inc / "secrets"
        if not link.exists():
            link.symlink_to("../secrets")
        for k in range(0, len(accts), per_file):
            with open(inc / f"pool-{k // per_file:04d}.toml", "w") as f:
                for a in accts[k:k + per_file]:
                    f.write(block(a) + "\n")
    return cfg


# ---------------------------------------------------------------- the daemon


def tree_python(tree: Path) -> str:
    p = tree / ".venv" / "bin" / "python"
    return str(p) if p.exists() else sys.executable


def base_env(tree: Path, faketime: float | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "STATE_DIRECTORY", "RUNTIME_DIRECTORY",
              "CREDENTIALS_DIRECTORY", "WARMUPD_SOCKET", "FAKETIME", "LD_PRELOAD"):
        env.pop(k, None)
    env["PYTHONPATH"] = str(tree)
    env["PYTHONUNBUFFERED"] = "1"
    # The pool's domain is in no DNS, and only loopback is ours to ask: no reputation lookups.
    env["WARMUPD_SYSTEM_RESOLVER"] = "off"
    if faketime is not None:
        env["LD_PRELOAD"] = LIBFAKETIME
        env["FAKETIME"] = f"{faketime:+.3f}"
        env["FAKETIME_DONT_RESET"] = "1"
    return env


def iso_ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def log_events(path: Path, names: set[str]) -> list[dict[str, Any]]:
    """The JSON log lines whose event is one of ``names`` (with ``_t``: their timestamp)."""
    out = []
    if not path.exists():
        return out
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.startswith("{") or not any(n in line for n in names):
                continue
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") in names:
                with contextlib.suppress(KeyError, ValueError, AttributeError):
                    e["_t"] = iso_ts(e["timestamp"])
                out.append(e)
    return out


class LogTail:
    """Reads a growing JSON log incrementally, keeping the events named in ``names``."""

    def __init__(self, path: Path, names: set[str]) -> None:
        self.path, self.names, self.pos, self.events = path, names, 0, []  # type: ignore[var-annotated]

    def poll(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return self.events
        end = data.rfind(b"\n") + 1  # complete lines only
        self.pos += end
        for raw in data[:end].splitlines():
            line = raw.decode("utf-8", "replace")
            if not line.startswith("{") or not any(n in line for n in self.names):
                continue
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") in self.names:
                with contextlib.suppress(KeyError, ValueError, AttributeError):
                    e["_t"] = iso_ts(e["timestamp"])
                self.events.append(e)
        return self.events


@dataclass
class Run:
    label: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    sock: Path
    spawned: float  # bench's time.time() at spawn
    spawned_mono: float
    first_status_s: float | None = None
    first_status_at: float | None = None  # bench time.time()
    still_starting: int = 0
    refused: int = 0
    mem_ready: dict[str, int] = field(default_factory=dict)
    mem_end: dict[str, int] = field(default_factory=dict)
    stop_at: float | None = None  # bench time.time() of the SIGTERM
    stop_s: float | None = None
    exit_code: int | None = None
    spy: list[str] = field(default_factory=list)
    error: str | None = None
    quiet: tuple[float, float] | None = None  # the measurement window without status requests


def py_spy_path(tree: Path) -> str | None:
    p = tree / ".venv" / "bin" / "py-spy"
    return str(p) if p.exists() else shutil.which("py-spy")


def spy_async(spy: str | None, run: Run, note: str, out_dir: Path) -> None:
    """One ``py-spy dump`` of the daemon in a helper thread (so the waits are not held). Leave
    ``--py-spy`` off for the figures: even a non-blocking dump takes CPU from the daemon."""
    if not spy:
        return

    def go() -> None:
        try:
            # --nonblocking: a plain dump stops the process while it reads the stacks (about
            # 0.1 s here), which shows up as lateness of the sends due meanwhile.
            r = subprocess.run([spy, "dump", "--nonblocking", "--pid", str(run.proc.pid)], capture_output=True,
                               text=True, timeout=60)
            text = r.stdout + r.stderr
        except (OSError, subprocess.TimeoutExpired) as e:
            text = f"py-spy failed: {e}"
        path = out_dir / f"py-spy-{run.label}-{len(run.spy)}.txt"
        path.write_text(f"# {note}\n{text}")
        run.spy.append(f"{note}: {path}\n{text}")

    threading.Thread(target=go, daemon=True).start()


def start_daemon(label: str, tree: Path, cfg: Path, sock: Path, out_dir: Path, env: dict[str, str]) -> Run:
    log_path = out_dir / f"daemon-{label}.log"
    with open(log_path, "wb") as out:
        t, m = time.time(), time.monotonic()
        p = PROCS.spawn([tree_python(tree), "-m", "warmupd.cli", "run", "--config", str(cfg)],
                        stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(tree))
    return Run(label, p, log_path, sock, t, m)


def wait_first_status(run: Run, timeout: float, spy: str | None, spy_after: float, out_dir: Path) -> None:
    deadline = run.spawned_mono + timeout
    spy_at = [spy_after, 8 * spy_after]  # two dumps of a slow start
    while True:
        if run.proc.poll() is not None:
            run.error = f"exited with {run.proc.returncode} before answering (see {run.log_path})"
            return
        left = deadline - time.monotonic()
        if left <= 0:
            run.error = f"no ok status answer within {timeout:g} s"
            return
        if spy_at and time.monotonic() - run.spawned_mono > spy_at[0]:
            spy_async(spy, run, f"{spy_at.pop(0):g} s after spawn, still no status answer", out_dir)
        reply, err, _ = ctl(run.sock, {"cmd": "status"}, timeout=min(5.0, max(0.1, left)))
        if reply is not None and reply.get("ok"):
            run.first_status_at = time.time()
            run.first_status_s = time.monotonic() - run.spawned_mono
            run.mem_ready = proc_status(run.proc.pid)
            return
        if reply is not None:
            run.still_starting += 1
        else:
            run.refused += 1
        time.sleep(0.05)


def wait_planned(run: Run, sock: Path, timeout: float) -> float | None:
    """Seconds from spawn until status shows no background plan under way (None: not
    within ``timeout``)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        reply, _, _ = ctl(sock, {"cmd": "status"}, 30.0)
        result = reply.get("result") if reply is not None and reply.get("ok") else None
        if isinstance(result, dict) and result.get("planning") is None:
            return time.time() - run.spawned
        time.sleep(0.5)
    return None


def stop_daemon(run: Run, timeout: float = 60.0) -> None:
    run.mem_end = proc_status(run.proc.pid)
    run.stop_at = time.time()
    t = time.monotonic()
    run.exit_code = PROCS.stop(run.proc, timeout=timeout)
    run.stop_s = time.monotonic() - t


def status_latency(sock: Path, n: int) -> dict[str, Any]:
    rtts, errors = [], 0
    for _ in range(n):
        reply, err, dt = ctl(sock, {"cmd": "status"}, timeout=30.0)
        if reply is not None and reply.get("ok"):
            rtts.append(dt * 1000)
        else:
            errors += 1
    return {"n": len(rtts), "errors": errors, "median_ms": statistics.median(rtts) if rtts else math.nan,
            "max_ms": max(rtts, default=math.nan)}


def warmupctl_wall(tree: Path, sock: Path, env: dict[str, str], n: int = 3) -> float:
    walls = []
    for _ in range(n):
        t = time.perf_counter()
        try:
            r = subprocess.run([tree_python(tree), "-m", "warmupd.ctl", "--socket", str(sock), "--json", "status"],
                               capture_output=True, env=env, cwd=str(tree), timeout=60)
        except subprocess.TimeoutExpired:
            return math.inf
        if r.returncode != 0:
            return math.nan
        walls.append((time.perf_counter() - t) * 1000)
    return statistics.median(walls)


@dataclass
class Sample:
    sent: float  # bench time.time()
    rtt: float  # s
    lag_ms: float | None
    rss: int


def lag_of(cmd: str, reply: dict[str, Any] | None) -> float | None:
    """The daemon's loop lag (ms) from a ``status`` or ``metrics`` answer."""
    if not reply or not reply.get("ok"):
        return None
    result = reply.get("result")
    if cmd == "status":
        return result.get("loop_lag_ms") if isinstance(result, dict) else None
    for line in str(result).splitlines():
        if line.startswith("warmupd_loop_lag_seconds "):
            return float(line.split()[1]) * 1000
    return None


def sample_lag(run: Run, until: Any, interval: float, hard_s: float, cmd: str) -> list[Sample]:
    """``cmd`` (metrics or status) every ``interval`` s until ``until()`` is true (or ``hard_s`` s
    passed): the loop lag it reports, its round trip, the daemon's RSS."""
    out: list[Sample] = []
    hard = time.monotonic() + hard_s
    nxt = time.monotonic()
    while time.monotonic() < hard and run.proc.poll() is None and not until():
        t = time.time()
        reply, _, dt = ctl(run.sock, {"cmd": cmd}, timeout=10.0)
        out.append(Sample(t, dt, lag_of(cmd, reply), proc_status(run.proc.pid).get("VmRSS", 0)))
        nxt += interval
        time.sleep(max(0.0, nxt - time.monotonic()))
    return out


# ---------------------------------------------------------------- lateness


def pct(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))]


def db_rows(db: Path, lo_ms: int, hi_ms: int) -> dict[int, tuple[str, int, str, int]]:
    """{id: (account, at_ms, status, attempts)} of the sends planned in [lo_ms, hi_ms]."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return {r[0]: r[1:] for r in con.execute(
            "SELECT id, account, at_ms, status, attempts FROM sends WHERE at_ms BETWEEN ? AND ?", (lo_ms, hi_ms))}
    except sqlite3.OperationalError:
        con.close()
        con = sqlite3.connect(str(db), timeout=30)
        return {r[0]: r[1:] for r in con.execute(
            "SELECT id, account, at_ms, status, attempts FROM sends WHERE at_ms BETWEEN ? AND ?", (lo_ms, hi_ms))}
    finally:
        con.close()


def lateness(rows: dict[int, tuple[str, int, str, int]], recs: list[dict[str, Any]], lo: float, hi: float,
             shift: float = 0.0) -> dict[str, Any]:
    """Sends planned in [lo, hi] (daemon frame): lateness = recorder's mail_from_at + shift - at."""
    due = {i: r for i, r in rows.items() if lo <= r[1] / 1000 <= hi}
    first: dict[int, float] = {}
    for r in recs:
        try:
            i = int(r.get("x_warmup_id") or 0)
        except ValueError:
            continue
        if i in due and (i not in first or r["mail_from_at"] < first[i]):
            first[i] = r["mail_from_at"] + shift
    late = [(first[i] - due[i][1] / 1000) * 1000 for i in first]
    statuses: dict[str, int] = {}
    for r in due.values():
        statuses[r[2]] = statuses.get(r[2], 0) + 1
    return {"due": len(due), "received": len(first), "statuses": statuses,
            "p50": pct(late, 50), "p99": pct(late, 99), "max": max(late, default=math.nan),
            "early": sum(1 for x in late if x < 0), "retried": sum(1 for r in due.values() if r[3] > 1)}


# ---------------------------------------------------------------- one pool size


def run_check(tree: Path, cfg: Path, env: dict[str, str], out: Path, timeout: float) -> tuple[float | None, int | None, str]:
    t = time.perf_counter()
    with open(out, "wb") as f:
        p = PROCS.spawn([tree_python(tree), "-m", "warmupd.cli", "check", "--config", str(cfg)],
                        stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(tree))
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            PROCS.stop(p)
            return None, None, f"timed out after {timeout:g} s"
    wall = time.perf_counter() - t
    text = out.read_text(errors="replace")
    return wall, rc, text[:2000] if rc else text.splitlines()[0] if text else ""


def phase_a(n: int, args: argparse.Namespace, work: Path, res: dict[str, Any]) -> None:
    tree = args.tree
    now = time.time()
    zones = choose_zones(now)
    accts = make_pool(n, zones, args.one_zone)
    for a in accts:
        a.periods = rest_of_day_periods(a.zone, now)
    res["zones"] = {z: sum(1 for a in accts if a.zone == z) for z in zones}
    res["zones"] = {z: c for z, c in res["zones"].items() if c}
    d = work / "a"
    d.mkdir()
    sink = Sink(tree_python(tree), d / "records.jsonl", base_env(tree))
    try:
        sock = d / "ctl.sock"
        t = time.perf_counter()
        today = datetime.fromtimestamp(now).date()
        cfg = write_pool(d, accts, sink.port, sock, args.inline, args.per_file, today - timedelta(days=60))
        res["generate_s"] = time.perf_counter() - t
        log(f"N={n}: pool written in {res['generate_s']:.1f} s ({'inline' if args.inline else 'accounts.d'}); "
            f"zones {res['zones']}")
        env = base_env(tree)
        wall, rc, text = run_check(tree, cfg, env, d / "check.out", args.check_timeout)
        res["check"] = {"wall_s": wall, "rc": rc, "head": text}
        log(f"N={n}: warmupd check: {wall if wall is None else round(wall, 2)} s, rc {rc}: {text[:300]}")
        if rc != 0:
            if rc == 78 and "include" in text and not args.inline:
                raise SystemExit("this tree's config has no [daemon] include (check said: "
                                 f"{text.strip()[:300]}); run with --inline")
            raise SystemExit(f"warmupd check failed (rc {rc}):\n{text}")
        runs: list[Run] = []
        for label in ("fresh", "restart"):
            if label == "restart" and (args.skip_restart or not runs or runs[0].error):
                break
            run = start_daemon(label, tree, cfg, sock, d, env)
            runs.append(run)
            log(f"N={n}: {label}: daemon pid {run.proc.pid}, waiting for the first status answer "
                f"(timeout {args.start_timeout:g} s)")
            wait_first_status(run, args.start_timeout, args.spy, args.spy_after, d)
            if run.error:
                log(f"N={n}: {label}: {run.error}")
                time.sleep(1.0)  # let a pending py-spy dump finish
                stop_daemon(run, timeout=20)
                break
            log(f"N={n}: {label}: first status after {run.first_status_s:.2f} s, "
                f"RSS {run.mem_ready.get('VmRSS', 0) / 2**20:.0f} MiB")
            res[f"{label}_status"] = status_latency(sock, args.status_requests)
            if label == "fresh":
                res["warmupctl_ms"] = warmupctl_wall(tree, sock, env)
            # The quiet window: no status requests (a status at 10,000 accounts can hold the
            # loop for a large part of a second); the loop lag comes from metrics.
            run.quiet = (time.time(), 0.0)
            t_end = time.monotonic() + args.measure
            samples = sample_lag(run, lambda t_end=t_end: time.monotonic() >= t_end, 0.5, args.measure + 30,
                                 "metrics")
            run.quiet = (run.quiet[0], time.time())
            res[f"{label}_lag_max_ms"] = max((s.lag_ms for s in samples if s.lag_ms is not None), default=math.nan)
            if label == "fresh" and not args.skip_restart:
                # The restart is over the stored plan: the whole day, not the part of a
                # background plan that a SIGTERM cut short (the rest would be planned then).
                res["fresh_planned_s"] = wait_planned(run, sock, args.plan_timeout)
            stop_daemon(run)
            log(f"N={n}: {label}: stopped in {run.stop_s:.1f} s (exit {run.exit_code})")
        res["runs"] = runs
        if args.check_with_db and runs and not runs[0].error:
            wall, rc, text = run_check(tree, cfg, env, d / "check-db.out", args.check_timeout)
            res["check_db"] = {"wall_s": wall, "rc": rc, "head": text}
            log(f"N={n}: warmupd check with the database: {wall} s, rc {rc}")
    finally:
        time.sleep(0.5)
        sink.stop()
    # Lateness per run: sends planned between ready + lead and the SIGTERM.
    recs = sink.records()
    db = d / "state" / "warmupd.db"
    for run in res.get("runs", []):
        if run.first_status_at is None or run.stop_at is None or not db.exists():
            continue
        ready = min([e["_t"] for e in log_events(run.log_path, {"ready"}) if "_t" in e] or [run.first_status_at])
        rows = db_rows(db, int(run.spawned * 1000), int(run.stop_at * 1000))
        q0, q1 = run.quiet or (run.first_status_at, run.stop_at)
        res[f"{run.label}_late"] = lateness(rows, recs, max(q0, ready + PREPARE_LEAD + 0.5), q1)
        res[f"{run.label}_startup_due"] = lateness(rows, recs, run.spawned, ready + PREPARE_LEAD + 0.5)
    res["accts"] = accts
    res["zone_list"] = zones


def phase_b(n: int, args: argparse.Namespace, work: Path, res: dict[str, Any]) -> None:
    """The rollover, under libfaketime: see the module docstring."""
    tree = args.tree
    fresh = res["runs"][0]
    zones: list[str] = res["zone_list"]
    big = zones[0]
    real_now = time.time()
    lead = max(args.rollover_lead, 1.5 * (fresh.first_status_s or 0) + 15.0)
    midnight = next_midnight(big, real_now + 3600)  # the big zone's midnight, in the fake frame
    at_m = {z: local_minute(z, midnight + 1) for z in CANDIDATE_ZONES}
    same = [z for z in zones if at_m[z] < 1 or at_m[z] > 1439]  # roll over with Z
    probe_zones = [z for z in zones if 60 <= at_m[z] <= 1380]
    if args.one_zone or not probe_zones:
        probe_zones = [min((z for z in CANDIDATE_ZONES if 60 <= at_m[z] <= 1380), key=lambda z: abs(at_m[z] - 720))]
    per_probe = 40
    window_s = 180.0
    want = max(1, math.ceil(args.probe_rate * window_s / per_probe))
    accts = [Acct(a.email, a.zone, a.secret) for a in res["accts"]]  # default (business-hour) periods
    if args.one_zone:
        cands = list(range(len(accts) - 1, -1, -1))
    else:
        cands = [i for i, a in enumerate(accts) if a.zone in probe_zones]
    probes = cands[:min(want, len(cands), max(1, n // 4))]
    for i in probes:
        a = accts[i]
        if args.one_zone:
            a.zone = probe_zones[0]
        m = round(at_m[a.zone])
        a.periods = f'{{ peak = {{ windows = ["{hhmm(m - 1)}-{hhmm(m + 2)}"], weight = 1.0 }} }}'
        a.extra = ['min_gap = "2s"', 'jitter = "1s"', 'micro_jitter = "0s"']
    rolling = sum(1 for a in accts if a.zone in same)
    res["rollover_plan"] = {"zone": big, "same_midnight": same, "accounts_rolling": rolling,
                            "probes": len(probes), "probe_zones": sorted({accts[i].zone for i in probes}),
                            "probe_rate": len(probes) * per_probe / window_s, "lead_s": lead,
                            "midnight_utc": datetime.fromtimestamp(midnight, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    d = work / "b"
    d.mkdir()
    sock = d / "ctl.sock"
    port = free_port()
    cfg = write_pool(d, accts, port, sock, args.inline, args.per_file,
                     datetime.fromtimestamp(midnight).date() - timedelta(days=60))
    # One relative offset for the recorder and the daemon: their clocks agree to the millisecond
    # (an absolute FAKETIME="@..." would start each process's clock at that moment instead).
    offset = (midnight - 60.0 - lead) - time.time()
    env = base_env(tree, faketime=offset)
    offset = float(env["FAKETIME"])  # as rounded into the variable
    res["rollover_plan"]["faketime"] = env["FAKETIME"]
    sink = Sink(tree_python(tree), d / "records.jsonl", env, port=port)
    try:
        log(f"N={n}: rollover: {rolling} accounts roll over at {res['rollover_plan']['midnight_utc']} "
            f"({big}{', ' + ', '.join(z for z in same if z != big) if len(same) > 1 else ''}); "
            f"{len(probes)} probe accounts in {res['rollover_plan']['probe_zones']} "
            f"(~{res['rollover_plan']['probe_rate']:.0f} sends/s from 1 min before to 2 min after); "
            f"FAKETIME={env['FAKETIME']}, midnight in {midnight - time.time() - offset:.0f} s")
        run = start_daemon("rollover", tree, cfg, sock, d, env)
        res["rollover_run"] = run
        wait_first_status(run, lead + 55.0, args.spy, args.spy_after, d)
        if run.error:
            log(f"N={n}: rollover: {run.error}")
            stop_daemon(run, timeout=20)
            return
        left = midnight - (time.time() + offset)
        log(f"N={n}: rollover: first status after {run.first_status_s:.2f} s, {left:.0f} s to midnight")
        if left < 2:
            run.error = "ready too late: less than 2 s before midnight"

        spied = [False]
        tail = LogTail(run.log_path, {"rollover", "plan stored", "status summary", "cleanup", "ready"})

        def done() -> bool:
            fake = time.time() + offset
            if not spied[0] and fake > midnight + 1.0:
                spied[0] = True
                spy_async(args.spy, run, "1 s after the rollover began", d)
            if fake < midnight + 1.0:
                return False
            evs = tail.poll()
            starts = [e["_t"] for e in evs if e["event"] == "rollover" and e.get("_t", 0) >= midnight - 1]
            finished = bool(starts) and any(e["event"] == "plan stored" and e.get("_t", 0) >= min(starts)
                                            for e in evs)
            return finished and fake > midnight + 120 + 3

        samples = sample_lag(run, done, args.lag_interval, 60 + lead + 120 + args.rollover_timeout, args.lag_cmd)
        stop_daemon(run)
        log(f"N={n}: rollover: stopped in {run.stop_s:.1f} s (exit {run.exit_code})")
    finally:
        time.sleep(0.5)
        sink.stop()
    evs = tail.poll()
    starts = [e for e in evs if e["event"] == "rollover" and e.get("_t", 0) >= midnight - 1]
    if not starts:
        res["rollover"] = {"error": "no rollover event in the log"}
        return
    r0 = min(e["_t"] for e in starts)
    after = [e for e in evs if e.get("_t", 0) >= r0 and e["event"] in ("plan stored", "status summary")]
    r1 = max((e["_t"] for e in after), default=r0)
    planned = sum(int(e.get("sends", 0)) for e in after if e["event"] == "plan stored")
    during = [s for s in samples if r0 <= s.sent + offset + s.rtt <= r1 + 1.0]
    lags = [s.lag_ms for s in during if s.lag_ms is not None]
    db = d / "state" / "warmupd.db"
    recs = sink.records()
    ready = min([e["_t"] for e in evs if e["event"] == "ready"] or [run.first_status_at + offset])
    rows = db_rows(db, int((ready - 600) * 1000), int((run.stop_at + offset + 600) * 1000))
    res["rollover"] = {
        "start_utc": datetime.fromtimestamp(r0, UTC).isoformat(timespec="milliseconds"),
        "late_by_s": r0 - midnight, "duration_s": r1 - r0, "accounts": sum(int(e.get("accounts", 0)) for e in starts),
        "sends_planned": planned, "samples": len(during),
        "lag_max_ms": max(lags, default=math.nan), "lag_p50_ms": pct(lags, 50),
        "rtt_max_ms": max((s.rtt * 1000 for s in during), default=math.nan),
        "rtt_median_outside_ms": statistics.median([s.rtt * 1000 for s in samples if s not in during] or [math.nan]),
        "rss_max": max((s.rss for s in samples), default=0), "hwm_end": run.mem_end.get("VmHWM", 0),
        "late": lateness(rows, recs, r0, r1),
        "late_outside": {},
        "all_lag_max_ms": max((s.lag_ms for s in samples if s.lag_ms is not None), default=math.nan),
    }
    outside = {i: r for i, r in rows.items() if not (r0 <= r[1] / 1000 <= r1)}
    res["rollover"]["late_outside"] = lateness(outside, recs, ready + PREPARE_LEAD + 0.5, run.stop_at + offset - 0.5)


# ---------------------------------------------------------------- report


def fmt_s(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f} s"


def fmt_ms(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f} ms"


def mib(b: int | None) -> str:
    return "-" if not b else f"{b / 2**20:.0f} MiB"


def report(n: int, args: argparse.Namespace, res: dict[str, Any]) -> tuple[bool, list[str]]:
    ok_all = True
    summary: list[str] = []

    def row(name: str, value: str, target: str = "", ok: bool | None = None) -> None:
        nonlocal ok_all
        flag = "" if ok is None else ("ok" if ok else "MISSED")
        if ok is False:
            ok_all = False
        print(f"  {name:<52} {value:>28}  {target:<10} {flag}")

    runs: list[Run] = res.get("runs", [])
    print(f"\n== {n:,} accounts ({'inline' if args.inline else 'accounts.d include'}"
          f"{', one zone' if args.one_zone else ''}); zones: "
          + ", ".join(f"{z} {c}" for z, c in res.get("zones", {}).items()))
    chk = res.get("check", {})
    row("warmupd check (no database), wall", fmt_s(chk.get("wall_s")) if chk.get("wall_s") is not None
        else "> " + f"{args.check_timeout:g} s")
    if "check_db" in res:
        c = res["check_db"]
        row("warmupd check (stored plan present), wall", fmt_s(c.get("wall_s")) if c.get("wall_s") is not None
            else "> " + f"{args.check_timeout:g} s")
    for run in runs:
        tgt = TARGETS["fresh_s"] if run.label == "fresh" else TARGETS["restart_s"]
        name = "fresh database (plans the day)" if run.label == "fresh" else "restart over the stored plan"
        if run.first_status_s is not None:
            row(f"first status, {name}", f"{run.first_status_s:.2f} s", f"<= {tgt:g} s", run.first_status_s <= tgt)
        else:
            row(f"first status, {name}", f"> {args.start_timeout:g} s ({run.error})"[:60], f"<= {tgt:g} s", False)
        summary.append(f"{run.label} {run.first_status_s:.2f} s" if run.first_status_s is not None
                       else f"{run.label} > {args.start_timeout:g} s")
        rss, hwm = run.mem_ready.get("VmRSS"), run.mem_ready.get("VmHWM")
        if rss:
            row("  RSS at first status, VmRSS / VmHWM", f"{mib(rss)} / {mib(hwm)}", "<= 1 GiB",
                (hwm or 0) <= TARGETS["rss_bytes"])
        if run.mem_end:
            row("  RSS at SIGTERM, VmRSS / VmHWM", f"{mib(run.mem_end.get('VmRSS'))} / "
                f"{mib(run.mem_end.get('VmHWM'))}", "<= 1 GiB", run.mem_end.get("VmHWM", 0) <= TARGETS["rss_bytes"])
        row("  'still starting' answers / no answer before", f"{run.still_starting} / {run.refused}")
        st = res.get(f"{run.label}_status")
        if st:
            row(f"  status round trip, median / max of {st['n']}", f"{st['median_ms']:.1f} / {st['max_ms']:.1f} ms",
                "< 200 ms", st["max_ms"] < TARGETS["status_ms"])
        if run.label == "fresh" and "fresh_planned_s" in res:
            v = res["fresh_planned_s"]
            row("  whole day planned (background plan done) after",
                fmt_s(v) if v is not None else f"> {args.plan_timeout:g} s")
        if run.label == "fresh" and "warmupctl_ms" in res:
            row("  `warmupctl --json status` command, median wall", fmt_ms(res["warmupctl_ms"]))
        if f"{run.label}_lag_max_ms" in res:
            row(f"  loop lag max, metrics every 0.5 s for {args.measure:g} s", fmt_ms(res[f"{run.label}_lag_max_ms"]))
        late = res.get(f"{run.label}_late")
        if late:
            row(f"  fire lateness ({args.measure:g} s, no status asked): due / received",
                f"{late['due']:,} / {late['received']:,}")
            row("  fire lateness p50 / p99 / max", f"{late['p50']:.2f} / {late['p99']:.2f} / {late['max']:.2f} ms")
            row("  early arrivals", f"{late['early']}", "0", late["early"] == 0 if late["received"] else None)
        sd = res.get(f"{run.label}_startup_due")
        if sd and sd["due"]:
            row("  sends planned during start-up: due / sent, max late",
                f"{sd['due']:,} / {sd['received']:,}, {sd['max'] / 1000:.1f} s" if sd["received"]
                else f"{sd['due']:,} / 0 {json.dumps(sd['statuses'])}")
        if run.stop_s is not None:
            row("  SIGTERM to exit", f"{run.stop_s:.2f} s (exit {run.exit_code})")
    rp, ro = res.get("rollover_plan"), res.get("rollover")
    if rp:
        print(f"  rollover (FAKETIME={rp.get('faketime')}, lateness in the daemon's own clock: the recorder ran "
              f"under the same offset): {rp['accounts_rolling']:,} accounts of {rp['zone']} roll over at "
              f"{rp['midnight_utc']}; {rp['probes']} probe accounts in {', '.join(rp['probe_zones'])}, "
              f"~{rp['probe_rate']:.0f} sends/s due around it")
    rr: Run | None = res.get("rollover_run")
    if rr is not None and rr.error and not ro:
        row("rollover", f"not measured: {rr.error}"[:70])
    if ro and "error" in ro:
        row("rollover", ro["error"])
    elif ro:
        row("  daemon start under faketime, first status", fmt_s(rr.first_status_s if rr else None))
        row("  rollover: accounts, sends planned", f"{ro['accounts']:,}, {ro['sends_planned']:,}")
        row("  rollover: began after midnight / lasted", f"{ro['late_by_s'] * 1000:.0f} ms / {ro['duration_s']:.2f} s")
        row(f"  loop lag max during it ({ro['samples']} {args.lag_cmd} answers, every {args.lag_interval:g} s)",
            fmt_ms(ro["lag_max_ms"]),
            "<= 20 ms", ro["lag_max_ms"] <= TARGETS["rollover_lag_ms"] if ro["samples"] else None)
        stall = ro["rtt_max_ms"] - ro["rtt_median_outside_ms"]
        row(f"  {args.lag_cmd} round trip max during it / median outside", f"{fmt_ms(ro['rtt_max_ms'])} / "
            f"{fmt_ms(ro['rtt_median_outside_ms'])}")
        row("  loop stall seen by a client (that max - that median)", fmt_ms(stall), "<= 20 ms",
            stall <= TARGETS["rollover_lag_ms"] if ro["samples"] else None)
        lt = ro["late"]
        row("  fire lateness during it: due / received", f"{lt['due']:,} / {lt['received']:,} "
            + json.dumps(lt["statuses"]))
        row("  fire lateness during it p50 / p99 / max", f"{lt['p50']:.2f} / {lt['p99']:.2f} / {lt['max']:.2f} ms",
            "p99 <= 5 ms", lt["p99"] <= TARGETS["rollover_p99_ms"] if lt["received"] else None)
        row("  early arrivals during it", f"{lt['early']}", "0", lt["early"] == 0 if lt["received"] else None)
        lo = ro["late_outside"]
        if lo:
            row("  probe-window sends outside it: due / received", f"{lo['due']:,} / {lo['received']:,}")
            row("  ... lateness p50 / p99 / max", f"{lo['p50']:.2f} / {lo['p99']:.2f} / {lo['max']:.2f} ms")
        row("  loop lag max over the whole faked run", fmt_ms(ro["all_lag_max_ms"]))
        row("  RSS max sampled / VmHWM at SIGTERM", f"{mib(ro['rss_max'])} / {mib(ro['hwm_end'])}", "<= 1 GiB",
            ro["hwm_end"] <= TARGETS["rss_bytes"] if ro["hwm_end"] else None)
        summary.append(f"rollover {ro['duration_s']:.1f} s lag max {ro['lag_max_ms']:.0f} ms "
                       f"p99 {lt['p99']:.1f} ms")
    spies = [s for r in [*runs, rr] if r is not None for s in r.spy]
    for s in spies:
        print("  py-spy dump " + s.split("\n", 1)[0])
    return ok_all, summary


# ---------------------------------------------------------------- main


def one(n: int, args: argparse.Namespace) -> tuple[bool, list[str]]:
    if args.keep_dir:
        work = Path(args.keep_dir) / f"n{n}"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
    else:
        work = Path(tempfile.mkdtemp(prefix=f"wu-scale-{n}-", dir="/tmp"))
    res: dict[str, Any] = {}
    try:
        phase_a(n, args, work, res)
        runs = res.get("runs", [])
        if not args.skip_rollover:
            if runs and runs[0].first_status_s is not None:
                shutil.rmtree(work / "a" / "state", ignore_errors=True)  # disk: the next plan is as big
                phase_b(n, args, work, res)
            else:
                res["rollover"] = {"error": "not measured: the fresh start did not finish"}
    finally:
        PROCS.close()
        ok, summary = report(n, args, res)
        sys.stdout.flush()
        if args.keep_dir:
            print(f"  kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return ok, summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--accounts", type=int, nargs="+", default=[1000])
    p.add_argument("--tree", type=Path, default=REPO,
                   help="the checkout whose code runs (with its .venv/bin/python when present)")
    p.add_argument("--inline", action="store_true", help="accounts in config.toml instead of accounts.d/*.toml")
    p.add_argument("--one-zone", action="store_true", help="every account in one zone (but the rollover's probes)")
    p.add_argument("--per-file", type=int, default=1000, help="accounts per accounts.d file")
    p.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for a first status")
    p.add_argument("--check-timeout", type=float, default=300.0)
    p.add_argument("--check-with-db", action="store_true", help="time warmupd check again over the stored plan")
    p.add_argument("--measure", type=float, default=30.0,
                   help="seconds of firing, without status requests, after each run's status probes")
    p.add_argument("--status-requests", type=int, default=20)
    p.add_argument("--skip-restart", action="store_true")
    p.add_argument("--plan-timeout", type=float, default=600.0,
                   help="seconds to wait for the fresh run's whole day to be planned before the restart")
    p.add_argument("--skip-rollover", action="store_true")
    p.add_argument("--probe-rate", type=float, default=30.0, help="sends/s due around the rollover")
    p.add_argument("--rollover-lead", type=float, default=45.0,
                   help="at least this many seconds from the faked start to the probe window")
    p.add_argument("--rollover-timeout", type=float, default=600.0)
    p.add_argument("--lag-interval", type=float, default=0.5)
    p.add_argument("--lag-cmd", choices=("metrics", "status"), default="metrics",
                   help="the request that samples loop_lag during the rollover (status is heavy at scale)")
    p.add_argument("--py-spy", action="store_true", help="py-spy dump a slow start and the rollover")
    p.add_argument("--spy-after", type=float, default=15.0)
    p.add_argument("--keep-dir", help="work here (a folder per N) and keep it")
    args = p.parse_args(argv)
    args.tree = args.tree.resolve()
    args.spy = py_spy_path(args.tree) if args.py_spy else None
    if not args.skip_rollover and not os.path.exists(LIBFAKETIME):
        raise SystemExit(f"{LIBFAKETIME} is missing: apt-get install -y faketime (or --skip-rollover)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    rev = subprocess.run(["git", "-C", str(args.tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip() or "(not a git checkout)"
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"tree: {args.tree} ({rev}), python {tree_python(args.tree)}, cpus {os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.2f}; targets are the issue's, for 100,000 accounts")
    ok, parts = True, []
    try:
        for n in args.accounts:
            o, s = one(n, args)
            ok &= o
            parts.append(f"{n}: " + ", ".join(s))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        PROCS.close()
    print("SUMMARY " + "; ".join(parts))
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
