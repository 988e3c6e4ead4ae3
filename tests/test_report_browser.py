"""The three reports in a real headless browser (Debian's chromium through playwright):
the simulated report file, the live page of a running daemon, and `warmupctl report`'s
file. Each loads without a console error, a page error or a request leaving the page;
every chart's SVG exists with a non-zero size and draws the number of marks the data
holds (the live report's health chart: a dot per stored account-day score); a
full-page screenshot is saved under the test's tmp dir.

WARMUPD_DOCS_SCREENSHOT=1 also writes docs/report.png (the README's picture) from the
simulated report. Skipped when chromium is missing outside CI; under CI=true, a failure.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_helpers import (
    ACCOUNTS,
    REPO_ROOT,
    all_final,
    db_path,
    seed_plan,
    skip_near_midnight,
    utc_today,
    wait_rows,
    wait_until,
    write_config,
)
from tests.test_simulate import MONDAY, pool_config
from warmupd.config import load_config
from warmupd.simulate import WhatIf, simulate
from warmupd.store import AccountState, Store

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]
SIM_CHARTS = {"ramp", "hours", "gaps", "weekdays", "pairs", "balance", "placement", "engagement", "timeline"}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (pip install -e '.[test]')"
    if reason is None and not os.path.exists(CHROMIUM):
        reason = "chromium is not installed (tests/rig/ensure_packages.sh installs Debian's chromium)"
    if reason is not None:
        if _in_ci():
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    # launch() gives the browser a new empty profile of its own (a --user-data-dir is refused there).
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield b
        finally:
            b.close()


def load(browser: Any, url: str, shot: Path) -> dict[str, int]:
    """Open ``url``; return {chart: marks}. Fails on console errors, page errors, a chart
    of zero size, or any request other than the page itself."""
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: problems.append(f"request to {r.url}") if r.url != url else None)
    try:
        resp = page.goto(url, wait_until="load")
        assert resp is None or resp.ok, resp.status if resp else None
        charts: dict[str, int] = {}
        for svg in page.query_selector_all("svg.chart"):
            name = svg.get_attribute("data-chart")
            box = svg.bounding_box()
            assert name and box and box["width"] > 10 and box["height"] > 10, (name, box)
            charts[name] = len(svg.query_selector_all(".mark"))
        page.screenshot(path=str(shot), full_page=True)
    finally:
        page.close()
    assert not problems, problems
    assert shot.stat().st_size > 10_000
    return charts


def test_simulated_report(browser: Any, tmp_path: Path) -> None:
    cfg = load_config(pool_config(tmp_path, 8, imap=True, zones=("Europe/Paris", "America/New_York")))
    sim = simulate(cfg, start=MONDAY, days=21, seed=9, what_if=WhatIf(junk_rate=0.12))
    html = tmp_path / "report.html"
    html.write_text(sim.html())
    charts = load(browser, html.as_uri(), tmp_path / "report.png")
    if os.environ.get("WARMUPD_DOCS_SCREENSHOT") == "1":
        load(browser, html.as_uri(), REPO_ROOT / "docs" / "report.png")

    t = sim.tally
    rows = t.rows
    assert set(charts) == SIM_CHARTS  # no health chart: the simulator scores nothing, and says so
    assert "The simulator computes no health score" in html.read_text()
    assert charts["ramp"] == sum(1 for r in rows.values() if r.planned + r.replies)
    assert charts["hours"] == sum(1 for hours in t.hours.values() for n in hours if n)
    assert charts["gaps"] == sum(1 for n in t.gaps if n) > 3
    assert charts["weekdays"] == 5  # Monday to Friday only
    assert charts["pairs"] == len([p for p, n in t.pairs.items() if n]) == 8 * 7
    assert charts["balance"] == 8
    assert charts["placement"] == sum(1 for r in rows.values() if r.inbox + r.junk) > 0
    assert charts["engagement"] == sum(1 for d in t.dates for k in ("opened", "replies", "rescued", "bounced")
                                       if getattr(t.pool_day(d), k)) > 0
    assert charts["timeline"] == len(t.spans) > 0  # junk placement held some ramps


def seed_health(tmp_path: Path) -> int:
    """Scores of the two days before today (UTC, the accounts' zone) through the store's
    own writes, as reputation.py makes them, and the first account graduated yesterday.
    Returns the number of account-days scored."""
    today = utc_today()
    days = [(today - timedelta(days=k)).isoformat() for k in (1, 2)]
    rows = [(ACCOUNTS[0], days[1], 55, "{}"), (ACCOUNTS[0], days[0], 83, "{}"), (ACCOUNTS[1], days[0], 40, "{}")]

    async def run() -> None:
        store = await Store.open(db_path(tmp_path))
        try:
            await store.save_health(rows)
            await store.upsert_accounts([AccountState(ACCOUNTS[0], 1, days[0], None, None, None, None,
                                                      graduated=days[0])])
        finally:
            await store.close()
    asyncio.run(run())
    return len(rows)


def scored_today(tmp_path: Path) -> int:
    """Account-days the running daemon scored today (its first health round, at start)."""
    con = sqlite3.connect(f"file:{db_path(tmp_path)}?mode=ro", uri=True, timeout=5)
    try:
        return int(con.execute("SELECT count(*) FROM health_days WHERE local_date=?",
                               (utc_today().isoformat(),)).fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_live_page_and_warmupctl_report(browser: Any, tmp_path: Path, smtp_server: Any, daemons: Any) -> None:
    skip_near_midnight(90)
    port = _free_port()
    cfg = write_config(tmp_path, smtp_server.port)
    cfg.write_text(cfg.read_text().replace("[daemon]\n", f'[daemon]\nhttp = "127.0.0.1:{port}"\n', 1))
    now = time.time()
    plan = {a: [now + 3 + k * 0.7 + i * 0.2 for k in range(4)] for i, a in enumerate(ACCOUNTS)}
    # On a thread of its own: playwright's sync API keeps an event loop on this one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(seed_plan, tmp_path, plan).result()
        seeded_health = pool.submit(seed_health, tmp_path).result()
    d = daemons(cfg, tmp_path)
    rows = wait_rows(tmp_path, all_final, 30, "the seeded sends")
    assert all(r["status"] == "sent" for r in rows), rows
    wait_until(lambda: scored_today(tmp_path) == len(ACCOUNTS), 30, "today's health scores")

    base = f"http://127.0.0.1:{port}"

    def ask(method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode()
        finally:
            conn.close()

    status, headers, text = ask("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert f'warmupd_sends_total{{account="{ACCOUNTS[0]}",status="sent"}} 4' in text
    assert ask("POST", "/", b"x")[0] == 405
    assert ask("GET", "/nope")[0] == 404
    status, _, text = ask("GET", "/?days=many")
    assert status == 400 and "days must be a whole number" in text
    status, headers, text = ask("HEAD", "/")
    assert status == 200 and text == "" and int(headers["content-length"]) > 1000
    status, _, text = ask("GET", "/?days=3")
    yesterday = (utc_today() - timedelta(days=1)).isoformat()
    assert status == 200 and f"{ACCOUNTS[0]} (graduated {yesterday})" in text

    expected_pairs = len({(r["account"], r["recipient"]) for r in rows})
    live = load(browser, base + "/?days=3", tmp_path / "live.png")
    assert live["ramp"] == 3  # one stack per account-day with sends
    assert live["lateness"] >= 1 and live["weekdays"] == 1 and live["balance"] == 3
    assert live["pairs"] == expected_pairs
    assert live["hours"] >= 1 and live["gaps"] >= 1
    assert live["health"] == seeded_health + len(ACCOUNTS)  # the seeded days and the daemon's today

    out = tmp_path / "ctl-report.html"
    ctl = subprocess.run([sys.executable, "-m", "warmupd.ctl", "--config", str(cfg), "report", "--days", "3",
                          "--out", str(out)], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert ctl.returncode == 0, ctl.stderr
    assert "written to" in ctl.stdout
    from_file = load(browser, out.as_uri(), tmp_path / "ctl-report.png")
    assert from_file == live
    assert not d.errors(), d.tail()
    assert db_path(tmp_path).exists()

