"""A sender domain's DNS authentication: MX, SPF, DKIM and DMARC, and the verdict of each.

Two layers, kept apart so that the verdicts can be read and tested without a network:

* **lookups** (``DNS``): dnspython's async resolver, pointed at the configured
  resolver (``[daemon] resolver = "127.0.0.1:5353"``) or the system's, every query
  bounded by ``timeout``. An answer is an ``Answer``: ``ok`` with its values,
  ``nxdomain``/``nodata`` (the name or the type does not exist: a fact), or
  ``error`` (timeout, SERVFAIL, refused: nothing is known). The lookups never raise.
* **verdicts** (``mx_verdict``, ``spf_verdict``, ``dkim_verdict``, ``dmarc_verdict``):
  pure functions of the answers, each a ``Check`` with ``ok``, ``warn``, ``fail`` or
  ``unknown`` (an answer was an error: never taken for a pass or a fail) and a
  one-line detail an operator can act on.

SPF and DMARC are parsed here, over dnspython, rather than with checkdmarc or pyspf:
checkdmarc is synchronous and cannot be pointed at a resolver on another port, and
pyspf (last release 2020) is synchronous with its own DNS layer; the daemon must
never block its event loop on DNS. The parts of RFC 7208 and RFC 7489 a sender
needs are small: record selection (exactly one ``v=spf1``), term syntax, the
10-lookup limit (include, a, mx, ptr, exists, redirect, counted through nested
includes), the 2-void-lookup limit, and evaluating ``ip4``/``ip6``/``a``/``mx``/
``include``/``redirect``/``all`` for the configured ``sending_ips``; DMARC's tags
``p``, ``sp``, ``adkim``, ``aspf``, ``pct``. Macros (``%{i}``) are counted but not
expanded: a record that needs one to authorise an address gives ``unknown``.

DKIM key sizes come from the published key itself (``p=``, a DER
SubjectPublicKeyInfo) through ``cryptography``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from .config import parse_resolver

VERDICTS = ("ok", "warn", "unknown", "fail")  # in rising order of trouble
LOOKUP_LIMIT = 10  # RFC 7208 4.6.4
VOID_LIMIT = 2  # RFC 7208 4.6.4
MAX_SPF_NAMES = 30  # include/redirect targets followed, at most (a loop or a huge tree)
DKIM_MIN_BITS = 1024  # below: receivers ignore or reject the signature
DKIM_GOOD_BITS = 2048


# ---------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Answer:
    """One lookup: ``status`` ok | nxdomain | nodata | error."""

    status: str
    values: tuple[str, ...] = ()
    error: str | None = None

    @property
    def known(self) -> bool:
        return self.status != "error"


@dataclass(frozen=True, slots=True)
class Check:
    name: str  # mx | spf | dkim:<selector> | dmarc
    verdict: str  # ok | warn | fail | unknown
    detail: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "detail": self.detail, **dict(self.data)}


def worst(verdicts: Iterable[str]) -> str:
    """The overall verdict: fail over unknown over warn over ok (ok when empty)."""
    return max(verdicts, key=VERDICTS.index, default="ok")


@dataclass(frozen=True, slots=True)
class DomainReport:
    domain: str
    checked_at: float
    checks: tuple[Check, ...]

    @property
    def verdict(self) -> str:
        return worst(c.verdict for c in self.checks)

    def failing(self) -> list[Check]:
        return [c for c in self.checks if c.verdict == "fail"]

    def to_json(self) -> dict[str, Any]:
        from .calendar import iso_utc

        return {"domain": self.domain, "verdict": self.verdict, "checked_at": iso_utc(self.checked_at),
                "checks": {c.name: c.to_json() for c in self.checks}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], checked_at: float) -> DomainReport:
        checks = []
        for name, c in dict(data.get("checks", {})).items():
            extra = {k: v for k, v in c.items() if k not in ("verdict", "detail")}
            checks.append(Check(name, str(c.get("verdict", "unknown")), str(c.get("detail", "")), extra))
        return cls(str(data.get("domain", "")), checked_at, tuple(checks))


# ---------------------------------------------------------------- the resolver


class DNS:
    """Bounded lookups through one dnspython async resolver; never raises."""

    def __init__(self, resolver: str = "", timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.spec = resolver
        self.problem: str | None = None
        target = parse_resolver(resolver)
        if target is None:
            try:
                self.resolver = dns.asyncresolver.Resolver(configure=True)
            except (dns.resolver.NoResolverConfiguration, OSError) as e:
                self.resolver = dns.asyncresolver.Resolver(configure=False)
                self.problem = f"no system resolver ({e}); set [daemon] resolver"
        else:
            self.resolver = dns.asyncresolver.Resolver(configure=False)
            self.resolver.nameservers = [target[0]]
            self.resolver.port = target[1]
        self.resolver.timeout = timeout
        self.resolver.lifetime = timeout
        self.resolver.cache = None
        self.queries = 0
        self.errors = 0

    async def query(self, name: str, rdtype: str) -> Answer:
        if self.problem is not None:
            return Answer("error", error=self.problem)
        self.queries += 1
        try:
            ans = await asyncio.wait_for(
                self.resolver.resolve(name, rdtype, raise_on_no_answer=False, search=False),
                self.timeout + 1.0)
        except dns.resolver.NXDOMAIN:
            return Answer("nxdomain")
        except (dns.exception.Timeout, TimeoutError):
            self.errors += 1
            return Answer("error", error=f"no answer for {name} {rdtype} within {self.timeout:g} s")
        except dns.resolver.NoNameservers:
            self.errors += 1
            return Answer("error", error=f"{name} {rdtype}: the resolver failed (SERVFAIL or refused)")
        except (dns.exception.DNSException, OSError, ValueError) as e:
            self.errors += 1
            return Answer("error", error=f"{name} {rdtype}: {type(e).__name__}: {e}")
        if ans.rrset is None:
            return Answer("nodata")
        values: list[str] = []
        for rd in ans.rrset:
            if rdtype == "TXT":
                values.append(b"".join(rd.strings).decode("utf-8", errors="replace"))
            elif rdtype == "MX":
                values.append(f"{rd.preference} {str(rd.exchange).rstrip('.') or '.'}")
            else:
                values.append(rd.to_text())
        return Answer("ok", tuple(values))

    async def txt(self, name: str) -> Answer:
        return await self.query(name, "TXT")

    async def mx(self, name: str) -> Answer:
        return await self.query(name, "MX")

    async def addresses(self, name: str) -> Answer:
        """A and AAAA together: ok with both's addresses; error if either failed."""
        a, aaaa = await asyncio.gather(self.query(name, "A"), self.query(name, "AAAA"))
        for x in (a, aaaa):
            if x.status == "error":
                return x
        values = a.values + aaaa.values
        if values:
            return Answer("ok", values)
        return Answer("nxdomain" if "nxdomain" in (a.status, aaaa.status) else "nodata")


