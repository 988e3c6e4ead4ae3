"""Firing benchmark: the real daemon, in-process, against an aiosmtpd sink in another process.

    PYTHONPATH=. .venv/bin/python bench/fire.py [--quick] [--accounts 500] [--pending 100000]
        [--rate 50] [--window 60] [--throughput 6000] [--concurrency 50] [--no-uvloop]

(a) precision: ``--pending`` sends are seeded (``Store.insert_plan``) before
    ``Daemon.start()``; ``--rate`` per second of them fall due, evenly spread with
    sub-millisecond noise, during a ``--window`` of seconds, the rest later (they
    sit in the timer heap all along). Lateness = the sink's ``mail_from_at``
    (its clock when MAIL FROM arrived) minus the planned instant. Also: early
    arrivals, bytes per pending timer (tracemalloc and RSS around loading that
    many timers into a ``TimerHeap``) and the daemon's own ``metrics.loop_lag``
    (sampled every 0.5 s through the run).
(b) throughput: ``--throughput`` sends of many accounts, all due at one instant
    a few seconds after the daemon started, against a bare aiosmtplib loop
    (same message size, same concurrency, same sink) run before and after it.
    Rate = messages / (last DATA end - first MAIL FROM) at the sink.

The daemon logs JSON at level info to a file, as it would in production. Uses
uvloop like ``warmupd run`` (when installed).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.rig.smtp_server

import aiosmtplib  # noqa: E402

from tests.rig.smtp_server import SMTPServerProcess  # noqa: E402
from warmupd.calendar import local_date, zone  # noqa: E402
from warmupd.config import load_config  # noqa: E402
from warmupd.daemon import Daemon  # noqa: E402
from warmupd.firing import PREPARE_LEAD  # noqa: E402
from warmupd.logs import configure_logging  # noqa: E402
from warmupd.planner import PlannedSend  # noqa: E402
from warmupd.smtp import build_message  # noqa: E402
from warmupd.store import Store  # noqa: E402
from warmupd.timers import TimerHeap  # noqa: E402

ZONES = ["UTC", "Europe/London", "Asia/Kolkata", "America/New_York", "Australia/Sydney",
         "Asia/Tokyo", "America/Los_Angeles", "Europe/Berlin", "Pacific/Auckland"]
DOMAIN_A, DOMAIN_B = "precision.bench.warmup.test", "throughput.bench.warmup.test"
TARGETS = {"p99_ms": 10.0, "max_ms": 100.0, "bytes_per_timer": 150.0, "throughput_ratio": 0.8}


# ---------------------------------------------------------------- helpers


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_self() -> float:
    t = os.times()
    return t.user + t.system


def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


def zones_clear_of_midnight(seconds: float, n: int = 4) -> list[str]:
    """Zones whose local midnight is not within the next ``seconds`` (no rollover mid-run)."""
    now = time.time()
    out = []
    for tz in ZONES:
        local = datetime.fromtimestamp(now, zone(tz))
        to_midnight = (datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), zone(tz))
                       .timestamp() - now)
        if to_midnight > seconds:
            out.append(tz)
    if not out:
        raise SystemExit("every candidate zone rolls over during the run; try again in a few minutes")
    return out[:n]


def write_config(d: Path, n_accounts: int, port: int, zones: list[str], concurrency: int, domain: str) -> Path:
    lines = [
        "[daemon]", f'state_dir = "{d / "state"}"', 'grace = "5m"', 'log_format = "json"',
        'log_level = "info"', f"max_concurrent_sends = {concurrency}", "",
        "[defaults]", 'weekdays = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]', "",
    ]
    for i in range(n_accounts):
        email = f"a{i:05d}@{domain}"
        lines += ["[[accounts]]", f'email = "{email}"', f'timezone = "{zones[i % len(zones)]}"',
                  'start_date = "2026-01-01"',
                  f'smtp = {{ host = "127.0.0.1", port = {port}, security = "none", username = "{email}" }}', ""]
    path = d / "config.toml"
    path.write_text("\n".join(lines))
    return path


async def seed(config: Any, instants: list[list[float]]) -> dict[int, int]:
    """Plan ``instants[i]`` for account i (today in its zone); returns {send id: at_ms}."""
    store = await Store.open(config.daemon.database)
    emails = [a.email for a in config.accounts]
    now = time.time()
    days = []
    for i, a in enumerate(config.accounts):
        ats = sorted(instants[i])
        sends = [PlannedSend(t, "peak", emails[(i + 1 + k) % len(emails)], f"<b{i}.{k}.{int(t * 1000):x}@bench.warmup.test>")
                 for k, t in enumerate(ats)]
        days.append((a.email, local_date(a.timezone, now).isoformat(), 1, len(sends), sends))
    keys: list[tuple[int, int, str]] = []
    for j in range(0, len(days), 2000):
        keys += await store.insert_plan(days[j:j + 2000])
    await store.close()
    return {ident: at_ms for at_ms, ident, _ in keys}


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n"):
                out.append(json.loads(line))
    return out


async def start_daemon(config: Any) -> Daemon:
    daemon = Daemon(config)
    await daemon.start()
    return daemon


# ---------------------------------------------------------------- (a) precision


_RSS_PROBE = """
import gc, os, random, sys, time
from warmupd.timers import TimerHeap
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
n = int(sys.argv[1]); base = int(time.time() * 1000); rng = random.Random(7)
dues = [base + rng.randrange(0, 86_400_000) for _ in range(n)]
gc.collect(); r0 = rss()
heap = TimerHeap()
for i, due in enumerate(dues, start=1_000_000):
    heap.push(due, i)
