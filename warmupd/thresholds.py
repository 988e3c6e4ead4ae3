"""The protections' decisions, pure: when bounces pause an account, and which junk band
a sender is in (README: "Thresholds"). imap.py gathers the counts and acts.

Neither acts on a small sample: one bounce of one send, or one message of three in
junk, says little about a mailbox. Below ``bounce_min_sample`` sends (of the last
50) or ``hold_min_sample`` received messages (over the last 3 sending days) the
verdict is ``below_min_sample`` and nothing happens; the status shows the counts.

Junk bands, by the share of the sender's warmup mail that landed in junk:
``> hold_junk_rate``: the ramp holds 3 days; ``> cut_junk_rate``: held, and the
day's target cut by half (today's pending sends and the held days' plans);
``> pause_junk_rate``: the account pauses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import Engagement

CUT_FACTOR = 0.5  # the share of the target kept in the "cut" band


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: str  # bounces | junk
    band: str  # none | below_min_sample | hold | cut | pause
    count: int  # bounced sends, or messages in junk
    sample: int  # sends, or received messages
    min_sample: int
    threshold: float  # the rate of the band reached (or of the first band)

    @property
    def rate(self) -> float:
        return self.count / self.sample if self.sample else 0.0

    def reason(self, days: int = 0) -> str:
        if self.kind == "bounces":
            return (f"bounces: {self.count} of the last {self.sample} sends bounced ({self.rate:.0%}, more "
                    f"than bounce_pause_rate {self.threshold:.0%}; at least {self.min_sample} sends seen)")
        name = {"hold": "hold_junk_rate", "cut": "cut_junk_rate", "pause": "pause_junk_rate"}.get(
            self.band, "hold_junk_rate")
        over = f" over the last {days} sending days" if days else ""
        return (f"{self.count} of {self.sample} warmup messages landed in junk{over} ({self.rate:.0%}, more "
                f"than {name} {self.threshold:.0%})")

    def to_json(self) -> dict[str, Any]:
        return {"band": self.band, "count": self.count, "sample": self.sample, "min_sample": self.min_sample,
                "rate": round(self.rate, 4), "threshold": self.threshold}


def bounce_verdict(bounced: int, sends: int, eng: Engagement) -> Verdict:
    if sends < eng.bounce_min_sample:
        return Verdict("bounces", "below_min_sample", bounced, sends, eng.bounce_min_sample,
                       eng.bounce_pause_rate)
    band = "pause" if bounced / sends > eng.bounce_pause_rate else "none"
    return Verdict("bounces", band, bounced, sends, eng.bounce_min_sample, eng.bounce_pause_rate)


def junk_verdict(junk: int, received: int, eng: Engagement) -> Verdict:
    if received < eng.hold_min_sample:
        return Verdict("junk", "below_min_sample", junk, received, eng.hold_min_sample, eng.hold_junk_rate)
    rate = junk / received
    for band, threshold in (("pause", eng.pause_junk_rate), ("cut", eng.cut_junk_rate),
                            ("hold", eng.hold_junk_rate)):
        if rate > threshold:
            return Verdict("junk", band, junk, received, eng.hold_min_sample, threshold)
    return Verdict("junk", "none", junk, received, eng.hold_min_sample, eng.hold_junk_rate)


__all__ = ["CUT_FACTOR", "Verdict", "bounce_verdict", "junk_verdict"]