# ---------------------------------------------------------------- MX


def mx_verdict(answer: Answer) -> Check:
    if not answer.known:
        return Check("mx", "unknown", f"MX lookup failed: {answer.error}")
    hosts = sorted((int(v.split()[0]), v.split()[1]) for v in answer.values if len(v.split()) == 2)
    if not hosts:
        return Check("mx", "fail", "no MX record: replies and bounces to this domain cannot be "
                                   "delivered; publish the domain's MX")
    if len(hosts) == 1 and hosts[0][1] in (".", ""):
        return Check("mx", "fail", "null MX (\"0 .\"): the domain says it accepts no mail, so replies "
                                   "bounce; publish a real MX")
    shown = ", ".join(f"{p} {h}" for p, h in hosts)
    return Check("mx", "ok", f"{len(hosts)} MX: {shown}", {"hosts": [h for _, h in hosts]})


# ---------------------------------------------------------------- SPF

_MECHS = ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists")
_LOOKUP_MECHS = ("include", "a", "mx", "ptr", "exists")
_TERM_RE = re.compile(r"^([+\-~?]?)([A-Za-z][A-Za-z0-9_.-]*)(.*)$")
_MODIFIER_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_.-]*)=(.*)$")
_DOMAIN_SPEC_RE = re.compile(r"^(?:[A-Za-z0-9_%{}.\-+=,/]+)$")
RESULTS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}