print((rss() - r0) / n)
"""


def timer_memory(n: int) -> tuple[float, float]:
    """Bytes per pending timer: tracemalloc of a TimerHeap holding n timers (here), and the
    RSS growth of a fresh interpreter loading them (allocator slack included)."""
    base_ms = int(time.time() * 1000)
    rng = random.Random(7)
    dues = [base_ms + rng.randrange(0, 86_400_000) for _ in range(n)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    heap = TimerHeap()
    for i, due in enumerate(dues, start=1_000_000):
        heap.push(due, i)
    traced = (tracemalloc.get_traced_memory()[0] - before) / n
    tracemalloc.stop()
    del heap
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(n)], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return traced, float(out.stdout.strip())


async def precision(tmp: Path, args: argparse.Namespace, sink: SMTPServerProcess) -> dict[str, Any]:
    run_for = args.startup + args.window + 30
    zones = zones_clear_of_midnight(run_for + 3 * 3600)
    cfg = load_config(write_config(tmp, args.accounts, sink.port, zones, args.concurrency, DOMAIN_A))
    n_window = int(args.rate * args.window)
    if n_window > args.pending:
        raise SystemExit("--pending must be at least --rate x --window")
    rng = random.Random(args.seed)
    t0 = time.time() + args.startup  # the window opens here
    instants: list[list[float]] = [[] for _ in cfg.accounts]
    for k in range(n_window):  # evenly spread, round robin over the accounts
        instants[k % len(instants)].append(round(t0 + k / args.rate + rng.uniform(0.0, 0.9 / args.rate), 3))
    for k in range(args.pending - n_window):  # later: held in the heap throughout
        instants[k % len(instants)].append(round(t0 + args.window + 120 + rng.uniform(0, 3 * 3600), 3))
    planned = await seed(cfg, instants)
    window_ids = {i for i, at in planned.items() if at / 1000 < t0 + args.window}

    t_start = time.time()
    daemon = await start_daemon(cfg)
    started_in = time.time() - t_start
    pending_at_start = len(daemon.firing.timers)
    if time.time() > t0 - PREPARE_LEAD:
        print(f"WARNING: the daemon took {started_in:.1f} s to start; the window opened before it was "
              "ready (raise --startup)", file=sys.stderr)
    lags: list[float] = []
    while time.time() < t0 + args.window + 3:
        await asyncio.sleep(0.5)
        lags.append(daemon.metrics.loop_lag)
    pending_at_end = len(daemon.firing.timers)
    await daemon.shutdown()

    recs = [r for r in read_records(sink.record)
            if r["mail_from"].endswith("@" + DOMAIN_A) and int(r.get("x_warmup_id") or 0) in window_ids]
    late = [r["mail_from_at"] - planned[int(r["x_warmup_id"])] / 1000 for r in recs]
    statuses = await db_statuses(cfg.daemon.database, window_ids)
    return {
        "zones": zones, "accounts": len(cfg.accounts), "pending_at_start": pending_at_start,
        "pending_at_end": pending_at_end, "startup_s": started_in, "due_in_window": len(window_ids),
        "received": len(recs), "statuses": statuses,
        "late_p50_ms": pct(late, 50) * 1000, "late_p99_ms": pct(late, 99) * 1000,
        "late_p999_ms": pct(late, 99.9) * 1000, "late_max_ms": max(late, default=float("nan")) * 1000,
        "late_mean_ms": statistics.fmean(late) * 1000 if late else float("nan"),
        "early": sum(1 for x in late if x < 0),
        "lag_max_ms": max(lags, default=0.0) * 1000, "lag_p99_ms": pct(lags, 99) * 1000,
        "lag_samples": len(lags),
    }


async def db_statuses(db: Path, ids: set[int]) -> dict[str, int]:
    store = await Store.open(db)
    try:
        rows = await store.read(lambda con: con.execute("SELECT id, status FROM sends").fetchall())
    finally:
        await store.close()
    out: dict[str, int] = {}
    for ident, status in rows:
        if ident in ids:
            out[status] = out.get(status, 0) + 1
    return out


# ---------------------------------------------------------------- (b) throughput


async def bare_loop(port: int, n: int, concurrency: int, message: bytes, tag: str) -> float:
    """n messages through plain aiosmtplib sessions (connect, MAIL, RCPT, DATA, QUIT)."""
    todo = iter(range(n))

    async def worker() -> None:
        for k in todo:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30)
            await client.connect()
            await client.mail(f"bare{k % 997}@{tag}.bench.warmup.test")
            await client.rcpt("sink@bench.warmup.test")
            await client.data(message)
            await client.quit()

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t


def sink_rate(recs: list[dict[str, Any]]) -> tuple[int, float]:
    if not recs:
        return 0, 0.0
    span = max(r["data_at"] for r in recs) - min(r["mail_from_at"] for r in recs)
    return len(recs), len(recs) / span if span > 0 else float("nan")


async def throughput(tmp: Path, args: argparse.Namespace, sink: SMTPServerProcess) -> dict[str, Any]:
    n = args.throughput
    n_acc = max(args.concurrency * 4, min(2000, n // 5))
    zones = zones_clear_of_midnight(3600)
    cfg = load_config(write_config(tmp, n_acc, sink.port, zones, args.concurrency, DOMAIN_B))
    a0 = cfg.accounts[0]
    message = build_message(a0, cfg.accounts[1].email, "<sample@bench.warmup.test>", 123456, time.time(),
                            random.Random(1))
    out: dict[str, Any] = {"accounts": n_acc, "message_bytes": len(message)}

    def recs_of(pred: Any) -> list[dict[str, Any]]:
        return [r for r in read_records(sink.record) if pred(r)]

    assert sink.proc is not None
    spid = sink.proc.pid
    bare: list[tuple[int, float]] = []
    cpu: dict[str, list[float]] = {"bare": [], "daemon": []}  # (own, sink) CPU seconds per message

    async def run_bare(tag: str) -> None:
        c0, s0 = cpu_self(), cpu_of(spid)
        await bare_loop(sink.port, n, args.concurrency, message, tag)
        cpu["bare"].append((cpu_self() - c0) / n)
        cpu["bare"].append((cpu_of(spid) - s0) / n)
        bare.append(sink_rate(recs_of(lambda r, t=tag: r["mail_from"].endswith(f"@{t}.bench.warmup.test"))))

    await run_bare("bare1")

    # Every account's share at one instant, a few seconds after the daemon is up.
    t1 = time.time() + args.startup
    instants = [[t1] * (n // n_acc + (1 if i < n % n_acc else 0)) for i in range(n_acc)]
    planned = await seed(cfg, instants)
    daemon = await start_daemon(cfg)
    c0, s0 = cpu_self(), cpu_of(spid)
    if time.time() > t1 - PREPARE_LEAD:
        print("WARNING: the daemon started late for the throughput instant (raise --startup)", file=sys.stderr)
    deadline = t1 + 300
    ids = set(planned)
    while time.time() < deadline:
        await asyncio.sleep(0.5)
        done = sum(v for (_, s), v in daemon.metrics.transitions.items()
                   if s in ("sent", "failed", "skipped", "uncertain"))
        if done >= n:
            break
    cpu["daemon"] = [(cpu_self() - c0) / n, (cpu_of(spid) - s0) / n]
    await daemon.shutdown()
    d_n, d_rate = sink_rate(recs_of(lambda r: r["mail_from"].endswith("@" + DOMAIN_B)
                                    and int(r.get("x_warmup_id") or 0) in ids))
    statuses = await db_statuses(cfg.daemon.database, ids)

    await run_bare("bare2")
    bare_rate = statistics.fmean(r for _, r in bare)
    out.update({"bare_rates": [r for _, r in bare], "bare_rate": bare_rate, "daemon_rate": d_rate,
                "daemon_received": d_n, "seeded": n, "statuses": statuses,
                "ratio": d_rate / bare_rate if bare_rate else float("nan"),
                "cpu_bare_ms": [statistics.fmean(cpu["bare"][0::2]) * 1000, statistics.fmean(cpu["bare"][1::2]) * 1000],
                "cpu_daemon_ms": [cpu["daemon"][0] * 1000, cpu["daemon"][1] * 1000]})
    return out


# ---------------------------------------------------------------- main


async def amain(args: argparse.Namespace) -> int:
    traced, rss = timer_memory(args.pending)
    with tempfile.TemporaryDirectory(prefix="warmupd-bench-fire-") as d:
        tmp = Path(args.keep_dir) if args.keep_dir else Path(d)
        tmp.mkdir(parents=True, exist_ok=True)
        log = open(tmp / "daemon.log", "w")  # noqa: SIM115
        configure_logging("json", "info", stream=log)
        sink = SMTPServerProcess(fast=True, record=tmp / "records.jsonl").start()
        try:
            (tmp / "a").mkdir()
            (tmp / "b").mkdir()
            a = await precision(tmp / "a", args, sink) if not args.skip_precision else None
            b = await throughput(tmp / "b", args, sink) if not args.skip_throughput else None
        finally:
            sink.stop()
            log.close()
    report(args, a, b, traced, rss)
    ok = True
    if a:
        ok &= a["late_p99_ms"] <= TARGETS["p99_ms"] and a["late_max_ms"] <= TARGETS["max_ms"] and a["early"] == 0
    ok &= traced <= TARGETS["bytes_per_timer"]
    if b:
        ok &= b["ratio"] >= TARGETS["throughput_ratio"]
    return 0 if ok else 2


def report(args: argparse.Namespace, a: dict[str, Any] | None, b: dict[str, Any] | None,
           traced: float, rss: float) -> None:
    def row(name: str, value: str, target: str = "", ok: bool | None = None) -> None:
        flag = "" if ok is None else ("ok" if ok else "MISSED")
        print(f"  {name:<38} {value:>22}  {target:<12} {flag}")

    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"loop: {type(asyncio.get_event_loop_policy()).__module__}, cpus {os.cpu_count()}, "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if a:
        print(f"(a) precision: {a['accounts']} accounts in {', '.join(a['zones'])}; "
              f"{a['pending_at_start']:,} pending timers at start, {a['pending_at_end']:,} at end; "
              f"{args.rate:g}/s due for {args.window:g} s; daemon started in {a['startup_s']:.1f} s")
        row("due in window / received by sink", f"{a['due_in_window']:,} / {a['received']:,}")
        row("statuses of those", json.dumps(a["statuses"]))
        row("lateness p50", f"{a['late_p50_ms']:.2f} ms")
        row("lateness p99", f"{a['late_p99_ms']:.2f} ms", "<= 10 ms", a["late_p99_ms"] <= 10)
        row("lateness p99.9", f"{a['late_p999_ms']:.2f} ms")
        row("lateness max", f"{a['late_max_ms']:.2f} ms", "<= 100 ms", a["late_max_ms"] <= 100)
        row("early arrivals", f"{a['early']}", "0", a["early"] == 0)
        row("loop lag max / p99 (0.5 s samples)", f"{a['lag_max_ms']:.1f} / {a['lag_p99_ms']:.1f} ms")
    row("bytes per pending timer (tracemalloc)", f"{traced:.1f} B", "<= 150 B", traced <= 150)
    row("bytes per pending timer (RSS delta)", f"{rss:.1f} B")
    if b:
        print(f"(b) throughput: {b['seeded']:,} sends of {b['accounts']} accounts due at one instant, "
              f"concurrency {args.concurrency}, message {b['message_bytes']} bytes")
        row("bare aiosmtplib (before, after)", " / ".join(f"{r:.0f}" for r in b["bare_rates"]) + " msg/s")
        row("daemon", f"{b['daemon_rate']:.0f} msg/s")
        row("daemon / bare", f"{b['ratio']:.2f}", ">= 0.8", b["ratio"] >= 0.8)
        row("CPU ms/msg bare client, sink", " / ".join(f"{x:.2f}" for x in b["cpu_bare_ms"]))
        row("CPU ms/msg daemon process, sink", " / ".join(f"{x:.2f}" for x in b["cpu_daemon_ms"]))
        row("daemon received / statuses", f"{b['daemon_received']:,} " + json.dumps(b["statuses"]))
    parts = []
    if a:
        parts.append(f"lateness p50 {a['late_p50_ms']:.1f} p99 {a['late_p99_ms']:.1f} p99.9 "
                     f"{a['late_p999_ms']:.1f} max {a['late_max_ms']:.1f} ms, early {a['early']}, "
                     f"loop lag max {a['lag_max_ms']:.1f} ms")
    parts.append(f"{traced:.0f} B/timer")
    if b:
        parts.append(f"throughput {b['daemon_rate']:.0f} vs bare {b['bare_rate']:.0f} msg/s ({b['ratio']:.2f})")
    print("SUMMARY " + "; ".join(parts))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short run: 10 s window, 20k pending, 1500 throughput")
    p.add_argument("--accounts", type=int, default=500)
    p.add_argument("--pending", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--window", type=float, default=60.0)
    p.add_argument("--startup", type=float, default=20.0, help="seconds from seeding to the first instant")
    p.add_argument("--throughput", type=int, default=6000)
    p.add_argument("--concurrency", type=int, default=50, help="max_concurrent_sends and bare workers")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--skip-precision", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--no-uvloop", action="store_true")
    p.add_argument("--keep-dir", help="work (config, database, daemon log, sink records) here, and keep it")
    args = p.parse_args(argv)
    if args.quick:
        args.window, args.pending = 10.0, 20_000
        args.throughput = min(args.throughput, 1500)
    if not args.no_uvloop:
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
