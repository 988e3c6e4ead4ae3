"""pytest fixtures for the mail rigs; tests/conftest.py does ``from tests.rig.fixtures import *``.

* ``smtp_server`` (function): in-process ``SMTPServer`` with alice/bob/carol.
* ``mailrig`` (session): Dovecot + SMTP front (``MailRig``). Skipped when Dovecot
  is not installed, except under CI (``CI=true``), where that is an error:
  run ``tests/rig/ensure_packages.sh`` first.
* ``clean_mailrig`` (function): the session ``mailrig`` with Dovecot running,
  every mailbox emptied and SMTP faults/records cleared.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from .mailrig import DEFAULT_USERS, MailRig, dovecot_binary
from .smtp_server import SMTPServer

if TYPE_CHECKING:
    from tests.daemon_helpers import DaemonFactory

__all__ = ["RIG_USERS", "clean_mailrig", "daemons", "mailrig", "smtp_server"]

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


@pytest.fixture(scope="session")
def mailrig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailRig]:
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
    rig = MailRig(tmp_path_factory.mktemp("mailrig"), users=RIG_USERS).start()
    try:
        yield rig
    finally:
        rig.stop()


@pytest.fixture
def clean_mailrig(mailrig: MailRig) -> MailRig:
    mailrig.ensure_imap()
    mailrig.smtp.faults.reset()
    mailrig.smtp.recorder.clear()
    mailrig.purge()
    return mailrig