@dataclass(frozen=True, slots=True)
class SpfTerm:
    qualifier: str  # + - ~ ? (mechanisms); "" for modifiers
    name: str  # a mechanism (all, include, ...) or a modifier (redirect, exp, ...)
    value: str  # after ":" (mechanisms) or "=" (modifiers); "" when absent
    cidr4: int | None = None
    cidr6: int | None = None

    @property
    def modifier(self) -> bool:
        return self.qualifier == ""


def spf_records(txts: Sequence[str]) -> list[str]:
    """The TXT values that are SPF records (``v=spf1`` then a space or the end)."""
    return [t for t in txts if re.match(r"(?i)^v=spf1(\s|$)", t.strip())]


def _cidr(text: str) -> tuple[str, int | None, int | None]:
    """Split ``domain/24//64`` into (domain, ip4 cidr, ip6 cidr)."""
    m = re.search(r"(?:/(\d+))?(?://(\d+))?$", text)
    if not m or not m.group(0):
        return text, None, None
    return (text[:m.start()], int(m.group(1)) if m.group(1) else None,
            int(m.group(2)) if m.group(2) else None)


def parse_spf(record: str) -> tuple[list[SpfTerm], list[str]]:
    """(terms, syntax problems) of one SPF record (RFC 7208 section 12's grammar, in short)."""
    parts = record.split()
    terms: list[SpfTerm] = []
    problems: list[str] = []
    seen_mods: set[str] = set()
    for raw in parts[1:]:
        mod = _MODIFIER_RE.match(raw)
        if mod and mod.group(1).lower() not in _MECHS:
            name, value = mod.group(1).lower(), mod.group(2)
            if name in ("redirect", "exp"):
                if name in seen_mods:
                    problems.append(f"{name}= appears twice")
                seen_mods.add(name)
                if not value or not _DOMAIN_SPEC_RE.match(value):
                    problems.append(f"{raw!r}: {name}= needs a domain")
            terms.append(SpfTerm("", name, value))
            continue
        m = _TERM_RE.match(raw)
        if not m or m.group(2).lower() not in _MECHS:
            problems.append(f"{raw!r} is not an SPF mechanism")
            continue
        qual, name, rest = m.group(1) or "+", m.group(2).lower(), m.group(3)
        value = ""
        c4 = c6 = None
        if rest.startswith(":"):
            value = rest[1:]
        elif rest and not rest.startswith("/"):
            problems.append(f"{raw!r} is not an SPF mechanism")
            continue
        elif rest:
            value = rest  # a/24, mx//64: the cidr comes next
        if name == "all":
            if value:
                problems.append(f"{raw!r}: all takes no argument")
        elif name in ("ip4", "ip6"):
            try:
                net = ipaddress.ip_network(value, strict=False)
            except ValueError:
                problems.append(f"{raw!r}: {value!r} is not an {name} address or network")
                continue
            if (name == "ip4") != (net.version == 4):
                problems.append(f"{raw!r}: {value!r} is not an {name} address")
                continue
        elif name in ("a", "mx"):
            value, c4, c6 = _cidr(value)
            if (c4 is not None and c4 > 32) or (c6 is not None and c6 > 128):
                problems.append(f"{raw!r}: prefix length out of range")
            if value and not _DOMAIN_SPEC_RE.match(value):
                problems.append(f"{raw!r}: {value!r} is not a domain")
        elif name in ("include", "exists"):
            if not value or not _DOMAIN_SPEC_RE.match(value):
                problems.append(f"{raw!r}: {name} needs a domain")
        terms.append(SpfTerm(qual, name, value, c4, c6))
    return terms, problems


@dataclass(slots=True)
class SpfTree:
    """The answers an SPF evaluation needs, gathered once (``gather_spf``)."""

    txt: dict[str, Answer] = field(default_factory=dict)  # SPF domain -> its TXT answer
    hosts: dict[str, Answer] = field(default_factory=dict)  # a-mechanism name -> A/AAAA
    mx: dict[str, Answer] = field(default_factory=dict)  # mx-mechanism name -> MX


def _lower(name: str) -> str:
    return name.rstrip(".").lower()


def _one_record(answer: Answer) -> tuple[list[SpfTerm], list[str]] | None:
    recs = spf_records(answer.values) if answer.status == "ok" else []
    if len(recs) != 1:
        return None
    return parse_spf(recs[0])


