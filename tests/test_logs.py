"""Logging tests: run snippets in a subprocess whose stdout is a pipe (not a TTY)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECRET = 's3cr3t-Pa55"wörd'  # quote and non-ASCII: JSON escapes them, redaction must not care
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

PRELUDE = f"""
import asyncio, logging, sys, threading, warnings
import structlog
from warmupd.logs import configure_logging, get_logger, register_secret
SECRET = {SECRET!r}
"""


def run(body: str, *, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        timeout=60,
    )


def json_lines(proc: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    """Every line of stdout AND stderr must be a JSON object with the core keys."""
    events = []
    for line in (proc.stdout + proc.stderr).splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            pytest.fail(
                f"non-JSON output line: {line!r}\nstdout={proc.stdout}\nstderr={proc.stderr}"
            )
        assert isinstance(obj, dict)
        assert {"timestamp", "level", "event"} <= obj.keys(), obj
        assert TS_RE.match(str(obj["timestamp"])), obj["timestamp"]
        events.append(obj)
    return events


def by_event(events: list[dict[str, object]], event: str) -> dict[str, object]:
    matches = [e for e in events if event in str(e["event"])]
    assert matches, f"no event {event!r} in {events}"
    return matches[0]


def test_everything_is_json_and_redacted() -> None:
    proc = run(
        """
        configure_logging()  # auto + piped stdout -> JSON
        register_secret(SECRET)
        log = get_logger("warmupd.sender").bind(account="alice@warmup.test")
        structlog.contextvars.bind_contextvars(send_id=42)
        log.info("send_state", state="sending", message_id="<m1@warmup.test>", pw=SECRET)
        logging.getLogger("aiosmtplib").warning("AUTH PLAIN failed for %s with %s", "alice", SECRET)
        warnings.warn("old option " + SECRET, DeprecationWarning, stacklevel=1)
        warnings.warn("something odd")
        try:
            raise ValueError("login rejected: " + SECRET)
        except ValueError:
            log.exception("smtp_error")
        try:
            1 / 0
        except ZeroDivisionError:
            logging.getLogger("aiosqlite").error("db op failed", exc_info=True)

        async def main():
            loop = asyncio.get_running_loop()
            loop.call_exception_handler({"message": "loop trouble", "exception": OSError("x")})
        asyncio.run(main())

        t = threading.Thread(target=lambda: 1 / 0)
        t.start(); t.join()
        raise RuntimeError("fatal " + SECRET)
        """
    )
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert SECRET not in out
    assert json.dumps(SECRET) not in out and json.dumps(SECRET)[1:-1] not in out
    assert "***" in out
    events = json_lines(proc)

    send = by_event(events, "send_state")
    assert send["level"] == "info"
    assert send["account"] == "alice@warmup.test"
    assert send["send_id"] == 42
    assert send["message_id"] == "<m1@warmup.test>"
    assert send["pw"] == "***"

    smtp = by_event(events, "AUTH PLAIN failed")
    assert smtp["level"] == "warning" and smtp["logger"] == "aiosmtplib"
    assert smtp["event"] == "AUTH PLAIN failed for alice with ***"

    assert by_event(events, "old option")["level"] == "warning"
    assert by_event(events, "something odd")["logger"] == "py.warnings"

    exc = by_event(events, "smtp_error")
    assert exc["level"] == "error"
    assert "Traceback" in str(exc["exception"])
    assert "ValueError: login rejected: ***" in str(exc["exception"])

    assert "ZeroDivisionError" in str(by_event(events, "db op failed")["exception"])
    assert by_event(events, "loop trouble")["logger"] == "asyncio"
    assert "ZeroDivisionError" in str(by_event(events, "uncaught exception in thread")["exception"])
    fatal = next(e for e in events if e["event"] == "uncaught exception")
    assert fatal["level"] == "critical" and "RuntimeError: fatal ***" in str(fatal["exception"])


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("debug", {"d", "i", "w", "e", "lib-d", "lib-i", "lib-w"}),
        ("info", {"i", "w", "e", "lib-i", "lib-w"}),
        ("WARNING", {"w", "e", "lib-w"}),
        ("error", {"e"}),
    ],
)
def test_level_filtering(level: str, expected: set[str]) -> None:
    proc = run(
        f"""
        configure_logging("json", {level!r})
        log = get_logger()
        log.debug("d"); log.info("i"); log.warning("w"); log.error("e")
        lib = logging.getLogger("aioimaplib")
        lib.debug("lib-d"); lib.info("lib-i"); lib.warning("lib-w")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert {str(e["event"]) for e in json_lines(proc)} == expected


def test_reconfigure_at_runtime() -> None:
    proc = run(
        """
        configure_logging("json", "info")
        log = get_logger("warmupd.x")
        log.info("first", n=1)
        configure_logging("console", "warning")  # a config reload
        log.info("hidden")
        log.warning("second", n=2)
        configure_logging("json", "debug")
        log.debug("third", n=3)
        """
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3, lines
    assert json.loads(lines[0])["event"] == "first"
    assert "second" in lines[1] and "n=2" in lines[1] and not lines[1].startswith("{")
    assert json.loads(lines[2])["event"] == "third"
    assert proc.stderr == ""


def test_auto_uses_console_on_a_tty() -> None:
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    try:
        proc = run(
            """
            configure_logging()
            get_logger().info("hello_tty", k="v")
            """,
            stdout=slave,
        )
        os.close(slave)
        slave = -1
        data = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO once the writer side is gone
                break
            if not chunk:
                break
            data += chunk
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    assert proc.returncode == 0, proc.stderr
    text = data.decode()
    assert "hello_tty" in text
    assert not text.lstrip().startswith("{")


def test_rejects_unknown_level_and_format() -> None:
    from warmupd.logs import configure_logging

    with pytest.raises(ValueError):
        configure_logging("json", "verbose")
    with pytest.raises(ValueError):
        configure_logging("xml", "info")
