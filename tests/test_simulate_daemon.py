"""`warmupd simulate` against the daemon itself: same config, seed and days -> the same plans.

The real ``warmupd run`` plays six local days (Wed 2026-12-23 .. Mon 12-28 in
Europe/Berlin: a public holiday and a weekend inside), then plans a seventh on libfaketime, over one state
directory. Each day has two runs: one started at 00:00:30 local plans the day (the
daemon's own midnight work) and stops; a second, from 00:03 local with the clock 60x
fast, fires the day's sends into the rig's SMTP server (windows of three minutes
after midnight), so the next day's warmup day advances only because the daemon
really sent. The simulator, in process and through its command line, must give the
same warmup day, target and every planned instant, period and recipient per
account and day; going on from the stored state, the seventh day's numbers.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.daemon_helpers import (
    ACCOUNTS,
    REPO_ROOT,
    account_lines,
    db_path,
    rig_password_file,
    wait_rows,
)
from warmupd.config import load_config
from warmupd.simulate import simulate

FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
ZONE = "Europe/Berlin"
FIRST = date(2026, 12, 23)
DAYS = 6
SEED = 4242

pytestmark = pytest.mark.skipif(not os.path.exists(FAKETIME_LIB),
                                reason="libfaketime is not installed (the test command installs Debian's faketime)")


def write_pool(tmp_path: Path, port: int) -> Path:
    sock_dir = Path(tmp_path / "s")
    sock_dir.mkdir()
    lines = ["[daemon]", 'state_dir = "state"', f'socket = "{sock_dir}/warmupd.sock"', 'log_format = "json"',
             f"seed = {SEED}", 'grace = "5m"', "",
             "[defaults]", f'timezone = "{ZONE}"', 'weekdays = ["mon", "tue", "wed", "thu", "fri"]',
             'holidays = "DE"', 'jitter = "3s"', 'micro_jitter = "1s"', 'min_gap = "8s"', "",
             "[defaults.periods]",
             'peak = { windows = ["00:05-00:07"], weight = 0.7 }',
             'normal = { windows = ["00:07-00:08"], weight = 0.3 }', "",
             "[defaults.ramp]", "start = 2", "step = 2", "max = 9", ""]
    for email in ACCOUNTS:
        pw = rig_password_file(tmp_path, email)
        lines += account_lines(email, FIRST.isoformat(),
                               f'{{ host = "127.0.0.1", port = {port}, security = "none", username = "{email}", '
                               f'password_file = "{pw.name}" }}')
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines))
    return path


def fake(day: date, at: time, speed: str = "") -> dict[str, str]:
    utc = datetime.combine(day, at, ZoneInfo(ZONE)).astimezone(UTC)
    return {"LD_PRELOAD": FAKETIME_LIB, "FAKETIME": "@" + utc.strftime("%Y-%m-%d %H:%M:%S") + speed,
            "FAKETIME_DONT_RESET": "1", "TZ": "UTC"}


def daemon_plans(tmp_path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    con = sqlite3.connect(db_path(tmp_path))
    try:
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for account, day, wday, target, first, last in con.execute(
                "SELECT account, local_date, warmup_day, target, first_id, last_id FROM plan_batches"):
            sends = [tuple(r) for r in con.execute(
                "SELECT at_ms, period, recipient FROM sends WHERE id BETWEEN ? AND ? AND kind='new' "
                "ORDER BY at_ms", (first, last))]
            out[(account, day)] = {"warmup_day": wday, "target": target, "sends": sends}
        return out
    finally:
        con.close()


def test_simulator_plans_what_the_daemon_plans(tmp_path: Path, smtp_server: Any, daemons: Any) -> None:
    cfg = write_pool(tmp_path, smtp_server.port)
    for k in range(DAYS):
        day = FIRST + timedelta(days=k)
        planner = daemons(cfg, tmp_path, env=fake(day, time(0, 0, 30)))
        planner.wait_event("plan stored", timeout=30)
        assert planner.stop() == 0
        iso = day.isoformat()
        rows = [r for r in wait_rows(tmp_path, lambda rows: True, 5) if r["local_date"] == iso]
        if rows:  # a sending day: let the daemon send it (60x fast), so the next day advances for real
            sender = daemons(cfg, tmp_path, env=fake(day, time(0, 3), " x60"))
            wait_rows(tmp_path, lambda rs, d=iso: all(  # type: ignore[misc]
                r["status"] == "sent" for r in rs if r["local_date"] == d), 60, f"the sends of {iso}")
            assert sender.stop() == 0
            assert not sender.errors(), sender.tail()
    got = daemon_plans(tmp_path)

    sim = simulate(load_config(cfg), start=FIRST, days=DAYS, seed=SEED, keep_sends=True)
    compared = 0
    for a in ACCOUNTS:
        for d in sim.dates:
            row = sim.tally.rows[(a, d)]
            want_sends = [(round(s.at * 1000), s.period, s.recipient) for s in sim.plans[(a, d)]]
            mine = {"warmup_day": row.warmup_day, "target": row.target, "sends": want_sends}
            assert got[(a, d.isoformat())] == mine, f"{a} on {d}"
            compared += len(want_sends)
    # Sending days Wed, Thu and Mon (ramp 2, 4, 6); Christmas Day, the weekend: nothing.
    per_day = {d.isoformat(): sum(sim.tally.rows[(a, d)].planned for a in ACCOUNTS) for d in sim.dates}
    assert per_day == {"2026-12-23": 6, "2026-12-24": 12, "2026-12-25": 0, "2026-12-26": 0,
                       "2026-12-27": 0, "2026-12-28": 18}
    assert compared == 36

    # The command line prints the same numbers as data.
    out = subprocess.run([sys.executable, "-m", "warmupd.cli", "simulate", "--config", str(cfg), "--json",
                          "--start", FIRST.isoformat(), "--days", str(DAYS), "--seed", str(SEED), "--fresh"],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=True)
    data = json.loads(out.stdout)
    assert [p["planned"] for p in data["pool"]] == list(per_day.values())
    for a in ACCOUNTS:
        assert [(r["date"], r["warmup_day"], r["target"], r["planned"]) for r in data["accounts"][a]] == [
            (k[1], v["warmup_day"], v["target"], len(v["sends"])) for k, v in sorted(got.items()) if k[0] == a]

    # Without --fresh the simulator goes on from the stored state: its next day is the
    # plan the daemon then makes for that day.
    nxt = FIRST + timedelta(days=DAYS)
    ahead = subprocess.run([sys.executable, "-m", "warmupd.cli", "simulate", "--config", str(cfg), "--json",
                            "--start", nxt.isoformat(), "--days", "1", "--seed", str(SEED)],
                           capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=True)
    assert "going on from the warmup days" in ahead.stderr
    planner = daemons(cfg, tmp_path, env=fake(nxt, time(0, 0, 30)))
    planner.wait_event("plan stored", timeout=30)
    assert planner.stop() == 0
    got = daemon_plans(tmp_path)
    for a in ACCOUNTS:
        (row,) = json.loads(ahead.stdout)["accounts"][a]
        mine = got[(a, nxt.isoformat())]
        assert (row["warmup_day"], row["target"], row["planned"]) == (mine["warmup_day"], mine["target"],
                                                                     len(mine["sends"])) == (4, 8, 8)
