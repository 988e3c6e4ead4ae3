"""Only the near future in memory: sends beyond the paging horizon stay in the store and
are paged into the timers ahead of their time (the real daemon, a real SMTP server, the
real clock; the horizon shortened to 3 s with WARMUPD_HORIZON so it shows in seconds)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.daemon_helpers import (
    ALICE,
    BOB,
    CAROL,
    DaemonFactory,
    all_final,
    seed_plan,
    send_rows,
    skip_near_midnight,
    wait_rows,
    write_config,
)
from tests.ops_helpers import raw_request
from tests.rig.smtp_server import SMTPServer
from warmupd.config import load_config

HORIZON = {"WARMUPD_HORIZON": "3"}




def request(cfg: Path, cmd: str, **args: Any) -> dict[str, Any]:
    reply = raw_request(load_config(cfg).daemon.socket, json.dumps({"cmd": cmd, **args}).encode() + b"\n")
    out: dict[str, Any] = json.loads(reply)
    assert out["ok"], out
    return out


def test_a_send_beyond_the_horizon_is_paged_in_and_fires_on_time(tmp_path: Path, smtp_server: SMTPServer,
                                                                 daemons: DaemonFactory) -> None:
    skip_near_midnight(120)
    cfg = write_config(tmp_path, smtp_server.port)
    now = time.time()
    near, far = seed_plan(tmp_path, {ALICE: [now + 2.5], BOB: [now + 9.0]})
    daemons(cfg, tmp_path, env=HORIZON)
    st = request(cfg, "status")["result"]
    # Held: the near send only; the far one is in the store (status still names it next
    # once the near one is gone).
    assert st["pending_timers"] == 1, st
    wait_rows(tmp_path, all_final, 20, "both sends to finish")
    arrived = {m["message_id"]: m for m in smtp_server.messages}
    assert set(arrived) == {near.message_id, far.message_id}
    for s in (near, far):
        lateness = arrived[s.message_id]["mail_from_at"] - s.at
        assert 0 <= lateness < 0.1, (s, lateness)


def test_pause_and_reload_reach_sends_that_are_not_paged_in(tmp_path: Path, smtp_server: SMTPServer,
                                                            daemons: DaemonFactory) -> None:
    skip_near_midnight(120)
    cfg = write_config(tmp_path, smtp_server.port)
    now = time.time()
    seeded = seed_plan(tmp_path, {ALICE: [now + 9.0, now + 11.0], BOB: [now + 10.0], CAROL: [now + 9.5]})
    a1, a2 = (s for s in seeded if s.account == ALICE)
    (b1,) = (s for s in seeded if s.account == BOB)
    (c1,) = (s for s in seeded if s.account == CAROL)
    d = daemons(cfg, tmp_path, env=HORIZON)
    assert request(cfg, "status")["result"]["pending_timers"] == 0  # all four beyond the horizon
    assert request(cfg, "pause", account=ALICE, reason="paging test")["result"]["skipped"] == 2
    # Reload without bob: his send, still in the store only, is skipped too.
    text = cfg.read_text()
    start = text.index('[[accounts]]\nemail = "bob@')
    end = text.index("[[accounts]]", start + 1)
    cfg.write_text(text[:start] + text[end:])
    assert request(cfg, "reload")["result"]["ok"]
    rows = {r["id"]: r for r in wait_rows(tmp_path, all_final, 25, "every send to finish")}
    assert rows[a1.id]["status"] == rows[a2.id]["status"] == "skipped"
    assert rows[a1.id]["reason"] == "paused: paging test"
    assert rows[b1.id]["status"] == "skipped" and rows[b1.id]["reason"].startswith("removed")
    assert rows[c1.id]["status"] == "sent"
    assert [m["message_id"] for m in smtp_server.messages] == [c1.message_id]
    assert not d.errors(), d.errors()


def test_a_restart_pages_in_again_without_doubling(tmp_path: Path, smtp_server: SMTPServer,
                                                   daemons: DaemonFactory) -> None:
    skip_near_midnight(120)
    cfg = write_config(tmp_path, smtp_server.port)
    now = time.time()
    seeded = seed_plan(tmp_path, {ALICE: [now + 7.0, now + 12.0], BOB: [now + 8.0]})
    d = daemons(cfg, tmp_path, env=HORIZON)
    d.kill9()  # before any of them was paged in
    d.start()
    rows = wait_rows(tmp_path, all_final, 25, "every send to finish")
    assert {r["status"] for r in rows} == {"sent"}, rows
    mids = [m["message_id"] for m in smtp_server.messages]
    assert sorted(mids) == sorted(s.message_id for s in seeded)
    for s in seeded:
        (m,) = [m for m in smtp_server.messages if m["message_id"] == s.message_id]
        assert 0 <= m["mail_from_at"] - s.at < 0.1
    assert send_rows(tmp_path, "status='pending'") == []
