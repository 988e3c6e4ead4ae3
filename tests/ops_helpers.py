"""Helpers for tests/test_daemon_ops.py: the real ``warmupd run`` as a subprocess, operated
like a Linux daemon (signals, sd_notify, the control socket, warmupctl).

* ``write_config``: config.toml in tmp_path for alice/bob/carol@warmup.test on the rig's SMTP
  server; accounts start today, so the daemon's own planner plans the rest of today in a
  two-hour window covering now (spread thin: those sends do not fire during a test);
* ``seed``: plan exact instants for an account (soon after start) before the daemon runs,
  so the test sees real sends at known times;
* the subprocess itself is ``tests.daemon_helpers.DaemonProc`` with ``split_stderr=True``
  (the ``warmupd`` fixture of tests/test_daemon_ops.py);
* ``ctl``: run ``warmupctl`` as a subprocess;
* ``NotifyListener``: a bound AF_UNIX SOCK_DGRAM socket playing systemd's NOTIFY_SOCKET.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.daemon_helpers import INHERITED_ENV, utc_today, wait_until, window_covering_now  # noqa: F401 (re-exported)
from tests.daemon_helpers import skip_near_midnight as _skip_near_midnight
from tests.rig.fixtures import RIG_USERS

REPO_ROOT = Path(__file__).resolve().parents[1]
ALICE, BOB, CAROL = "alice@warmup.test", "bob@warmup.test", "carol@warmup.test"
PASSWORDS = tuple(RIG_USERS[e] for e in (ALICE, BOB, CAROL))  # alice-pw, bob-pw, carol-pw
ALL_WEEKDAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


# ---------------------------------------------------------------- time


def skip_near_midnight(need: float = 300.0) -> None:
    _skip_near_midnight(need)


# ---------------------------------------------------------------- config


@dataclass
class Setup:
    """Where one daemon's files live."""

    tmp_path: Path
    config: Path
    socket: Path
    port: int

    @property
    def db(self) -> Path:
        return self.tmp_path / "state" / "warmupd.db"


def short_dir() -> Path:
    """A short folder in /tmp: sun_path holds 107 bytes at most."""
    return Path(tempfile.mkdtemp(prefix="wdops-", dir="/tmp"))


def config_text(setup: Setup, accounts: Sequence[str] = (ALICE, BOB), *,
                overrides: Mapping[str, Sequence[str]] | None = None,
                ramp_start: int = 12, extra_daemon: Sequence[str] = ()) -> str:
    """The TOML for ``accounts``; ``overrides`` adds raw lines to an account's table."""
    overrides = overrides or {}
    start = utc_today().isoformat()
    lines = [
        "[daemon]",
        'state_dir = "state"',
        f"socket = {json.dumps(str(setup.socket))}",
        'grace = "30s"',
        'log_format = "json"',
        'log_level = "info"',
        'shutdown_timeout = "10s"',
        *extra_daemon,
        "",
        "[defaults]",
        'timezone = "UTC"',
        f"weekdays = {json.dumps(ALL_WEEKDAYS)}",
        'jitter = "1s"',
        'micro_jitter = "0s"',
        'min_gap = "2s"',
        "max_attempts = 3",
        "",
        "[defaults.periods]",
        f'peak = {{ windows = ["{window_covering_now()}"], weight = 1.0 }}',
        "",
        "[defaults.ramp]",
        f"start = {ramp_start}",
        "step = 2",
        "max = 40",
        "",
    ]
    for email in accounts:
        user = email.split("@")[0]
        smtp = (f'{{ host = "127.0.0.1", port = {setup.port}, security = "none", '
                f'username = "{email}", password_file = "{user}.pw", timeout = "10s" }}')
        lines += ["[[accounts]]", f'email = "{email}"', f'start_date = "{start}"',
                  f"smtp = {smtp}", *overrides.get(email, ()), ""]
    return "\n".join(lines)


