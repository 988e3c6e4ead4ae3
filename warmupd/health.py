"""An account's health score, 0-100, and graduation: pure functions (README: "Health score").

    placement  = sum_k w_k * inbox_k / sum_k w_k * received_k     over the last 7 local days,
                 k = 0 (today) .. 6, w_k = 7 - k (recent days weigh more); None without mail
    bounce_rate = bounced / sent over the same 7 days (0 without sends)

    points = 60 * placement                              (0 while nothing was received)
           + 15 * max(0, 1 - bounce_rate / 0.05)         (all 15 at no bounce, none at 5 % or more)
           + DNS: ok 15, warn 10, unknown or not checked 7, fail 0
           + blocklists: all clear 10, any unknown 5, any listed 0
    score  = round(points), and at most 30 while any blocklist lists the account

An account graduates on the first day its score is at least ``graduate_score`` and
its warmup day at least ``graduate_day``; it then sends ``maintenance_per_day`` a day
instead of following the ramp (graduation is kept: a later dip shows in the score
and the protections, not as an un-graduation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DAYS = 7
PLACEMENT_POINTS = 60
BOUNCE_POINTS = 15
BOUNCE_ZERO_AT = 0.05
DNS_POINTS = {"ok": 15, "warn": 10, "unknown": 7, "fail": 0}
LIST_POINTS = {"clear": 10, "unknown": 5, "listed": 0}
LISTED_CAP = 30


@dataclass(frozen=True, slots=True)
class Score:
    score: int
    placement: float | None
    bounce_rate: float
    dns: str
    blocklists: str
    points: Mapping[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"score": self.score, "placement": None if self.placement is None else round(self.placement, 4),
                "bounce_rate": round(self.bounce_rate, 4), "dns": self.dns, "blocklists": self.blocklists,
                "points": {k: round(v, 2) for k, v in self.points.items()}}


def weighted_placement(days: Sequence[tuple[int, int]]) -> float | None:
    """``days[k]`` = (inbox, received) k days ago (k = 0 is today)."""
    num = den = 0.0
    for k, (inbox, received) in enumerate(days[:DAYS]):
        w = DAYS - k
        num += w * inbox
        den += w * received
    return num / den if den else None


def score(days: Sequence[tuple[int, int]], sent: int, bounced: int, dns: str | None,
          blocklists: str | None) -> Score:
    """The score from 7 days of (inbox, received), newest first, the 7 days' sends and
    bounces, the domain's DNS verdict and the blocklist verdict (listed | unknown | clear)."""
    placement = weighted_placement(days)
    rate = bounced / sent if sent else 0.0
    dns_v = dns if dns in DNS_POINTS else "unknown"
    bl_v = blocklists if blocklists in LIST_POINTS else "unknown"
    points = {"placement": PLACEMENT_POINTS * (placement or 0.0),
              "bounces": BOUNCE_POINTS * max(0.0, 1.0 - rate / BOUNCE_ZERO_AT),
              "dns": float(DNS_POINTS[dns_v]), "blocklists": float(LIST_POINTS[bl_v])}
    total = round(sum(points.values()))
    if bl_v == "listed":
        total = min(total, LISTED_CAP)
    return Score(max(0, min(100, total)), placement, rate, dns_v, bl_v, points)


def graduates(score_: int, warmup_day: int, graduate_score: int, graduate_day: int) -> bool:
    return score_ >= graduate_score and warmup_day >= graduate_day


__all__ = ["Score", "graduates", "score", "weighted_placement"]
