"""The reputation checks in the running daemon (``warmupd run`` against the nsd rig):
`warmupd check --dns`, the `dns` and `health` of `warmupctl accounts`, a blocklist
listing that pauses and a delisting that resumes, dns_required holding the ramp."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.daemon_helpers import REPO_ROOT, DaemonFactory, utc_today, wait_until
from tests.rig.dns_server import DNSServer, txt
from tests.rig.dns_zones import blocklists, zones

GOOD, NOSPF, PLAIN = "nora.lind@good.test", "sam@nospf.test", "carol@warmup.test"


def write(tmp: Path, dns: DNSServer, extra_daemon: str = "") -> tuple[Path, Path]:
    sock = Path(tempfile.mkdtemp(prefix="wr-", dir="/tmp")) / "s"
    start = utc_today().replace(year=utc_today().year + 1).isoformat()
    accounts = ""
    for email, extra in ((GOOD, 'dkim_selectors = ["google", "s1024"]\nsending_ips = ["127.0.0.2"]'),
                         (NOSPF, 'dkim_selectors = ["google"]\ndns_required = true'),
                         (PLAIN, 'dkim_selectors = ["google"]')):
        accounts += (f'[[accounts]]\nemail = "{email}"\nstart_date = "{start}"\n{extra}\n'
                     f'smtp = {{ host = "127.0.0.1", port = 2, security = "none", password = "pw" }}\n\n')
    cfg = tmp / "config.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "state"\nsocket = "{sock}"\nlog_format = "json"\n'
                   f'resolver = "127.0.0.1:{dns.port}"\ndns_timeout = "1s"\nip_blocklists = ["bl.test"]\n'
                   f'domain_blocklists = ["dbl.test"]\n{extra_daemon}\n[defaults]\ntimezone = "UTC"\n\n'
                   + accounts)
    return cfg, sock


def request(sock: Path, cmd: str, **args: Any) -> Any:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(sock))
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply = json.loads(buf)
    assert reply["ok"], reply
    return reply["result"]


def by_email(sock: Path) -> dict[str, dict[str, Any]]:
    return {a["email"]: a for a in request(sock, "accounts")}


def test_check_dns_prints_each_domains_verdicts_and_exits_0(dns: DNSServer, tmp_path: Path) -> None:
    cfg, _ = write(tmp_path, dns)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    p = subprocess.run([sys.executable, "-m", "warmupd.cli", "check", "--dns", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    rows = {tuple(line.split()[:3]) for line in p.stdout.splitlines() if line.strip()}
    for want in [("good.test", "spf", "ok"), ("good.test", "dkim:s1024", "warn"), ("good.test", "dmarc", "ok"),
                 ("nospf.test", "spf", "fail"), ("nospf.test", "overall", "fail"),
                 ("warmup.test", "overall", "ok"), ("127.0.0.2", "bl.test", "listed"),
                 ("127.0.0.1", "bl.test", "clear"), ("good.test", "dbl.test", "clear")]:
        assert want in rows, p.stdout
    assert "1024-bit RSA key: 2048 bits is recommended" in p.stdout
    assert "no SPF record at nospf.test" in p.stdout


def test_listing_pauses_delisting_resumes_and_dns_required_holds(
        dns: DNSServer, daemons: DaemonFactory, tmp_path: Path) -> None:
    cfg, sock = write(tmp_path, dns)
    d = daemons(cfg, tmp_path, env={"WARMUPD_BLOCKLIST_INTERVAL": "1", "WARMUPD_DNS_INTERVAL": "1",
                                    "WARMUPD_HEALTH_INTERVAL": "1"})
    try:
        accs = wait_until(lambda: (a := by_email(sock))[GOOD]["paused"] and a[NOSPF]["hold"] and a, 15,
                          "the listing pause and the DNS hold")
        good, nospf, plain = accs[GOOD], accs[NOSPF], accs[PLAIN]
        assert good["paused"].startswith("blocklisted: 127.0.0.2 is listed on bl.test")
        assert "listed for testing" in good["paused"]
        assert good["dns"]["checks"]["spf"]["verdict"] == "ok"
        assert good["dns"]["checks"]["dkim:s1024"]["key_bits"] == 1024
        assert good["dns"]["checks"]["dmarc"]["policy"] == "reject"
        assert good["dns"]["blocklists"]["verdict"] == "listed"
        assert good["name"] == "Nora Lind"
        assert nospf["dns"]["verdict"] == "fail"
        assert nospf["hold"]["reason"].startswith("dns: spf: no SPF record at nospf.test")
        assert plain["dns"]["verdict"] == "ok" and plain["hold"] is None and plain["paused"] is None
        health = wait_until(lambda: by_email(sock)[GOOD]["health"], 10, "a health score")
        assert health["blocklists"] == "listed" and health["score"] <= 30
        metrics = request(sock, "metrics")
        assert 'warmupd_blocklist_listed{name="127.0.0.2",zone="bl.test"} 1' in metrics
        assert 'warmupd_dns_check{domain="nospf.test",check="spf",verdict="fail"} 1' in metrics
        status = request(sock, "status")
        assert "127.0.0.2 on bl.test" in status["reputation"]["listed"]
        assert d.find("blocklisted", name="127.0.0.2", zone="bl.test")

        # delisted, and nospf.test publishes SPF: both are noticed on the next checks
        for name, records in blocklists(False).items():
            dns.set_zone(name, records)
        dns.set_zone("nospf.test", [*zones()["nospf.test"], "@ IN TXT " + txt("v=spf1 ip4:127.0.0.1 -all")])
        dns.reload()
        accs = wait_until(lambda: (a := by_email(sock)) and not a[GOOD]["paused"] and not a[NOSPF]["hold"]
                          and a, 15, "the resume and the hold lifted")
        assert accs[GOOD]["dns"]["blocklists"]["verdict"] == "clear"
        assert accs[NOSPF]["dns"]["checks"]["spf"]["verdict"] == "ok"
        assert d.find("account resumed after delisting", account=GOOD)
        assert d.find("delisted", name="127.0.0.2")
        assert not d.errors()
    finally:
        dns.set_zone("nospf.test", zones()["nospf.test"])
        dns.reload()
