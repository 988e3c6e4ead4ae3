"""`warmupd simulate` on its own: the calendar's stalls, the ramp, the pool's pairing, the
engagement what-ifs (holds, pauses, replies), the command line and its errors.
(tests/test_simulate_daemon.py holds the comparison with the real daemon.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest

from tests.daemon_helpers import REPO_ROOT
from warmupd.calendar import local_date, period_spans
from warmupd.config import ConfigError, load_config
from warmupd.simulate import WhatIf, simulate

MONDAY = date(2027, 3, 1)


def pool_config(tmp_path: Path, n: int = 4, *, imap: bool = False, zones: tuple[str, ...] = ("Europe/Paris",),
                extra: str = "", holidays: str = "") -> Path:
    lines = ["[daemon]", 'state_dir = "state"', extra, "",
             "[defaults]", 'weekdays = ["mon", "tue", "wed", "thu", "fri"]',
             'min_gap = "5m"', 'jitter = "2m"', "",
             "[defaults.periods]",
             'peak = { windows = ["09:00-11:00", "14:00-16:00"], weight = 0.6 }',
             'normal = { windows = ["11:00-12:00", "16:00-18:00"], weight = 0.3 }',
             'low = { windows = ["12:00-14:00"], weight = 0.1 }', "",
             "[defaults.ramp]", "start = 3", "step = 2", "max = 15", "",
             "[defaults.engagement]", "reply_rate = 0.3", "hold_junk_rate = 0.10", "bounce_pause_rate = 0.05", ""]
    (tmp_path / "pw").write_text("secret\n")
    (tmp_path / "pw").chmod(0o600)
    for i in range(n):
        email = f"user{i:02d}@pool{i % 2}.test"
        server = f'{{ host = "127.0.0.1", port = 2525, security = "none", username = "{email}", password_file = "pw" }}'
        lines += ["[[accounts]]", f'email = "{email}"', f'timezone = "{zones[i % len(zones)]}"',
                  f'start_date = "{MONDAY.isoformat()}"', f"smtp = {server}",
                  f'holidays = "{holidays if zones[i % len(zones)] == "Europe/Paris" else ""}"']
        if imap:
            lines.append(f'imap = {{ host = "127.0.0.1", port = 1143, security = "none", username = "{email}", '
                         'password_file = "pw" }')
        lines.append("")
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines))
    return path


def test_ramp_stalls_on_weekends_and_holidays_and_sends_keep_the_rules(tmp_path: Path) -> None:
    cfg = load_config(pool_config(tmp_path, 6, zones=("Europe/Paris", "America/New_York", "Asia/Kolkata"),
                                  holidays="FR"))
    # 2027-03-29 is Easter Monday, a public holiday in France (not in the US or India).
    sim = simulate(cfg, start=MONDAY, days=29, seed=3, keep_sends=True)
    paris = "user00@pool0.test"
    rows = {d: sim.tally.rows[(paris, d)] for d in sim.dates}
    sending = [d for d in sim.dates if d.weekday() < 5 and d != date(2027, 3, 29)]
    assert [rows[d].warmup_day for d in sending] == list(range(1, len(sending) + 1))
    assert [rows[d].planned for d in sending] == [min(15, 3 + 2 * k) for k in range(len(sending))]
    assert rows[date(2027, 3, 29)].planned == 0 and rows[date(2027, 3, 29)].off is not None
    assert all(rows[d].planned == 0 for d in sim.dates if d.weekday() >= 5)
    ny = "user01@pool1.test"  # the same day, no holiday in New York: it sends
    assert sim.tally.rows[(ny, date(2027, 3, 29))].planned > 0
    for (email, d), sends in sim.plans.items():
        account = cfg.account(email)
        assert account is not None
        times = [s.at for s in sends]
        assert all(b - a >= account.schedule.effective_gap for a, b in zip(times, times[1:], strict=False))
        spans = period_spans(account.schedule, d)
        for s in sends:
            assert local_date(account.timezone, s.at) == d
            assert any(a <= s.at < b for a, b in spans[s.period]), (email, d, s)
            assert s.recipient != email
    # The pool's pairing: on a day when all send alike, everyone receives what it sends.
    day = MONDAY + timedelta(days=1)
    sent = {a.email: len(sim.plans[(a.email, day)]) for a in cfg.accounts}
    got = {a.email: sum(1 for e in sent for s in sim.plans[(e, day)] if s.recipient == a.email)
           for a in cfg.accounts}
    assert sent == got


def test_same_seed_same_plan_other_seed_other_plan(tmp_path: Path) -> None:
    cfg = load_config(pool_config(tmp_path))
    a = simulate(cfg, start=MONDAY, days=5, seed=11, keep_sends=True)
    b = simulate(cfg, start=MONDAY, days=5, seed=11, keep_sends=True)
    c = simulate(cfg, start=MONDAY, days=5, seed=12, keep_sends=True)
    strip = lambda sim: {k: [(s.at, s.period, s.recipient) for s in v] for k, v in sim.plans.items()}  # noqa: E731
    assert strip(a) == strip(b)
    assert strip(a) != strip(c)
    assert a.to_json()["pool"] == c.to_json()["pool"]  # counts are the ramp's, not the draw's


def test_junk_rate_holds_the_ramp(tmp_path: Path) -> None:
    cfg = load_config(pool_config(tmp_path, 4, imap=True))
    calm = simulate(cfg, start=MONDAY, days=10, seed=5)
    assert not calm.tally.spans
    assert sum(r.replies for r in calm.tally.rows.values()) > 0  # replies inside the targets
    for r in calm.tally.rows.values():
        assert r.planned + r.replies <= max(r.target, 0) + round(r.target * 0.3) + 1
    held = simulate(cfg, start=MONDAY, days=10, seed=5, what_if=WhatIf(junk_rate=0.5))
    holds = [s for s in held.tally.spans if s.kind == "hold"]
    assert holds and all(s.end == s.start + timedelta(days=3) for s in holds)
    s = holds[0]
    rows = [held.tally.rows[(s.account, s.start + timedelta(days=k))] for k in range(1, 3)]
    assert any(r.held for r in rows)
    # While held the warmup day does not grow.
    before = calm.tally.rows[(s.account, s.start)].warmup_day
    for r in rows:
        if r.off is None:
            assert r.warmup_day <= before + 1


@pytest.mark.parametrize(("junk_rate", "band"), [(0.13, "hold"), (0.37, "cut"), (0.9, "pause")])
def test_junk_bands_as_the_daemon_applies_them(tmp_path: Path, junk_rate: float, band: str) -> None:
    """thresholds.py's bands, played: above hold_junk_rate the ramp holds, above
    cut_junk_rate the day's target is cut by half too, above pause_junk_rate the sender
    pauses; nothing before hold_min_sample messages were seen."""
    cfg = load_config(pool_config(tmp_path, 4, imap=True))
    sim = simulate(cfg, start=MONDAY, days=10, seed=5, what_if=WhatIf(junk_rate=junk_rate))
    eng = cfg.accounts[0].engagement
    kinds = []
    for s in sim.tally.spans:
        m = re.search(r"(\d+) of (\d+) warmup messages landed in junk", s.reason)
        assert m, s.reason
        junk, seen = int(m.group(1)), int(m.group(2))
        assert seen >= eng.hold_min_sample
        rate = junk / seen
        if s.kind == "pause":
            kind = "pause"
            assert rate > eng.pause_junk_rate
        elif "cut by half" in s.reason:
            kind = "cut"
            assert eng.cut_junk_rate < rate <= eng.pause_junk_rate
        else:
            kind = "hold"
            assert "ramp held" in s.reason and eng.hold_junk_rate < rate <= eng.cut_junk_rate
        kinds.append(kind)
    assert max(set(kinds), key=kinds.count) == band, kinds  # the band this junk rate lands in, mostly
    skipped = sum(sum(r.skipped.values()) for r in sim.tally.rows.values())
    assert (skipped > 0) == ("cut" in kinds or "pause" in kinds)
    first = min(s.start for s in sim.tally.spans)
    seen_before = sum(r.inbox + r.junk for (a, d), r in sim.tally.rows.items() if d <= first)
    assert seen_before >= eng.hold_min_sample


def test_bounce_rate_pauses_senders(tmp_path: Path) -> None:
    cfg = load_config(pool_config(tmp_path, 4, imap=True))
    sim = simulate(cfg, start=MONDAY, days=8, seed=2, what_if=WhatIf(bounce_rate=0.5))
    pauses = [s for s in sim.tally.spans if s.kind == "pause"]
    assert len(pauses) == 4  # every sender, sooner or later
    for p in pauses:
        later = [sim.tally.rows[(p.account, p.start + timedelta(days=k))] for k in range(1, 4)
                 if p.start + timedelta(days=k) in sim.dates]
        assert all(r.paused and r.planned == 0 for r in later)
        assert "bounced" in p.reason
    # Without IMAP the daemon never sees the bounce reports: nobody is paused for them.
    blind = simulate(load_config(pool_config(tmp_path, 4)), start=MONDAY, days=8, seed=2,
                     what_if=WhatIf(bounce_rate=0.5))
    assert not blind.tally.spans and sum(r.bounced for r in blind.tally.rows.values()) > 20


def test_command_line_text_json_report_and_nothing_written(tmp_path: Path) -> None:
    cfg = pool_config(tmp_path, 3)
    run = lambda *args: subprocess.run([sys.executable, "-m", "warmupd.cli", "simulate", "--config", str(cfg),  # noqa: E731
                                        *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    text = run("--start", MONDAY.isoformat(), "--days", "7", "--seed", "1")
    assert text.returncode == 0, text.stderr
    assert "2027-03-01  Mon" in text.stdout and "2027-03-06  Sat" in text.stdout
    assert "user00@pool0.test" in text.stdout
    out = tmp_path / "r.html"
    js = run("--start", MONDAY.isoformat(), "--days", "7", "--seed", "1", "--json", "--report", str(out))
    assert js.returncode == 0, js.stderr
    data = json.loads(js.stdout)
    assert [p["planned"] for p in data["pool"]] == [9, 15, 21, 27, 33, 0, 0]
    assert data["accounts"]["user00@pool0.test"][0] == {
        "date": "2027-03-01", "warmup_day": 1, "target": 3, "planned": 3, "replies": 0, "sent": 3, "skipped": 0,
        "bounced": 0, "inbox": 0, "junk": 0, "held": False, "paused": False, "not_sending": None}
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html and "http://" not in html.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert not (tmp_path / "state").exists()  # no state database written
    for args, msg in ((["--days", "0"], "--days must be 1-3660"),
                      (["--junk-rate", "2"], "--junk-rate must be a share between 0 and 1"),
                      (["--start", "next monday"], "--start must be a date YYYY-MM-DD"),
                      (["--report", str(tmp_path / "no" / "such" / "dir.html")], "cannot write the report")):
        bad = run(*args)
        assert bad.returncode == 64, bad
        assert bad.stderr.count("\n") == 1 and msg in bad.stderr and "Traceback" not in bad.stderr


def test_http_setting_is_loopback_unless_allowed(tmp_path: Path) -> None:
    ok = load_config(pool_config(tmp_path, 2, extra='http = "127.0.0.1:8025"'))
    assert ok.daemon.http == ("127.0.0.1", 8025)
    assert load_config(pool_config(tmp_path, 2, extra='http = "[::1]:9000"')).daemon.http == ("::1", 9000)
    with pytest.raises(ConfigError) as e:
        load_config(pool_config(tmp_path, 2, extra='http = "0.0.0.0:8025"'))
    assert "daemon.http" in str(e.value) and "reverse proxy" in str(e.value)
    allowed = load_config(pool_config(tmp_path, 2, extra='http = "0.0.0.0:8025"\nhttp_allow_remote = true'))
    assert allowed.daemon.http == ("0.0.0.0", 8025)
    with pytest.raises(ConfigError) as e:
        load_config(pool_config(tmp_path, 2, extra='http = "localhost"'))
    assert 'must be "host:port"' in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(pool_config(tmp_path, 2, extra="seed = -1"))
    assert "daemon.seed" in str(e.value)
