"""The kinder thresholds (warmupd.thresholds), the health score and graduation (warmupd.health,
reputation.Reputation.update_health) on engagement data seeded into a real store."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from warmupd import health
from warmupd.calendar import local_date
from warmupd.config import Account, Config, DnsSettings, Engagement, build_config
from warmupd.planner import PlannedSend, day_target
from warmupd.reputation import Reputation
from warmupd.store import AccountState, Store
from warmupd.thresholds import bounce_verdict, junk_verdict

ENG = Engagement()  # the defaults: bounce_min_sample 20, hold_min_sample 10, bands .10/.25/.50


def test_bounces_pause_only_past_the_minimum_sample() -> None:
    assert bounce_verdict(1, 1, ENG).band == "below_min_sample"  # one bounce of one send
    assert bounce_verdict(5, 19, ENG).band == "below_min_sample"
    assert bounce_verdict(1, 20, ENG).band == "none"  # 5 %: not more than bounce_pause_rate
    v = bounce_verdict(2, 20, ENG)
    assert v.band == "pause" and "2 of the last 20 sends bounced (10%" in v.reason()


@pytest.mark.parametrize("junk, received, band", [
    (1, 3, "below_min_sample"), (9, 9, "below_min_sample"), (1, 10, "none"), (2, 10, "hold"),
    (3, 10, "cut"), (6, 10, "pause"), (5, 10, "cut")])
def test_junk_bands(junk: int, received: int, band: str) -> None:
    v = junk_verdict(junk, received, ENG)
    assert v.band == band
    if band in ("hold", "cut", "pause"):
        assert f"{junk} of {received} warmup messages landed in junk" in v.reason(3)


def test_score_formula() -> None:
    # all mail in the inbox for 7 days, no bounce, DNS ok, nothing listed: 100
    assert health.score([(10, 10)] * 7, 50, 0, "ok", "clear").score == 100
    # recency: today's 0 of 10 weighs 7, six days ago's 10 of 10 weighs 1
    days = [(0, 10), (10, 10), (10, 10), (10, 10), (10, 10), (10, 10), (10, 10)]
    assert health.weighted_placement(days) == pytest.approx(21 / 28)
    s = health.score(days, 100, 2, "warn", "unknown")
    assert s.points == {"placement": pytest.approx(60 * 21 / 28), "bounces": pytest.approx(15 * 0.6),
                        "dns": 10, "blocklists": 5}
    assert s.score == round(45 + 9 + 10 + 5)
    assert health.score([(10, 10)] * 7, 50, 0, "ok", "listed").score == 30  # a listing caps it
    assert health.score([], 0, 0, None, None).score == round(0 + 15 + 7 + 5)  # nothing known yet


class Host:
    """The ReputationHost of one store and a pool (what daemon.py hands Reputation)."""

    def __init__(self, store: Store, config: Config, states: dict[str, AccountState]) -> None:
        self.store = store
        self._config = config
        self.states = states

    def now(self) -> float:
        return time.time()

    def today(self, account: Account) -> date:
        return local_date(account.timezone, self.now())

    @property
    def accounts(self) -> Sequence[Account]:
        return self._config.accounts

    @property
    def settings(self) -> DnsSettings:
        return self._config.daemon.dns

    def state(self, email: str) -> AccountState | None:
        return self.states.get(email)

    async def pause(self, email: str, reason: str) -> None:
        raise AssertionError("no pause expected")

    async def resume(self, email: str) -> None:
        raise AssertionError("no resume expected")


async def test_health_and_graduation_from_seeded_engagement(tmp_path: Path) -> None:
    smtp = {"host": "127.0.0.1", "port": 2525, "security": "none", "password": "pw"}
    cfg = build_config({"daemon": {"state_dir": str(tmp_path / "state")},
                        "defaults": {"graduate_score": 70, "graduate_day": 20, "maintenance_per_day": 8},
                        "accounts": [{"email": "a@x.test", "start_date": "2026-01-05", "smtp": smtp},
                                     {"email": "b@x.test", "start_date": "2026-01-05", "smtp": smtp}]},
                       tmp_path / "config.toml", {})
    store = await Store.open(cfg.daemon.database)
    try:
        today = local_date("UTC", time.time())
        rng = random.Random(1)
        # a: 4 sends a day for 7 days, all received in the inbox but today's 2 of 4 in junk
        days = []
        for k in range(7):
            d = today - timedelta(days=k)
            days.append(("a@x.test", d.isoformat(), 20, 4,
                         [PlannedSend(time.time() - 86400 * k - i, "p", "b@x.test", f"<{k}.{i}@x.test>")
                          for i in range(4)]))
        await store.insert_plan(days)
        ids = 0
        for k in range(7):
            for row in await store.day_rows("a@x.test", (today - timedelta(days=k)).isoformat()):
                row.status, row.sent_at_ms = "sent", row.at_ms
                await store.commit_send(row, "pending")
                junk = k == 0 and ids % 4 < 2
                await store.record_received(row.id, "b@x.test", "Junk" if junk else "INBOX",
                                            "junk" if junk else "inbox", today.isoformat(), row.at_ms, 0, 1, [])
                ids += 1
        states = {e: AccountState(e, wd, today.isoformat(), None, None, None, None)
                  for e, wd in (("a@x.test", 25), ("b@x.test", 5))}
        for st in states.values():
            await store.upsert_account(st)
        rep = Reputation(Host(store, cfg, states), rng)
        with capture_logs() as logs:
            await rep.update_health()
            await rep.update_health()
        a = rep.health_view("a@x.test")
        assert a is not None
        want_placement = (7 * 2 + sum(w * 4 for w in range(1, 7))) / (4 * 28)
        assert a["placement"] == pytest.approx(want_placement, abs=1e-4)
        assert a["score"] == round(60 * want_placement + 15 + 7 + 5)  # DNS not checked, no blocklist known
        assert a["graduated"] == today.isoformat()  # score >= 70 and warmup day 25 >= 20
        assert [e["account"] for e in logs if e["event"] == "account graduated"] == ["a@x.test"]  # once
        assert states["b@x.test"].graduated is None  # day 5 < 20, and nothing sent
        assert day_target(cfg.accounts[0], 25, graduated=True) == 8  # maintenance, not the ramp's 40
        assert day_target(cfg.accounts[0], 25) == 40
        stored = {s.email: s for s in (await store.account_states()).values()}
        assert stored["a@x.test"].graduated == today.isoformat()
        hist = await store.health_history("a@x.test", today.isoformat())
        assert [(d, sc) for d, sc, _ in hist] == [(today.isoformat(), a["score"])]
    finally:
        await store.close()
