"""The test zones the DNS rig serves (tests/rig/dns_server.py), one domain per case.

| domain          | MX      | SPF                                   | DKIM (selectors)               | DMARC |
|-----------------|---------|---------------------------------------|--------------------------------|-------|
| good.test       | yes     | ip4:127.0.0.2 + include, -all         | google 2048-bit, s1024 1024    | reject, adkim=s |
| nospf.test      | yes     | none (only a verification TXT)        | google                         | quarantine |
| broken.test     | yes     | syntax errors                         | -                              | none |
| doubled.test    | yes     | two records                           | -                              | missing |
| toomany.test    | yes     | 11 includes (over the 10-lookup limit) | -                             | reject |
| nomx.test       | none    | good                                  | google missing                 | missing |
| warmup.test     | yes     | ip4:127.0.0.1, -all                   | google 2048-bit                | quarantine |

Blocklists: ``bl.test`` (addresses) lists 127.0.0.2; ``dbl.test`` (domains) lists
listed.test. ``BLOCKLISTS_CLEAR`` is the same zones with nothing listed.
"""

from __future__ import annotations

import base64
from functools import lru_cache

from .dns_server import txt


@lru_cache(maxsize=4)
def dkim_public(bits: int) -> str:
    """A fresh RSA public key of ``bits`` bits as DKIM's p= (base64 DER SubjectPublicKeyInfo)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def _dkim(bits: int) -> str:
    return txt(f"v=DKIM1; k=rsa; p={dkim_public(bits)}")


def zones() -> dict[str, list[str]]:
    mx = ["@ IN MX 10 mx", "mx IN A 127.0.0.10"]
    z: dict[str, list[str]] = {
        "good.test": [*mx, "@ IN TXT " + txt("v=spf1 ip4:127.0.0.2 include:_spf.provider.test -all"),
                      "@ IN TXT " + txt("google-site-verification=abc"),
                      "google._domainkey IN TXT " + _dkim(2048),
                      "s1024._domainkey IN TXT " + _dkim(1024),
                      "_dmarc IN TXT " + txt("v=DMARC1; p=reject; adkim=s; rua=mailto:d@good.test")],
        "provider.test": ["_spf IN TXT " + txt("v=spf1 ip4:192.0.2.0/24 ~all")],
        "nospf.test": [*mx, "@ IN TXT " + txt("google-site-verification=xyz"),
                       "google._domainkey IN TXT " + _dkim(2048),
                       "_dmarc IN TXT " + txt("v=DMARC1; p=quarantine")],
        "broken.test": [*mx, "@ IN TXT " + txt("v=spf1 ip4:999.1.1.1 foo:bar -all"),
                        "_dmarc IN TXT " + txt("v=DMARC1; p=none")],
        "doubled.test": [*mx, "@ IN TXT " + txt("v=spf1 ip4:127.0.0.2 -all"),
                         "@ IN TXT " + txt("v=spf1 include:_spf.provider.test ~all")],
        "toomany.test": [*mx, "@ IN TXT " + txt("v=spf1 " + " ".join(f"include:i{i}.toomany.test"
                                                                      for i in range(11)) + " -all"),
                         *(f"i{i} IN TXT " + txt(f"v=spf1 ip4:198.51.100.{i} -all") for i in range(11)),
                         "_dmarc IN TXT " + txt("v=DMARC1; p=reject")],
        "nomx.test": ["@ IN A 127.0.0.20", "@ IN TXT " + txt("v=spf1 ip4:127.0.0.2 -all")],
        "warmup.test": [*mx, "@ IN TXT " + txt("v=spf1 ip4:127.0.0.1 -all"),
                        "google._domainkey IN TXT " + _dkim(2048),
                        "_dmarc IN TXT " + txt("v=DMARC1; p=quarantine")],
        **blocklists(listed=True),
    }
    return z


def blocklists(listed: bool) -> dict[str, list[str]]:
    if not listed:
        return {"bl.test": [], "dbl.test": []}
    return {"bl.test": ["2.0.0.127 IN A 127.0.0.2", "2.0.0.127 IN TXT " + txt("listed for testing"),
                        # Spamhaus's "query refused" code: the answer means "unknown"
                        "9.0.0.127 IN A 127.255.255.254"],
            "dbl.test": ["listed.test IN A 127.0.1.2", "listed.test IN TXT " + txt("spam domain")]}
