"""Simulator benchmark: `warmupd simulate` on a generated pool, in process.

    .venv/bin/python bench/simulate.py [--accounts 1000] [--days 30] [--seed 1] [--imap] [--junk-rate 0.1]

A pool of ``--accounts`` accounts in six timezones, weekdays Monday to Friday, ramp
start=2, step=2, max=40 (so a month ramps up to the ceiling), loaded from a generated
config (password files included), simulated for ``--days`` local days from a Monday.
With ``--imap`` every account engages over IMAP, so each send is an event (placement,
opens, replies inside the target, the junk hold at ``--junk-rate``).

Rows: config load; the simulation (``warmupd.simulate.simulate``); the HTML report
(``Simulation.html``) with its size; the JSON (``Simulation.to_json``). Peak RSS is
``ru_maxrss`` at the end. Target: the simulation of 1,000 accounts x 30 days well
under a minute (30 s).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from warmupd.config import load_config
from warmupd.simulate import WhatIf, simulate

ZONES = ["America/New_York", "Europe/London", "Asia/Kolkata", "Australia/Sydney", "America/Los_Angeles",
         "Europe/Berlin"]
START = date(2027, 3, 1)  # a Monday; the run crosses the March DST changes
TARGET_S = 30.0

HEAD = """
[daemon]
state_dir = "state"

[defaults]
weekdays = ["mon", "tue", "wed", "thu", "fri"]
min_gap = "4m"
jitter = "3m"
micro_jitter = "30s"

[defaults.periods]
peak   = { windows = ["09:00-11:00", "14:00-16:00"], weight = 0.6 }
normal = { windows = ["11:00-12:00", "16:00-18:00"], weight = 0.3 }
low    = { windows = ["12:00-14:00"], weight = 0.1 }

[defaults.ramp]
start = 2
step = 2
max = 40
"""


def write_pool(folder: Path, n: int, imap: bool) -> Path:
    pw = folder / "pw"
    pw.write_text("secret\n")
    pw.chmod(0o600)
    parts = [HEAD]
    for i in range(n):
        email = f"user{i:05d}@d{i % 50}.example"
        server = f'host = "127.0.0.1", port = 2525, security = "none", username = "{email}", password_file = "pw"'
        parts.append(f'[[accounts]]\nemail = "{email}"\ntimezone = "{ZONES[i % len(ZONES)]}"\n'
                     f'start_date = "{START.isoformat()}"\nsmtp = {{ {server} }}\n'
                     + (f'imap = {{ {server.replace("2525", "1143")} }}\n' if imap else ""))
    path = folder / "config.toml"
    path.write_text("\n".join(parts))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=1000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--imap", action="store_true", help="every account engages over IMAP (an event per send)")
    ap.add_argument("--junk-rate", type=float, default=0.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_pool(Path(tmp), a.accounts, a.imap)
        t0 = time.perf_counter()
        config = load_config(path)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        sim = simulate(config, start=START, days=a.days, seed=a.seed, what_if=WhatIf(junk_rate=a.junk_rate))
        t_sim = time.perf_counter() - t0
        t0 = time.perf_counter()
        html = sim.html()
        t_html = time.perf_counter() - t0
        t0 = time.perf_counter()
        text = json.dumps(sim.to_json())
        t_json = time.perf_counter() - t0
    rows = sim.tally.rows.values()
    sends = sum(r.planned + r.replies for r in rows)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"command: {' '.join(sys.argv)}")
    print(f"pool: {a.accounts} accounts x {a.days} days from {START}, imap={a.imap}, junk_rate={a.junk_rate:g}: "
          f"{sends:,} sends ({sum(r.replies for r in rows):,} replies), {len(sim.tally.spans)} holds/pauses")
    print(f"{'step':<22} {'seconds':>8}")
    print(f"{'config load':<22} {t_load:>8.2f}")
    print(f"{'simulate':<22} {t_sim:>8.2f}   ({sends / t_sim:,.0f} sends/s)")
    print(f"{'HTML report':<22} {t_html:>8.2f}   ({len(html) / 1e6:.1f} MB)")
    print(f"{'JSON':<22} {t_json:>8.2f}   ({len(text) / 1e6:.1f} MB)")
    print(f"peak RSS {rss:.0f} MiB")
    met = t_sim + t_html < TARGET_S
    print(f"SUMMARY simulate {a.accounts}x{a.days}: {t_sim:.2f} s (+ report {t_html:.2f} s), target < {TARGET_S:.0f} s: "
          f"{'met' if met else 'MISSED'}")
    return 0 if met else 2


if __name__ == "__main__":
    sys.exit(main())