def make_setup(tmp_path: Path, port: int, accounts: Sequence[str] = (ALICE, BOB),
               **kw: Any) -> Setup:
    for email in (ALICE, BOB, CAROL):  # every password file exists: accounts come and go
        pw = tmp_path / f"{email.split('@')[0]}.pw"
        pw.write_text(RIG_USERS[email] + "\n")
        pw.chmod(0o600)
    setup = Setup(tmp_path, tmp_path / "config.toml", short_dir() / "warmupd.sock", port)
    write_config(setup, accounts, **kw)
    return setup


def write_config(setup: Setup, accounts: Sequence[str] = (ALICE, BOB), **kw: Any) -> None:
    setup.config.write_text(config_text(setup, accounts, **kw))


# ---------------------------------------------------------------- seeding sends


@dataclass(frozen=True)
class _Seed:
    at: float
    period: str
    recipient: str
    message_id: str


def seed(setup: Setup, email: str, instants: Sequence[float], recipient: str) -> list[int]:
    """Plan exactly these instants for ``email`` today, before the daemon starts (the daemon
    never plans an account-day again once it has a plan). Returns the send ids."""
    from warmupd.store import Store

    day = utc_today().isoformat()
    seeds = [_Seed(round(t, 3), "peak", recipient, f"<ops.{uuid.uuid4().hex}@warmup.test>")
             for t in sorted(instants)]

    async def run() -> list[tuple[int, int, str]]:
        setup.db.parent.mkdir(parents=True, exist_ok=True)
        store = await Store.open(setup.db)
        try:
            return await store.insert_plan([(email, day, 1, len(seeds), seeds)])
        finally:
            await store.close()

    return sorted(ident for _, ident, _ in asyncio.run(run()))


# ---------------------------------------------------------------- warmupctl


@dataclass
class CtlResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def _ctl_argv() -> list[str]:
    script = Path(sys.executable).parent / "warmupctl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "warmupd.ctl"]


def ctl(setup: Setup, *args: str, timeout: float = 20.0) -> CtlResult:
    """``warmupctl --config CONFIG ARGS...``."""
    env = {k: v for k, v in os.environ.items() if k not in INHERITED_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    p = subprocess.run([*_ctl_argv(), "--config", str(setup.config), *args], capture_output=True,
                       text=True, timeout=timeout, env=env, cwd=setup.tmp_path)
    return CtlResult(p.returncode, p.stdout, p.stderr)


def ctl_json(setup: Setup, *args: str) -> Any:
    r = ctl(setup, *args, "--json")
    assert r.code == 0, f"warmupctl {' '.join(args)} --json: exit {r.code}: {r.err}"
    return r.json()


# ---------------------------------------------------------------- raw control clients


def raw_request(path: Path, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, return the first reply line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon may hang up before reading it all; its reply is already there
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf.split(b"\n", 1)[0]


# ---------------------------------------------------------------- sd_notify


class NotifyListener:
    """A bound AF_UNIX datagram socket; a thread collects (monotonic time, fields) pairs."""

    def __init__(self, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._dir: Path | None = None
        if abstract:
            name = f"warmupd-ops-{uuid.uuid4().hex}"
            self.sock.bind(b"\0" + name.encode())
            self.address = "@" + name
        else:
            self._dir = short_dir()
            path = self._dir / "notify.sock"
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            with self._cond:
                self.messages.append((time.monotonic(), fields))
                self._cond.notify_all()

    def snapshot(self) -> list[dict[str, str]]:
        with self._cond:
            return [m for _, m in self.messages]

    def wait_for(self, pred: Callable[[dict[str, str]], bool], timeout: float = 10.0,
                 after: int = 0) -> int:
        """Wait for a message (at index >= ``after``) matching ``pred``; returns its index."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(after, len(self.messages)):
                    if pred(self.messages[i][1]):
                        return i
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching notification within {timeout} s; got "
                                         f"{[m for _, m in self.messages]}")
                self._cond.wait(left)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


