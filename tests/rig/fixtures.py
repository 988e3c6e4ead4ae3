"""pytest fixtures for the mail rigs; tests/conftest.py does ``from tests.rig.fixtures import *``.

* ``smtp_server`` (function): in-process ``SMTPServer`` with alice/bob/carol.
* ``mailrig`` (session): Dovecot + SMTP front (``MailRig``). Skipped when Dovecot
  is not installed, except under CI (``CI=true``), where that is an error:
  run ``tests/rig/ensure_packages.sh`` first.
* ``clean_mailrig`` (function): the session ``mailrig`` with Dovecot running,
  every mailbox emptied and SMTP faults/records cleared.
* ``oauth_server`` (session): the OAuth 2.0 authorization server
  (``tests.rig.oauth_server.OAuthServer``, access tokens live an hour, refresh
  tokens rotate); ``clean_oauth_server`` (function) is it running (restarted on
  its port if a test stopped it) after ``reset()``: no clients, tokens, stats or
  faults, the settings above again.
* ``oauth_mailrig`` (session): a second ``MailRig`` with its own Dovecot whose IMAP
  and SMTP front take XOAUTH2/OAUTHBEARER tokens, checked at ``oauth_server``'s
  introspection URL (same skip/fail rules as ``mailrig``); ``clean_oauth_mailrig``
  (function) is it cleaned as ``clean_mailrig`` is, with ``oauth_server`` reset.
* ``dns_rig`` (session): nsd on loopback serving tests/rig/dns_zones.py's zones
  (``DNSServer``; ``dns_rig.port``). Skipped when nsd is missing, except under CI.
* ``dns`` (function): the session ``dns_rig`` with the blocklist zones as listed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from .dns_server import DNSServer, nsd_binary
from .mailrig import DEFAULT_USERS, MailRig, dovecot_binary
from .oauth_server import OAuthServer
from .smtp_server import SMTPServer

if TYPE_CHECKING:
    from tests.daemon_helpers import DaemonFactory

__all__ = [
    "RIG_USERS",
    "clean_mailrig",
    "clean_oauth_mailrig",
    "clean_oauth_server",
    "daemons",
    "dns",
    "dns_rig",
    "mailrig",
    "oauth_mailrig",
    "oauth_server",
    "smtp_server",
]

RIG_USERS: dict[str, str] = dict(DEFAULT_USERS)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture
def smtp_server() -> Iterator[SMTPServer]:
    server = SMTPServer(users=RIG_USERS).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def daemons() -> Iterator[DaemonFactory]:
    """Start ``warmupd run`` subprocesses; every one is stopped (or killed) at teardown."""
    from tests.daemon_helpers import DaemonFactory

    factory = DaemonFactory()
    try:
        yield factory
    finally:
        factory.close()


def _need_dovecot() -> None:
    """Skip (fail under CI) when the Dovecot rig cannot run here."""
    if dovecot_binary() is None:
        reason = "dovecot is not installed (run tests/rig/ensure_packages.sh as root)"
        if _in_ci():
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    if os.geteuid() != 0:
        reason = "the Dovecot mail rig needs root"
        if _in_ci():
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)


def _clean(rig: MailRig) -> MailRig:
    rig.ensure_imap()
    rig.smtp.faults.reset()
    rig.smtp.recorder.clear()
    rig.purge()
    return rig


@pytest.fixture(scope="session")
def mailrig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailRig]:
    _need_dovecot()
    rig = MailRig(tmp_path_factory.mktemp("mailrig"), users=RIG_USERS).start()
    try:
        yield rig
    finally:
        rig.stop()


@pytest.fixture
def clean_mailrig(mailrig: MailRig) -> MailRig:
    return _clean(mailrig)


@pytest.fixture(scope="session")
def oauth_server() -> Iterator[OAuthServer]:
    server = OAuthServer(access_ttl=3600.0, rotate_refresh_tokens=True).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clean_oauth_server(oauth_server: OAuthServer) -> OAuthServer:
    oauth_server.ensure_running()
    oauth_server.reset()
    return oauth_server


@pytest.fixture(scope="session")
def oauth_mailrig(
    tmp_path_factory: pytest.TempPathFactory, oauth_server: OAuthServer
) -> Iterator[MailRig]:
    _need_dovecot()
    rig = MailRig(
        tmp_path_factory.mktemp("oauth_mailrig"),
        users=RIG_USERS,
        oauth_introspection_url=oauth_server.introspection_url,
    ).start()
    try:
        yield rig
    finally:
        rig.stop()


@pytest.fixture
def clean_oauth_mailrig(oauth_mailrig: MailRig, oauth_server: OAuthServer) -> MailRig:
    oauth_server.ensure_running()
    oauth_server.reset()
    return _clean(oauth_mailrig)


@pytest.fixture(scope="session")
def dns_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DNSServer]:
    from .dns_zones import zones

    if nsd_binary() is None or os.geteuid() != 0:
        reason = ("nsd is not installed (run tests/rig/ensure_packages.sh as root)" if nsd_binary() is None
                  else "the nsd DNS rig needs root")
        if _in_ci():
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    server = DNSServer(tmp_path_factory.mktemp("dnsrig"))
    for name, records in zones().items():
        server.set_zone(name, records)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dns(dns_rig: DNSServer) -> DNSServer:
    from .dns_zones import blocklists

    if not dns_rig.running():
        dns_rig.start()
    if dns_rig.zones.get("bl.test") != blocklists(True)["bl.test"]:
        for name, records in blocklists(True).items():
            dns_rig.set_zone(name, records)
        dns_rig.reload()
    return dns_rig
