"""Planning benchmark: one day for many accounts, planned alone and planned + persisted.

    .venv/bin/python bench/plan.py [--accounts 100000] [--seed 1] [--chunk 2000] [--no-heap]

Every account plans warmup day 21 of a ramp start=2, step=2, max=40 (40 sends),
so 100,000 accounts make 4,000,000 sends. The accounts are copies
(``dataclasses.replace``) of one account loaded from a generated config, spread
over a handful of timezones.

Rows of the table:

* ``plan only``: ``plan_day`` for every account, the same calls as
  ``plan_and_persist`` makes (GC paused, as there), results dropped chunk by chunk;
* ``plan + persist``: ``warmupd.daemon.plan_and_persist`` into a fresh
  ``Store`` (WAL, synchronous=FULL) in a temp dir: the end-to-end figure;
* ``... + timer heap``: the same with ``on_keys`` pushing every key into a
  ``TimerHeap``, as the daemon's ``_plan_items`` does (skip with --no-heap).

Peak RSS is ``ru_maxrss`` after each row (the process's high-water mark).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import random
import resource
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from warmupd.config import Account, load_config
from warmupd.planner import Pool, day_target, new_send_target, plan_day
from warmupd.planning import plan_and_persist
from warmupd.store import Store
from warmupd.timers import TimerHeap

ZONES = ["America/New_York", "Europe/London", "Asia/Kolkata", "Australia/Sydney",
         "America/Los_Angeles", "Europe/Berlin"]
DAY = date(2026, 12, 1)  # a Tuesday, no DST change in any of ZONES
WARMUP_DAY = 21  # 2 + 2 * 20 = 42 -> capped at max = 40
TARGET = 40
TARGET_RATE = 250_000.0  # sends/s planned and persisted, end to end

CONFIG = """
[daemon]
state_dir = "state"

[defaults]
weekdays = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

[defaults.ramp]
start = 2
step = 2
max = 40

[[accounts]]
email = "a0@bench.warmup.test"
start_date = "2026-11-01"
smtp = { host = "127.0.0.1", port = 2525, security = "none", username = "a0@bench.warmup.test" }

[[accounts]]
email = "a1@bench.warmup.test"
start_date = "2026-11-01"
smtp = { host = "127.0.0.1", port = 2525, security = "none", username = "a1@bench.warmup.test" }
"""


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def build_accounts(tmp: Path, n: int) -> list[Account]:
    cfg_path = tmp / "config.toml"
    cfg_path.write_text(CONFIG)
    base = load_config(cfg_path).accounts[0]
    scheds = {tz: dataclasses.replace(base.schedule, timezone=tz) for tz in ZONES}
    accounts = []
    for i in range(n):
        email = f"u{i:06d}@d{i % 97}.bench.warmup.test"
        smtp = dataclasses.replace(base.smtp, username=email) if base.smtp else None
        accounts.append(dataclasses.replace(base, email=email, smtp=smtp,
                                            schedule=scheds[ZONES[i % len(ZONES)]]))
    assert new_send_target(accounts[0], day_target(accounts[0], WARMUP_DAY)) == TARGET
    return accounts


def plan_only(items: list, rng: random.Random, pool: Pool, chunk: int) -> int:
    """What plan_and_persist does on the loop's thread, without the store (and, like
    it, with the cyclic GC paused)."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _plan_only(items, rng, pool, chunk)
    finally:
        if gc_was_enabled:
            gc.enable()


def _plan_only(items: list, rng: random.Random, pool: Pool, chunk: int) -> int:
    total = 0
    for i in range(0, len(items), chunk):
        days = []
        for account, day, wday, not_before, already in items[i:i + chunk]:
            target = new_send_target(account, day_target(account, wday))
            sends = plan_day(account, day, wday, rng, pool, not_before=not_before,
                             already_sent=already, target=target)
            days.append((account.email, day.isoformat(), wday, target, sends))
            total += len(sends)
    return total


async def plan_persist(db: Path, items: list, seed: int, pool: Pool, chunk: int,
                       heap: TimerHeap | None) -> tuple[int, float, int]:
    store = await Store.open(db)  # synchronous=FULL, as the daemon opens it
    try:
        on_keys = None
        if heap is not None:
            def on_keys(keys: list[tuple[int, int, str]]) -> None:
                for due_ms, ident, _ in keys:
                    heap.push(due_ms, ident)
        t0 = time.perf_counter()
        n = await plan_and_persist(store, items, random.Random(seed), pool, chunk=chunk, on_keys=on_keys)
        dt = time.perf_counter() - t0
        stored = await store.read(lambda con: int(con.execute("SELECT count(*) FROM sends").fetchone()[0]))
    finally:
        await store.close()
    return n, dt, stored


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--accounts", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--chunk", type=int, default=2000, help="plan_and_persist's chunk (its default: 2000)")
    p.add_argument("--no-heap", action="store_true", help="skip the row that also fills a TimerHeap")
    p.add_argument("--uvloop", action="store_true", help="run under uvloop, as `warmupd run` does when installed")
    args = p.parse_args(argv)
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    rows: list[tuple[str, int, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="warmupd-bench-plan-") as d:
        tmp = Path(d)
        accounts = build_accounts(tmp, args.accounts)
        pool = Pool([a.email for a in accounts])
        pool.offsets(DAY)  # the day's walking order is computed once per day: not part of the rate
        items = [(a, DAY, WARMUP_DAY, None, 0) for a in accounts]
        gc.collect()
        rss_setup = peak_rss_mib()

        t0 = time.perf_counter()
        n = plan_only(items, random.Random(args.seed), pool, args.chunk)
        dt = time.perf_counter() - t0
        rows.append(("plan only", n, dt, peak_rss_mib()))
        gc.collect()

        n, dt, stored = asyncio.run(plan_persist(tmp / "e2e.db", items, args.seed, pool, args.chunk, None))
        if stored != n:
            print(f"ERROR: {n} planned but {stored} rows stored", file=sys.stderr)
            return 1
        rows.append(("plan + persist (end to end)", n, dt, peak_rss_mib()))
        e2e_rate = n / dt
        gc.collect()

        if not args.no_heap:
            heap = TimerHeap()
            n, dt, stored = asyncio.run(plan_persist(tmp / "heap.db", items, args.seed, pool, args.chunk, heap))
            assert stored == n and len(heap) == n
            rows.append(("plan + persist + timer heap", n, dt, peak_rss_mib()))
            del heap

    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"accounts {args.accounts:,}, target {TARGET}/day, chunk {args.chunk}, seed {args.seed}, "
          f"RSS after set-up {rss_setup:,.0f} MiB")
    print(f"{'phase':<30} {'sends':>11} {'seconds':>8} {'sends/s':>10} {'peak RSS MiB':>13}")
    for name, n, dt, rss in rows:
        print(f"{name:<30} {n:>11,} {dt:>8.2f} {n / dt:>10,.0f} {rss:>13,.0f}")
    ok = e2e_rate >= TARGET_RATE
    print(f"SUMMARY plan+persist {e2e_rate:,.0f} sends/s end to end (target >= {TARGET_RATE:,.0f}: "
          f"{'met' if ok else 'MISSED'}), plan only {rows[0][1] / rows[0][2]:,.0f} sends/s, "
          f"peak RSS {peak_rss_mib():,.0f} MiB")
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
