"""DNS blocklists (DNSBL for addresses, RHSBL/DBL for domains): is a name listed?

A blocklist is a DNS zone: ``2.0.0.127.zen.spamhaus.org`` (the address's octets
reversed, or an IPv6 address's nibbles) or ``example.com.dbl.spamhaus.org`` has an
A record in 127.0.0.0/8 when the name is listed (often a TXT record with the
reason beside it), and NXDOMAIN when it is not.

The verdict (``listing_verdict``, pure) is ``listed``, ``clear`` or ``unknown``:
NXDOMAIN or an empty answer is ``clear``; an answer in 127.0.0.0/8 is ``listed``,
except Spamhaus's 127.255.255.x codes, which say the query itself was refused
(a public resolver, or over the free usage limit): ``unknown``. A timeout, a
SERVFAIL or an answer outside 127.0.0.0/8 (a dead zone that answers everything)
is ``unknown`` too: a failure to ask is never taken for "not listed".

The zones' usage policies (Spamhaus's free use, SpamCop's) ask for few queries
from a sender's own resolver: the daemon asks about each distinct name once per
``blocklist_interval`` (at least an hour; 6 h by default), whatever the number of
accounts that share it (reputation.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .dnscheck import DNS, Answer

DEFAULT_IP_ZONES = ("zen.spamhaus.org", "bl.spamcop.net", "psbl.surriel.com")
DEFAULT_DOMAIN_ZONES = ("dbl.spamhaus.org",)
REFUSED = ipaddress.ip_network("127.255.255.0/24")  # Spamhaus: "your query was refused"
LISTING_NET = ipaddress.ip_network("127.0.0.0/8")


@dataclass(frozen=True, slots=True)
class Listing:
    name: str  # the address or domain asked about
    zone: str
    kind: str  # ip | domain
    verdict: str  # listed | clear | unknown
    detail: str
    checked_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        from .calendar import iso_utc

        return {"name": self.name, "zone": self.zone, "kind": self.kind, "verdict": self.verdict,
                "detail": self.detail, "checked_at": iso_utc(self.checked_at) if self.checked_at else None}


def query_name(name: str, zone: str, kind: str) -> str:
    """The name to look up in ``zone`` for an address (reversed) or a domain."""
    zone = zone.strip(".")
    if kind == "ip":
        ip = ipaddress.ip_address(name)
        if ip.version == 4:
            return ".".join(reversed(name.split("."))) + "." + zone
        return ".".join(reversed(ip.exploded.replace(":", ""))) + "." + zone
    return name.strip(".").lower() + "." + zone


def listing_verdict(name: str, zone: str, kind: str, a: Answer, txt: Answer | None = None,
                    now: float = 0.0) -> Listing:
    if not a.known:
        return Listing(name, zone, kind, "unknown", a.error or "lookup failed", now)
    if a.status in ("nxdomain", "nodata") or not a.values:
        return Listing(name, zone, kind, "clear", "not listed", now)
    codes = []
    for v in a.values:
        try:
            codes.append(ipaddress.ip_address(v))
        except ValueError:
            continue
    listed = [c for c in codes if c.version == 4 and c in LISTING_NET and c not in REFUSED]
    if any(c.version == 4 and c in REFUSED for c in codes) and not listed:
        return Listing(name, zone, kind, "unknown",
                       f"{zone} refused the query ({', '.join(map(str, codes))}): a public resolver "
                       "or over the zone's free usage; use your own resolver", now)
    if not listed:
        return Listing(name, zone, kind, "unknown",
                       f"{zone} answered {', '.join(a.values)}, outside 127.0.0.0/8: the zone may be "
                       "dead or wildcarded", now)
    reason = "; ".join(txt.values) if txt is not None and txt.status == "ok" and txt.values else ""
    codes_text = ", ".join(str(c) for c in listed)
    return Listing(name, zone, kind, "listed", f"listed ({codes_text})" + (f": {reason}" if reason else ""),
                   now)


async def check_one(resolver: DNS, name: str, zone: str, kind: str, now: float) -> Listing:
    q = query_name(name, zone, kind)
    a = await resolver.query(q, "A")
    txt = await resolver.txt(q) if a.status == "ok" else None
    return listing_verdict(name, zone, kind, a, txt, now)


async def check_names(resolver: DNS, ips: Sequence[str], domains: Sequence[str], ip_zones: Sequence[str],
                      domain_zones: Sequence[str], now: float, concurrency: int = 10) -> list[Listing]:
    """Every (name, zone) pair, at most ``concurrency`` lookups at a time."""
    sem = asyncio.Semaphore(concurrency)

    async def one(name: str, zone: str, kind: str) -> Listing:
        async with sem:
            return await check_one(resolver, name, zone, kind, now)

    jobs = [one(ip, z, "ip") for ip in ips for z in ip_zones]
    jobs += [one(d, z, "domain") for d in domains for z in domain_zones]
    return list(await asyncio.gather(*jobs))


__all__ = ["DEFAULT_DOMAIN_ZONES", "DEFAULT_IP_ZONES", "Listing", "check_names", "listing_verdict",
           "query_name"]
