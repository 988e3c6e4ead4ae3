"""DNS authentication checks and blocklists against a real nsd on loopback (tests/rig/dns_zones.py),
and the pure verdict functions on their own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.rig.dns_server import BlackHole, DNSServer
from tests.rig.dns_zones import blocklists
from warmupd.blocklists import check_names, listing_verdict, query_name
from warmupd.dnscheck import (
    DNS,
    Answer,
    SpfTree,
    check_domain,
    dmarc_verdict,
    parse_resolver,
    parse_spf,
    spf_eval,
    spf_verdict,
)


def resolver(dns: DNSServer, timeout: float = 2.0) -> DNS:
    return DNS(f"127.0.0.1:{dns.port}", timeout=timeout)


async def test_each_test_domain_gets_each_checks_verdict(dns: DNSServer) -> None:
    r = resolver(dns)
    sel = ["google", "s1024"]
    good = await check_domain(r, "good.test", sel, ["127.0.0.2", "192.0.2.7"])
    checks = {c.name: c for c in good.checks}
    assert {k: c.verdict for k, c in checks.items()} == {
        "mx": "ok", "spf": "ok", "dkim:google": "ok", "dkim:s1024": "warn", "dmarc": "ok"}
    assert checks["dkim:google"].data["key_bits"] == 2048
    assert checks["dkim:s1024"].data["key_bits"] == 1024
    assert checks["spf"].data["lookups"] == 1
    # 192.0.2.7 passes through the include of the provider's record
    assert checks["spf"].data["sending_ips"] == {"127.0.0.2": "pass", "192.0.2.7": "pass"}
    assert checks["dmarc"].data["policy"] == "reject" and checks["dmarc"].data["adkim"] == "s"
    assert checks["dmarc"].data["aspf"] == "r"
    assert good.verdict == "warn"  # the 1024-bit key

    # an address the record does not authorise fails SPF, with the address and its result
    other = await check_domain(r, "good.test", [], ["198.51.100.9"])
    spf = next(c for c in other.checks if c.name == "spf")
    assert spf.verdict == "fail" and "198.51.100.9 (fail)" in spf.detail

    reports = {d: await check_domain(r, d, ["google"]) for d in
               ("nospf.test", "broken.test", "doubled.test", "toomany.test", "nomx.test")}
    v = {d: {c.name: c.verdict for c in rep.checks} for d, rep in reports.items()}
    assert v["nospf.test"] == {"mx": "ok", "spf": "fail", "dkim:google": "ok", "dmarc": "ok"}
    assert v["broken.test"]["spf"] == "fail" and v["broken.test"]["dmarc"] == "warn"
    assert v["doubled.test"]["spf"] == "fail" and v["doubled.test"]["dmarc"] == "fail"
    assert v["toomany.test"]["spf"] == "fail"
    assert v["nomx.test"] == {"mx": "fail", "spf": "ok", "dkim:google": "fail", "dmarc": "fail"}
    detail = {d: {c.name: c.detail for c in rep.checks} for d, rep in reports.items()}
    assert "no SPF record" in detail["nospf.test"]["spf"]
    assert "999.1.1.1" in detail["broken.test"]["spf"] and "foo:bar" in detail["broken.test"]["spf"]
    assert "2 SPF records" in detail["doubled.test"]["spf"]
    assert "11 DNS lookups (the limit is 10)" in detail["toomany.test"]["spf"]
    assert "no MX record" in detail["nomx.test"]["mx"]
    assert "no DKIM key at google._domainkey.nomx.test" in detail["nomx.test"]["dkim:google"]
    assert "p=none" in detail["broken.test"]["dmarc"]
    assert all(rep.verdict == "fail" for d, rep in reports.items() if d != "nospf.test") and \
        reports["nospf.test"].verdict == "fail"


async def test_a_resolver_that_never_answers_gives_unknown_not_a_pass_or_not_listed() -> None:
    hole = BlackHole()
    try:
        r = DNS(f"127.0.0.1:{hole.port}", timeout=0.3)
        rep = await check_domain(r, "good.test", ["google"])
        assert {c.verdict for c in rep.checks} == {"unknown"}
        assert rep.verdict == "unknown"
        assert "within 0.3 s" in next(c for c in rep.checks if c.name == "mx").detail
        listings = await check_names(r, ["127.0.0.2"], ["listed.test"], ["bl.test"], ["dbl.test"], now=1.0)
        assert [(x.name, x.verdict) for x in listings] == [("127.0.0.2", "unknown"), ("listed.test", "unknown")]
        assert hole.queries > 0
    finally:
        hole.close()


async def test_blocklist_listing_then_delisting(dns: DNSServer) -> None:
    r = resolver(dns)
    found = await check_names(r, ["127.0.0.2", "127.0.0.3", "127.0.0.9"], ["listed.test", "good.test"],
                              ["bl.test"], ["dbl.test"], now=1.0)
    by = {x.name: x for x in found}
    assert by["127.0.0.2"].verdict == "listed" and "listed for testing" in by["127.0.0.2"].detail
    assert by["127.0.0.3"].verdict == "clear"
    assert by["127.0.0.9"].verdict == "unknown" and "refused" in by["127.0.0.9"].detail
    assert by["listed.test"].verdict == "listed" and "spam domain" in by["listed.test"].detail
    assert by["good.test"].verdict == "clear"
    for name, records in blocklists(False).items():
        dns.set_zone(name, records)
    dns.reload()
    again = await check_names(r, ["127.0.0.2"], ["listed.test"], ["bl.test"], ["dbl.test"], now=2.0)
    assert [(x.name, x.verdict) for x in again] == [("127.0.0.2", "clear"), ("listed.test", "clear")]


def test_spf_parser_and_evaluation_without_a_network() -> None:
    terms, problems = parse_spf("v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 a:mail.x.test/28 mx//64 "
                                "include:_spf.x.test ~all redirect=y.test")
    assert not problems
    assert [(t.qualifier, t.name) for t in terms] == [
        ("+", "ip4"), ("+", "ip6"), ("+", "a"), ("+", "mx"), ("+", "include"), ("~", "all"), ("", "redirect")]
    assert terms[2].value == "mail.x.test" and terms[2].cidr4 == 28 and terms[3].cidr6 == 64
    _, bad = parse_spf("v=spf1 ip4:1.2.3 exists ipv4:1.2.3.4 redirect=a.test redirect=b.test")
    assert len(bad) == 4
    tree = SpfTree(txt={"x.test": Answer("ok", ("v=spf1 a include:y.test -all",)),
                        "y.test": Answer("ok", ("v=spf1 ip4:203.0.113.0/24 ?all",))},
                   hosts={"x.test": Answer("ok", ("198.51.100.1",))})
    assert spf_eval("198.51.100.1", "x.test", tree) == "pass"
    assert spf_eval("203.0.113.9", "x.test", tree) == "pass"
    assert spf_eval("192.0.2.1", "x.test", tree) == "fail"
    assert spf_verdict("x.test", tree, ["198.51.100.1"]).verdict == "ok"
    # an include that cannot be looked up is unknown, never a pass
    tree.txt["y.test"] = Answer("error", error="timeout")
    assert spf_eval("203.0.113.9", "x.test", tree) == "unknown"
    assert spf_verdict("x.test", tree).verdict == "unknown"
    assert spf_verdict("x.test", SpfTree(txt={"x.test": Answer("ok", ("v=spf1 +all",))})).verdict == "fail"


def test_dmarc_and_blocklist_verdicts_without_a_network() -> None:
    quarantine = dmarc_verdict("a.test", Answer("ok", ("v=DMARC1; p=quarantine; aspf=s; pct=50",)))
    assert quarantine.verdict == "ok" and quarantine.data["aspf"] == "s" and quarantine.data["pct"] == 50
    # a subdomain without its own record inherits the organizational domain's (sp= first)
    inherited = dmarc_verdict("mail.b.test", Answer("nxdomain"), Answer("ok", ("v=DMARC1; p=reject; sp=none",)))
    assert inherited.verdict == "warn" and inherited.data["from"] == "_dmarc.b.test"
    assert dmarc_verdict("c.test", Answer("ok", ("v=DMARC1; p=maybe",))).verdict == "fail"
    assert dmarc_verdict("c.test", Answer("error", error="x")).verdict == "unknown"
    assert query_name("192.0.2.10", "zen.spamhaus.org", "ip") == "10.2.0.192.zen.spamhaus.org"
    assert query_name("2001:db8::1", "bl.test", "ip").startswith("1.0.0.0.0.0.0.0.0.0.0.0.0")
    assert listing_verdict("x", "z", "ip", Answer("ok", ("127.255.255.254",))).verdict == "unknown"
    assert listing_verdict("x", "z", "ip", Answer("ok", ("10.0.0.1",))).verdict == "unknown"
    assert listing_verdict("x", "z", "ip", Answer("ok", ("127.0.0.4",))).verdict == "listed"
    assert listing_verdict("x", "z", "ip", Answer("nxdomain")).verdict == "clear"


@pytest.mark.parametrize("spec, want", [("127.0.0.1:5353", ("127.0.0.1", 5353)), ("::1", ("::1", 53)),
                                        ("[::1]:5300", ("::1", 5300)), ("", None)])
def test_resolver_setting(spec: str, want: tuple[str, int] | None) -> None:
    assert parse_resolver(spec) == want


@pytest.mark.parametrize("spec", ["localhost:53", "127.0.0.1:x", "127.0.0.1:70000"])
def test_resolver_setting_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_resolver(spec)


def test_resolver_off_looks_nothing_up(tmp_path: Path) -> None:
    """`resolver = "off"` (a closed network, the demo): the config takes it, and
    `warmupd check --dns` says so instead of asking the system's resolver."""
    (tmp_path / "config.toml").write_text("\n".join([
        "[daemon]", 'resolver = "off"', "",
        "[[accounts]]", 'email = "a@nowhere.test"', 'start_date = "2026-12-01"',
        'smtp = { host = "127.0.0.1", password = "x" }', "",
        "[[accounts]]", 'email = "b@nowhere.test"', 'start_date = "2026-12-01"',
        'smtp = { host = "127.0.0.1", password = "y" }', ""]))
    done = subprocess.run([sys.executable, "-m", "warmupd.cli", "check", "--config", str(tmp_path / "config.toml"),
                           "--dns"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert 'DNS and blocklist checks are off (daemon.resolver = "off")' in done.stdout
    assert "nowhere.test" not in done.stdout.split("DNS and blocklist")[1]