async def gather_spf(resolver: DNS, domain: str, want_hosts: bool) -> SpfTree:
    """Follow ``domain``'s SPF through include and redirect (breadth first, at most
    ``MAX_SPF_NAMES`` names); with ``want_hosts``, also the A/AAAA and MX answers the
    a and mx mechanisms need to evaluate an address."""
    tree = SpfTree()
    queue = [_lower(domain)]
    while queue and len(tree.txt) < MAX_SPF_NAMES:
        batch = [d for d in dict.fromkeys(queue) if d not in tree.txt][:MAX_SPF_NAMES - len(tree.txt)]
        queue = []
        answers = await asyncio.gather(*(resolver.txt(d) for d in batch))
        host_names: set[str] = set()
        mx_names: set[str] = set()
        for d, ans in zip(batch, answers, strict=True):
            tree.txt[d] = ans
            parsed = _one_record(ans)
            if parsed is None:
                continue
            for t in parsed[0]:
                target = _lower(t.value) if t.value else d
                if "%" in target:
                    continue  # macros are not expanded
                if t.name in ("include", "redirect"):
                    queue.append(target)
                elif want_hosts and t.name == "a":
                    host_names.add(target)
                elif want_hosts and t.name == "mx":
                    mx_names.add(target)
        if host_names or mx_names:
            hs = sorted(host_names - set(tree.hosts))
            ms = sorted(mx_names - set(tree.mx))
            for n, a in zip(hs, await asyncio.gather(*(resolver.addresses(n) for n in hs)), strict=True):
                tree.hosts[n] = a
            for n, a in zip(ms, await asyncio.gather(*(resolver.mx(n) for n in ms)), strict=True):
                tree.mx[n] = a
            exchanges = sorted({v.split()[1].lower() for n in ms for v in tree.mx[n].values
                                if len(v.split()) == 2} - set(tree.hosts) - {"."})
            for n, a in zip(exchanges, await asyncio.gather(*(resolver.addresses(n) for n in exchanges)),
                            strict=True):
                tree.hosts[n] = a
    return tree


def _count(domain: str, tree: SpfTree, stack: tuple[str, ...] = ()) -> tuple[int, int, list[str], bool]:
    """(DNS lookups, void lookups, problems, complete) of ``domain``'s record and what
    it includes; ``complete`` is False when an answer is missing or was an error."""
    ans = tree.txt.get(domain)
    if ans is None or not ans.known:
        return 0, 0, [], False
    recs = spf_records(ans.values) if ans.status == "ok" else []
    where = f" at {domain}" if stack else ""
    if not recs:
        return 0, 1, ([f"include:{domain} has no SPF record"] if stack else []), True
    if len(recs) > 1:
        return 0, 0, [f"{len(recs)} SPF records{where} (exactly one is allowed)"], True
    terms, problems = parse_spf(recs[0])
    problems = [p + where for p in problems]
    lookups = voids = 0
    complete = True
    for t in terms:
        if t.name in _LOOKUP_MECHS or t.name == "redirect":
            lookups += 1
        if t.name in ("include", "redirect") and "%" not in t.value:
            target = _lower(t.value)
            if target in stack or target == domain:
                problems.append(f"{t.name}:{target} loops back")
                continue
            n, v, p, c = _count(target, tree, (*stack, domain))
            lookups, voids, complete = lookups + n, voids + v, complete and c
            if t.name == "redirect" and not p and tree.txt.get(target, Answer("error")).known and \
                    not spf_records(tree.txt[target].values):
                p = [f"redirect={target} has no SPF record"]
            problems += p
    return lookups, voids, problems, complete


def _in(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, addrs: Iterable[str],
        c4: int | None, c6: int | None) -> bool:
    """Whether ``ip`` is inside one of ``addrs`` widened by the mechanism's prefix lengths."""
    for a in addrs:
        try:
            host = ipaddress.ip_address(a)
        except ValueError:
            continue
        if host.version != ip.version:
            continue
        prefix = c4 if host.version == 4 else c6
        net = ipaddress.ip_network(f"{a}/{prefix if prefix is not None else host.max_prefixlen}", strict=False)
        if ip in net:
            return True
    return False


