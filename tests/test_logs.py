"""Logging tests: run snippets in a subprocess whose stdout is a pipe (not a TTY)."""

from __future__ import annotations

import base64
import itertools
import json
import os
import random
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from warmupd.logs import REDACTED, _SecretIndex

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


# --- the secret index ------------------------------------------------------------------------
#
# In-process on a fresh _SecretIndex (the structure behind register_secret), so that these
# secrets never reach the process-wide index other tests log through.


def index_of(*secrets: str) -> _SecretIndex:
    index = _SecretIndex()
    for s in secrets:
        index.add(s)
    return index


def random_secrets(n: int, seed: int, lo: int = 8, hi: int = 40) -> list[str]:
    """Passwords of lo-hi characters of the 85 of base85 (no space, comma or quote)."""
    rng = random.Random(seed)
    lengths = [rng.randint(lo, hi) for _ in range(n)]
    chars = base64.b85encode(rng.randbytes(sum(lengths))).decode()
    ends = list(itertools.accumulate(lengths))
    return [chars[e - k:e] for e, k in zip(ends, lengths, strict=True)]


def test_many_secrets_are_each_redacted() -> None:
    secrets = random_secrets(100_000, seed=1)
    index = index_of(*secrets)
    # Every one of them, in one long text: each becomes exactly one ***.
    assert index.redact(" ".join(secrets)) == " ".join([REDACTED] * len(secrets))
    for s in secrets[::997]:
        assert index.redact(f'AUTH failed for alice@warmup.test with "{s}" (535)') == \
            f'AUTH failed for alice@warmup.test with "{REDACTED}" (535)'
    line = 'send_state account=alice@warmup.test state=sent message_id=<m1@warmup.test> attempt=1'
    assert index.redact(line) == line


def test_overlapping_secrets_redact_the_longest() -> None:
    index = index_of("abcdefgh", "abcdefghijkl", "abcdefghXY", "password", "mypassword123")
    assert index.redact("x abcdefghijkl y") == f"x {REDACTED} y"  # one contains another
    assert index.redact("x abcdefghijk y") == f"x {REDACTED}ijk y"  # only the shorter matches
    assert index.redact("x abcdefghXYZ y") == f"x {REDACTED}Z y"  # shared prefix, other tail
    assert index.redact("mypassword123 and password") == f"{REDACTED} and {REDACTED}"
    assert index.redact("mypassword12") == f"my{REDACTED}12"  # contained one, at its place
    # Two adjacent secrets are two replacements.
    assert index.redact("abcdefghpassword") == REDACTED * 2


def test_overlapping_secrets_leave_no_part_visible() -> None:
    # Neither contains the other: the second starts inside the first.
    index = index_of("xyz123ab", "23abQRSTUV")
    assert index.redact("<xyz123abQRSTUV>") == f"<{REDACTED}>"


def test_secret_at_start_and_end_of_a_line() -> None:
    index = index_of("S3cr3t-Pa55")
    assert index.redact("S3cr3t-Pa55") == REDACTED
    assert index.redact("S3cr3t-Pa55 at start") == f"{REDACTED} at start"
    assert index.redact("at end S3cr3t-Pa55") == f"at end {REDACTED}"
    assert index.redact("S3cr3t-Pa55S3cr3t-Pa55") == REDACTED * 2


def test_secrets_shorter_than_the_prefix() -> None:
    index = index_of("a1", "pw9", "hunter2", "hunter2-and-more", SECRET)
    assert index.redact("a1") == REDACTED
    assert index.redact("pw9 then a1, end a1") == f"{REDACTED} then {REDACTED}, end {REDACTED}"
    assert index.redact("hunter2") == REDACTED  # 7 characters, one under the prefix length
    assert index.redact("hunter2-and-more!") == f"{REDACTED}!"  # the long one wins
    assert index.redact("hunter2-and-mor") == f"{REDACTED}-and-mor"
    assert index.redact(f"pw={SECRET};") == f"pw={REDACTED};"  # quote and non-ASCII


def test_no_false_positives_on_near_misses() -> None:
    index = index_of("CorrectHorse9", "pw9", *random_secrets(1000, seed=2))
    for near in ("CorrectHorse8", "CorrectHors", "orrectHorse9", "correcthorse9",
                 "CorrectHorse 9", "Correct", "pw8", "p w9", "PW9", "w9"):
        assert index.redact(f"[{near}]") == f"[{near}]"
    assert index.redact("") == ""
    assert index_of().redact("nothing registered") == "nothing registered"