def _mx_hit(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, tree: SpfTree, target: str,
            t: SpfTerm) -> bool | None:
    """Whether one of ``target``'s MX hosts has ``addr``; None when an answer is missing."""
    mx = tree.mx.get(target)
    if mx is None or not mx.known:
        return None
    missing = False
    for v in mx.values:
        parts = v.split()
        host = parts[1].lower() if len(parts) == 2 else "."
        if host == ".":
            continue
        a = tree.hosts.get(host)
        if a is None or not a.known:
            missing = True
            continue
        if _in(addr, a.values, t.cidr4, t.cidr6):
            return True
    return None if missing else False


def spf_eval(ip: str, domain: str, tree: SpfTree, depth: int = 0) -> str:
    """check_host() for one address over the gathered answers: pass | fail | softfail |
    neutral | none | permerror | unknown (an answer needed is missing or an error)."""
    addr = ipaddress.ip_address(ip)
    ans = tree.txt.get(domain)
    if ans is None or not ans.known or depth > LOOKUP_LIMIT:
        return "unknown" if depth <= LOOKUP_LIMIT else "permerror"
    recs = spf_records(ans.values) if ans.status == "ok" else []
    if not recs:
        return "none"
    if len(recs) > 1:
        return "permerror"
    terms, problems = parse_spf(recs[0])
    if problems:
        return "permerror"
    redirect = None
    for t in terms:
        if t.modifier:
            if t.name == "redirect":
                redirect = t.value
            continue
        target = _lower(t.value) if t.value else domain
        hit: bool | None
        if t.name == "all":
            hit = True
        elif t.name in ("ip4", "ip6"):
            net = ipaddress.ip_network(t.value, strict=False)
            hit = addr.version == net.version and addr in net
        elif "%" in target or t.name in ("ptr", "exists"):
            hit = None  # not evaluated here
        elif t.name == "a":
            a = tree.hosts.get(target)
            hit = None if a is None or not a.known else _in(addr, a.values, t.cidr4, t.cidr6)
        elif t.name == "mx":
            hit = _mx_hit(addr, tree, target, t)
        else:  # include
            sub = spf_eval(ip, target, tree, depth + 1)
            if sub in ("unknown", "permerror"):
                return sub
            if sub == "none":
                return "permerror"
            hit = sub == "pass"
        if hit is None:
            return "unknown"
        if hit:
            return RESULTS[t.qualifier]
    if redirect is not None and "%" not in redirect:
        sub = spf_eval(ip, _lower(redirect), tree, depth + 1)
        return "permerror" if sub == "none" else sub
    return "neutral"


def spf_verdict(domain: str, tree: SpfTree, sending_ips: Sequence[str] = ()) -> Check:
    domain = _lower(domain)
    ans = tree.txt.get(domain)
    if ans is None or not ans.known:
        return Check("spf", "unknown", f"SPF lookup failed: {ans.error if ans else 'not looked up'}")
    recs = spf_records(ans.values) if ans.status == "ok" else []
    if not recs:
        return Check("spf", "fail", f"no SPF record at {domain}: publish one TXT \"v=spf1 ... -all\" "
                                    "naming the servers that send for it")
    if len(recs) > 1:
        return Check("spf", "fail", f"{len(recs)} SPF records at {domain}: receivers treat that as "
                                    "an error (permerror); merge them into one", {"records": recs})
    record = recs[0]
    lookups, voids, problems, complete = _count(domain, tree)
    data: dict[str, Any] = {"record": record, "lookups": lookups}
    if problems:
        return Check("spf", "fail", f"invalid SPF record: {'; '.join(problems[:3])}", data)
    if lookups > LOOKUP_LIMIT:
        return Check("spf", "fail", f"{lookups} DNS lookups (the limit is {LOOKUP_LIMIT}): receivers "
                                    "return permerror; flatten includes", data)
    if not complete:
        return Check("spf", "unknown", "an included record could not be looked up", data)
    if voids > VOID_LIMIT:
        return Check("spf", "fail", f"{voids} lookups find nothing (the limit is {VOID_LIMIT})", data)
    terms, _ = parse_spf(record)
    if any(t.name == "all" and t.qualifier == "+" for t in terms):
        return Check("spf", "fail", "+all authorises every server on the internet; end with -all or ~all",
                     data)
    results = {ip: spf_eval(ip, domain, tree) for ip in sending_ips}
    if results:
        data["sending_ips"] = results
    if any(r == "unknown" for r in results.values()):
        return Check("spf", "unknown", "could not evaluate the record for the sending addresses", data)
    bad = {ip: r for ip, r in results.items() if r != "pass"}
    if bad:
        shown = ", ".join(f"{ip} ({r})" for ip, r in bad.items())
        return Check("spf", "fail", f"does not authorise the sending address(es) {shown}: add them "
                                    "(ip4:/ip6: or an include of the provider)", data)
    if any(t.name == "ptr" for t in terms):
        return Check("spf", "warn", f"uses the deprecated ptr mechanism ({lookups} lookups)", data)
    last = next((t for t in reversed(terms) if t.name == "all"), None)
    if last is None and not any(t.name == "redirect" for t in terms):
        return Check("spf", "warn", f"no all mechanism: unlisted servers get neutral; end with -all or "
                                    f"~all ({lookups} lookups)", data)
    return Check("spf", "ok", f"{record} ({lookups} lookup{'s' if lookups != 1 else ''})", data)