def test_adding_while_other_threads_redact() -> None:
    index = _SecretIndex()
    early = random_secrets(2000, seed=3)
    for s in early:
        index.add(s)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader(k: int) -> None:
        try:
            while not stop.is_set():
                for s in early[k::50]:
                    assert index.redact(f" {s} ") == f" {REDACTED} "  # space: in no secret
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    late = random_secrets(30_000, seed=4, lo=1)  # short ones too: new per-length entries
    for s in late:
        index.add(s)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert all(index.redact(s) == REDACTED for s in late[::101])


def test_register_secret_scales_to_many_accounts() -> None:
    """Each add is O(1): 100,000 secrets register in well under a second here (the old
    regex alternation took more than 15 minutes for 10,000), and every field still redacts."""
    proc = run(
        """
        import time, json
        secrets = [f"pw-{i:06d}-{i * 7919 % 100003:06d}" for i in range(100_000)]
        t0 = time.perf_counter()
        for s in secrets:
            register_secret(s)
        register_secret(SECRET)
        took = time.perf_counter() - t0
        configure_logging("json")
        log = get_logger("warmupd.x")
        try:
            raise OSError("login failed with " + secrets[-1])
        except OSError:
            log.exception("smtp", pw=secrets[0], nested={"a": [secrets[500], {"b": SECRET}]},
                          note="user pw-000001 ok")
        print(json.dumps({"took": took}))
        """
    )
    assert proc.returncode == 0, proc.stderr
    event, timing = (json.loads(line) for line in proc.stdout.splitlines())
    assert timing["took"] < 10.0, timing
    assert event["pw"] == REDACTED
    assert event["nested"] == {"a": [REDACTED, {"b": REDACTED}]}
    assert "OSError: login failed with ***" in str(event["exception"])
    assert event["note"] == "user pw-000001 ok"  # a near-miss stays


def reference_redact(text: str, secrets: set[str]) -> str:
    """The rule spelled out: the longest secret at each start, overlapping ones merged."""
    out, pos = [], 0
    for i in range(len(text)):
        n = max((len(s) for s in secrets if text.startswith(s, i)), default=0)
        if n and i >= pos:
            out += [text[pos:i], REDACTED]
            pos = i + n
        elif n:
            pos = max(pos, i + n)
    return "".join(out) + text[pos:]


def test_matches_the_rule_on_dense_random_texts() -> None:
    # A two-letter alphabet makes secrets overlap, nest and repeat everywhere.
    rng = random.Random(5)
    for _ in range(300):
        secrets = {"".join(rng.choices("ab", k=rng.randint(1, 14))) for _ in range(rng.randint(1, 6))}
        index = index_of(*secrets)
        for _ in range(5):
            text = "".join(rng.choices("ab", k=rng.randint(0, 60)))
            assert index.redact(text) == reference_redact(text, secrets), (secrets, text)


def test_forgotten_secrets_are_no_longer_redacted_and_others_still_are() -> None:
    """Expired access tokens leave the index (it would grow for the life of the process):
    each forgotten one shows again, every other one (sharing pieces or lengths) stays hidden,
    and the index is as small as if the forgotten ones had never been added."""
    kept = random_secrets(2_000, seed=7, lo=6, hi=60)
    gone = random_secrets(2_000, seed=8, lo=6, hi=60)
    shared = ["tok-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "tok-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAB"]  # same pieces
    index = index_of(*kept, *gone, *shared)
    for s in [*gone, shared[1]]:
        index.discard(s)
    index.discard("never-registered")
    assert len(index) == len(set(kept)) + 1
    for s in kept[::37] + shared[:1]:
        assert index.redact(f"x {s} y") == f"x {REDACTED} y"
    for s in [g for g in gone[::37] if all(k not in g and g not in k for k in kept)] + shared[1:]:
        assert index.redact(f"x {s} y") == f"x {s} y"
    fresh = index_of(*kept, shared[0])
    text = " ".join(random_secrets(500, seed=9))
    assert index.redact(text) == fresh.redact(text)
    for s in list(kept) + shared[:1]:
        index.discard(s)
    assert not index and index.redact(text) == text