# ---------------------------------------------------------------- DKIM


def _tags(record: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in record.split(";"):
        k, sep, v = part.partition("=")
        if sep:
            out[k.strip().lower()] = re.sub(r"\s+", "", v) if k.strip().lower() == "p" else v.strip()
    return out


def dkim_key_bits(key_type: str, p: str) -> int | None:
    """The size of a published DKIM key in bits (None: it does not decode)."""
    try:
        der = base64.b64decode(p, validate=True)
    except (binascii.Error, ValueError):
        return None
    if key_type == "ed25519":
        return 256 if len(der) == 32 else None
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    try:
        key = load_der_public_key(der)
    except (ValueError, TypeError):
        return None
    return key.key_size if isinstance(key, rsa.RSAPublicKey) else None


def dkim_verdict(selector: str, domain: str, answer: Answer) -> Check:
    name = f"dkim:{selector}"
    where = f"{selector}._domainkey.{domain}"
    if not answer.known:
        return Check(name, "unknown", f"DKIM lookup failed: {answer.error}")
    recs = [v for v in answer.values if "p=" in v.replace(" ", "")] if answer.status == "ok" else []
    if not recs:
        return Check(name, "fail", f"no DKIM key at {where}: publish the selector's key, or fix "
                                   "dkim_selectors")
    if len(recs) > 1:
        return Check(name, "fail", f"{len(recs)} DKIM records at {where}: keep exactly one")
    tags = _tags(recs[0])
    if tags.get("v", "DKIM1") != "DKIM1":
        return Check(name, "fail", f"v={tags['v']} at {where}: must be DKIM1")
    p = tags.get("p", "")
    if not p:
        return Check(name, "fail", f"the key at {where} is revoked (empty p=)")
    ktype = tags.get("k", "rsa").lower()
    if ktype not in ("rsa", "ed25519"):
        return Check(name, "fail", f"unknown key type k={ktype} at {where}")
    bits = dkim_key_bits(ktype, p)
    if bits is None:
        return Check(name, "fail", f"the {ktype} key at {where} does not decode: republish it")
    data = {"key_type": ktype, "key_bits": bits}
    if ktype == "rsa" and bits < DKIM_MIN_BITS:
        return Check(name, "fail", f"{bits}-bit RSA key: too short, receivers ignore it; use "
                                   f"{DKIM_GOOD_BITS} bits", data)
    if ktype == "rsa" and bits < DKIM_GOOD_BITS:
        return Check(name, "warn", f"{bits}-bit RSA key: {DKIM_GOOD_BITS} bits is recommended", data)
    return Check(name, "ok", f"{ktype} {bits}-bit key" if ktype == "rsa" else "ed25519 key", data)


# ---------------------------------------------------------------- DMARC


def organizational_domain(domain: str) -> str:
    """The last two labels: an approximation of the organizational domain (RFC 7489
    uses the public suffix list; a sender under e.g. co.uk should publish DMARC at its
    own domain, which is looked up first)."""
    labels = _lower(domain).split(".")
    return ".".join(labels[-2:])


def dmarc_verdict(domain: str, answer: Answer, org_answer: Answer | None = None) -> Check:
    domain = _lower(domain)
    used, where = answer, f"_dmarc.{domain}"
    recs = [v for v in answer.values if re.match(r"(?i)^v\s*=\s*DMARC1\s*(;|$)", v.strip())] \
        if answer.status == "ok" else []
    if not answer.known:
        return Check("dmarc", "unknown", f"DMARC lookup failed: {answer.error}")
    inherited = False
    if not recs and org_answer is not None:
        if not org_answer.known:
            return Check("dmarc", "unknown", f"DMARC lookup failed: {org_answer.error}")
        used, where = org_answer, f"_dmarc.{organizational_domain(domain)}"
        recs = [v for v in used.values if re.match(r"(?i)^v\s*=\s*DMARC1\s*(;|$)", v.strip())] \
            if used.status == "ok" else []
        inherited = bool(recs)
    if not recs:
        return Check("dmarc", "fail", f"no DMARC record at _dmarc.{domain}: publish "
                                      "\"v=DMARC1; p=none; rua=mailto:...\" at least")
    if len(recs) > 1:
        return Check("dmarc", "fail", f"{len(recs)} DMARC records at {where}: receivers ignore them all; "
                                      "keep one")
    tags = _tags(recs[0])
    policy = tags.get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        return Check("dmarc", "fail", f"DMARC record at {where} has no valid p= (none, quarantine or "
                                      f"reject), got {tags.get('p')!r}")
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    if adkim not in ("r", "s") or aspf not in ("r", "s"):
        return Check("dmarc", "fail", f"DMARC record at {where}: adkim and aspf must be r or s")
    pct = tags.get("pct", "100")
    data: dict[str, Any] = {"policy": policy, "adkim": adkim, "aspf": aspf, "pct": int(pct) if
                            pct.isdigit() else pct, "record": recs[0]}
    if "sp" in tags:
        data["subdomain_policy"] = tags["sp"].lower()
    if inherited:
        data["from"] = where
        policy = tags.get("sp", policy).lower()
        data["policy"] = policy
    mode = f"p={policy}, adkim={adkim}, aspf={aspf}" + (f", pct={pct}" if pct != "100" else "") + \
        (f" (from {where})" if inherited else "")
    if policy == "none":
        return Check("dmarc", "warn", f"{mode}: monitoring only; quarantine or reject protects the domain",
                     data)
    return Check("dmarc", "ok", mode, data)


# ---------------------------------------------------------------- one domain


async def check_domain(resolver: DNS, domain: str, selectors: Sequence[str] = (),
                       sending_ips: Sequence[str] = (), now: float | None = None) -> DomainReport:
    """Every check of one domain, the lookups run together."""
    domain = _lower(domain)
    org = organizational_domain(domain)
    dkim_task = asyncio.gather(*(resolver.txt(f"{s}._domainkey.{domain}") for s in selectors))
    mx_a, spf_tree, dmarc_a = await asyncio.gather(
        resolver.mx(domain), gather_spf(resolver, domain, bool(sending_ips)),
        resolver.txt(f"_dmarc.{domain}"))
    dkim_as: list[Answer] = list(await dkim_task)
    org_a = None
    if org != domain and dmarc_a.known and not any(
            re.match(r"(?i)^v\s*=\s*DMARC1", v) for v in dmarc_a.values):
        org_a = await resolver.txt(f"_dmarc.{org}")
    checks = [mx_verdict(mx_a), spf_verdict(domain, spf_tree, sending_ips)]
    checks += [dkim_verdict(s, domain, a) for s, a in zip(selectors, dkim_as, strict=True)]
    checks.append(dmarc_verdict(domain, dmarc_a, org_a))
    return DomainReport(domain, time.time() if now is None else now, tuple(checks))


__all__ = ["DNS", "Answer", "Check", "DomainReport", "check_domain", "dkim_verdict", "dmarc_verdict",
           "gather_spf", "mx_verdict", "parse_resolver", "parse_spf", "spf_eval", "spf_verdict", "worst"]
