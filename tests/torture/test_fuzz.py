"""Input fuzzing: generated config files for ``warmupd check``, and hostile traffic on the
control socket of one running daemon that keeps firing meanwhile.

Configs (Hypothesis, derandomized, no example database): documents of the real config's
shape with values mutated (wrong types, out-of-range numbers, bad durations, windows,
zones, emails, dates, unknown keys, missing or replaced tables, includes of odd files),
arbitrary TOML documents, and garbage bytes. ``warmupd check`` runs in-process through
``warmupd.cli.main`` (stdout and stderr captured, an alarm against hangs) and must exit
0 or 78, never raise; with 78 stderr lists its problems, each starting with a key path
(or the file, for a syntax error). Plausible configs whose every value is good exit 0.

The control socket: one real ``warmupd run`` subprocess with sends seeded all through the
fuzzing, an SMTP server in its own process recording when each MAIL FROM arrives, and
fuzzing clients: random bytes, lines over the limit and at it, half lines then silence,
more idle clients than the connection cap, unknown commands, wrong argument types, valid
commands with odd values, deep JSON, huge numbers, unicode and lone surrogates, a client
that pipelines and never reads. Every complete line gets one JSON reply (error or result)
or the client is dropped; the daemon never crashes, logs no unexpected error, and every
seeded send goes out once with MAIL FROM less than 50 ms after its instant.

Quick form by default; ``pytest --long`` scales the counts up (the figures printed with
``-s`` are the README's). ``WARMUPD_FUZZ_SEED`` changes the control fuzzer's seed.

Defects known when this file was written are listed in ``KNOWN_DEFECTS``: the fuzzers
tolerate exactly those signatures (and count them), and one strict-xfail test per defect
reproduces it, so that a fix makes its xfail test fail until its entry is removed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import inspect
import io
import json
import math
import os
import random
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.daemon_helpers import (
    ALICE,
    BOB,
    CAROL,
    FINAL,
    DaemonProc,
    seed_plan,
    send_rows,
    skip_near_midnight,
    wait_rows,
    write_config,
)
from tests.ops_helpers import raw_request
from tests.rig.fixtures import RIG_USERS
from tests.rig.smtp_server import SMTPServerProcess
from warmupd import cli
from warmupd.config import EX_CONFIG, load_config
from warmupd.control import COMMANDS, ControlServer

REPO_ROOT = Path(__file__).resolve().parents[2]

# ================================================================ known defects
#
# name -> what it is, for defects the fuzzers find and that are not fixed yet: each gets
# a strict-xfail reproduction (test_known_defect_*), and ``_known_check_defect`` below
# recognises its signature so the fuzzers tolerate (and count) exactly that. A fixed
# defect leaves this dict, and its reproduction becomes a plain test of the fixed
# behaviour (the ones found when this file was written are all fixed: nan-weight,
# nul-path, datetime-start, zone-oserror, merged-key-path, raw-key, special-files,
# db-folder, json-depth, json-bigint, surrogate-reason; see test_*_formerly below).
KNOWN_DEFECTS: dict[str, str] = {}


def _known_check_defect(exc: BaseException) -> str | None:
    """The KNOWN_DEFECTS name of an exception out of ``warmupd check``, else None."""
    return None


# ================================================================ TOML writing
#
# The generators build Python values; this writes them as TOML (tables as sections or
# inline, arrays of tables as [[...]]). Every string is escaped so the document parses;
# syntax errors come from the garbage strategies on purpose, never from here.

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_str(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_key(k: str) -> str:
    return k if _BARE.fullmatch(k) else toml_str(k)


def shown_key(k: str) -> str:
    """A key as ``warmupd check`` prints it in a key path (the README's contract, written
    here independently of warmupd.config): bare where TOML allows it, else a quoted TOML
    key with ``"`` and ``\\`` escaped and every non-printable character as \\uXXXX (or
    \\UXXXXXXXX), so every problem is one line and the empty key shows as ``""``."""
    if _BARE.fullmatch(k):
        return k
    out = ['"']
    for ch in k:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\u{ord(ch):04X}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08X}")
    out.append('"')
    return "".join(out)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        r = repr(v)
        return r if any(c in r for c in ".en") else r + ".0"
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()
                                if x is not None) + " }"
    raise TypeError(f"no TOML for {type(v).__name__}")


def _is_aot(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def dump_toml(doc: dict[str, Any], inline_depth: int = 99) -> str:
    """TOML for ``doc``; tables nested ``inline_depth`` deep or more are written inline."""
    lines: list[str] = []

    def table(t: dict[str, Any], path: list[str], depth: int) -> None:
        sub = []
        for k, v in t.items():
            if v is None:
                continue  # TOML has no null: None stands for a key left out
            if (isinstance(v, dict) or _is_aot(v)) and depth + 1 < inline_depth:
                sub.append((k, v))
            else:
                lines.append(f"{toml_key(k)} = {toml_value(v)}")
        for k, v in sub:
            name = ".".join(toml_key(p) for p in [*path, k])
            if isinstance(v, dict):
                lines.extend(["", f"[{name}]"])
                table(v, [*path, k], depth + 1)
            else:
                for item in v:
                    lines.extend(["", f"[[{name}]]"])
                    table(item, [*path, k], depth + 1)

    table(doc, [], 0)
    return "\n".join(lines) + "\n"


# ================================================================ the files configs point at


@dataclass(frozen=True)
class Odd:
    """A folder of files for configs to point at; configs are written into it too, so
    relative names in them resolve here."""

    base: Path
    ca_bundle: str | None  # a real PEM bundle copied in, when the system has one


GOOD_ACCOUNTS_FILE = """\
[[accounts]]
email = "inc1@included.test"
start_date = 2026-01-05
smtp = { host = "smtp.included.test", port = 587, security = "starttls", password = "x" }
"""


def make_odd_files(base: Path) -> Odd:
    base.mkdir(parents=True, exist_ok=True)
    (base / "secrets").mkdir()
    (base / "secrets" / "pw").write_text("s3cret\n")
    (base / "secrets" / "crlf").write_bytes(b"s3cret\r\n")
    (base / "secrets" / "empty").write_text("")
    (base / "secrets" / "newlines").write_text("\n\n\n")
    (base / "secrets" / "binary").write_bytes(bytes(range(256)))
    (base / "secrets" / "dir").mkdir()
    (base / "secrets" / "big").write_bytes(b"x" * (64 * 1024 + 1))  # a password file is small
    os.mkfifo(base / "secrets" / "fifo")  # open() would wait for a writer for ever
    os.symlink("fifo", base / "secrets" / "to-fifo")
    (base / "tpl.txt").write_text("Subject: Hi {first}\n\nHello from {me}\n---\nSubject: Yo\n\nok\n")
    (base / "tpl.d").mkdir()
    (base / "tpl.d" / "a.txt").write_text("Subject: A\n\nbody\n")
    (base / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
    (base / "empty.pem").write_text("")
    (base / "dbdir" / "warmupd.db").mkdir(parents=True)  # formerly "db-folder"
    (base / "garbage-db").mkdir()
    (base / "garbage-db" / "warmupd.db").write_bytes(b"SQLite format 3\x00" + bytes(200))
    ca = ssl.get_default_verify_paths().cafile
    ca_bundle = None
    if ca and os.path.isfile(ca):
        shutil.copy(ca, base / "ca.pem")
        ca_bundle = "ca.pem"
    inc = base / "accounts.d"
    inc.mkdir()
    (inc / "10-good.toml").write_text(GOOD_ACCOUNTS_FILE)
    (inc / "20-more.toml").write_text(GOOD_ACCOUNTS_FILE.replace("inc1", "inc2"))
    (inc / "30-empty.toml").write_text("")
    odd = base / "odd"
    odd.mkdir()
    (odd / "syntax.toml").write_text('[[accounts]]\nemail = "a@b.test\nport = = 3\n')
    (odd / "latin1.toml").write_bytes('[[accounts]]\nemail = "caf\xe9@b.test"\n'.encode("latin-1"))
    (odd / "binary.toml").write_bytes(bytes(range(256)) * 4)
    (odd / "keys.toml").write_text('[daemon]\ngrace = "1s"\n[defaults]\ntag = "x"\n'
                                   + GOOD_ACCOUNTS_FILE.replace("inc1", "keys"))
    (odd / "notarray.toml").write_text("accounts = 3\n")
    (odd / "tablearray.toml").write_text('[accounts]\nemail = "t@b.test"\n')
    (odd / "bad-entries.toml").write_text(
        "accounts = [1, \"two\", {}, { email = 3, smtp = { port = 70000 } }]\n")
    (odd / "dup.toml").write_text(GOOD_ACCOUNTS_FILE + GOOD_ACCOUNTS_FILE)
    (odd / "bom.toml").write_bytes(b"\xef\xbb\xbf" + GOOD_ACCOUNTS_FILE.encode())
    (odd / "folder.toml").mkdir()
    (odd / "deep" / "er").mkdir(parents=True)
    (odd / "deep" / "er" / "x.toml").write_text(GOOD_ACCOUNTS_FILE.replace("inc1", "deep"))
    os.symlink("loop", odd / "loop")  # a symlink to itself
    os.symlink("nowhere.toml", odd / "dangling.toml")
    os.symlink("/dev/null", odd / "devnull.toml")
    os.symlink(".", odd / "self")  # globbing "**" through it ends at the symlink limit
    os.mkfifo(odd / "fifo.toml")  # skipped by include (not a regular file)
    return Odd(base=base, ca_bundle=ca_bundle)


# ================================================================ config strategies

DURATIONS_GOOD = ["30s", "4m", "1h", "7d", "1h30m", "90s", "2.5m", "1d12h", " 5m ", "10s"]
DURATIONS_BAD: list[Any] = [
    "", "5", "5x", "-5m", "m", "1.5.5s", "5 m s", "1e5s", "inf", "nan", "5M", "٥m",
    "9" * 400 + "s", "0s", "0m", 0, 5, 5.0, -1, 0.0, True, [], {}, ["5m"], "5m-10m",
    dt.date(2026, 1, 1), "\u00a05m", "5m\n", "P1D", "00:05:00",
]
WINDOWS_BAD: list[Any] = [
    "25:00-26:00", "09:00-09:00", "11:00-09:00", "9:00-10:00", "24:00-24:30", "09:60-10:00",
    "09:00 - 10:00", "09:00-", "-10:00", "0900-1000", "09:00-24:01", "٠٩:٠٠-١٠:٠٠", "",
    "23:59-24:00", "00:00-24:00", 9, None, ["09:00-10:00"], "09:00-10:00-11:00",
]
ZONES_GOOD = ["UTC", "Europe/London", "Asia/Kolkata", "America/New_York", "Pacific/Auckland",
              "Australia/Lord_Howe", "Pacific/Chatham", "America/St_Johns", "Asia/Kathmandu",
              "Pacific/Kiritimati", "Etc/GMT+12", "Africa/Casablanca"]
ZONES_BAD: list[Any] = [
    "Mars/Olympus", "utc", "Europe/Lodnon", "", "../../etc/passwd", "/etc/localtime",
    "Europe/", "zone.tab", "tzdata.zi", "+VERSION", "UTC ", " UTC", "America/../UTC", 5,
    "Europe/London\n", "EST5EDT,M3.2.0,M11.1.0",
    # folders of the zone database, a name too long for a file (formerly "zone-oserror"):
    "America", "Europe", "a" * 300,
]
EMAILS_BAD: list[Any] = [
    "", "alice", "alice@", "@example.com", "alice@example", "alice@@example.com",
    "alice @example.com", "alice@exa mple.com", "alice@example..com", "alice@-.com",
    "ålice@example.com", "alice@exämple.com", "alice@example.com\n", 5, ["a@b.test"],
    "a" * 5000 + "@example.com", "alice@example.com.", '"quoted"@example.com',
]
HOLIDAYS: list[Any] = ["", "IN", "US-NY", "GB", "de", "US-ny", "XX", "US-XX", "ZZZ-1", "-",
                       "US-", "-NY", "I N", "IN\n", "É", "AAAAAAAAAA", 5, ["IN"], "UN"]
WEEKDAYS_BAD: list[Any] = [[], ["mo"], ["monday", "Tuesday", "WEDNES"], ["mon", 1], "mon",
                           ["xyz"], [""], ["mon", "mon"], ["sun"] * 50, [None]]
UNKNOWN_KEYS = ["grce", "min_gapp", "timezon", "acounts", "smpt", "ramp_max", "Email",
                "start-date", "windows", "weight", "paswd", "extra", "x", "", " ", "ünïcode",
                "a.b", "[x]", "a b", "tab\there", "#", "=", '"q"']
# Keys with control characters (printed escaped: formerly "raw-key").
CONTROL_KEYS = ["new\nline", "\x1b[31mred", "cr\rhere", "nul\x00"]


def _bad_value() -> st.SearchStrategy[Any]:
    """Any TOML value of any type: what a field of the wrong type receives."""
    scalars = st.one_of(
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.sampled_from([0, -1, 1, 2**31, 2**64, -(2**70), 10**30]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.text(max_size=30),
        st.dates(),
        st.datetimes(timezones=st.none() | st.just(dt.UTC)),
        st.times(),
    )
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(_key_text(8), inner, max_size=3), max_leaves=8)


def _key_text(max_size: int = 12) -> st.SearchStrategy[str]:
    """Key names: any text TOML can hold (no lone surrogates), control characters too;
    CONTROL_KEYS are drawn on purpose now and then besides."""
    return st.text(st.characters(blacklist_categories=("Cs",)), max_size=max_size)


@st.composite
def field_value(draw: st.DrawFn, good: st.SearchStrategy[Any], bad: Sequence[Any] = (),
                p_bad: int = 12) -> Any:
    """Mostly a good value; ``p_bad`` percent of the time a bad one (from ``bad`` or of
    any type). Shrinks towards good values."""
    if p_bad and draw(st.integers(0, 99)) >= 100 - p_bad:
        if bad and draw(st.booleans()):
            return draw(st.sampled_from(list(bad)))
        return draw(_bad_value())
    return draw(good)


@st.composite
def duration(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return draw(st.sampled_from(DURATIONS_GOOD))
    n = draw(st.integers(1, 500))
    return f"{n}{draw(st.sampled_from('smh'))}"


def windows_good(draw: st.DrawFn, n: int) -> list[str]:
    """``n`` sorted, disjoint windows inside the day."""
    cuts = sorted(draw(st.lists(st.integers(0, 24 * 60), min_size=2 * n, max_size=2 * n,
                                unique=True)))
    return [f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}"
            for a, b in zip(cuts[::2], cuts[1::2], strict=True)]


def wide_windows(draw: st.DrawFn, n: int) -> list[str]:
    """``n`` disjoint windows of 3 h or more (the day cut in ``n`` <= 6 blocks, each shrunk
    by up to 30 min at either end), shuffled: room for any good ramp.max at any good gap,
    so that a config of good values is feasible."""
    size = 24 * 60 // n
    out = []
    for i in range(n):
        a = i * size + draw(st.integers(0, 30))
        b = (i + 1) * size - draw(st.integers(0, 30))
        out.append(f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}")
    return list(draw(st.permutations(out)))


DEFAULT_PERIODS = {
    "peak": {"windows": ["09:00-11:00", "14:00-16:00"], "weight": 0.60},
    "normal": {"windows": ["11:00-12:00", "16:00-18:00"], "weight": 0.30},
    "low": {"windows": ["12:00-14:00"], "weight": 0.10},
}


@st.composite
def periods(draw: st.DrawFn, p_bad: int) -> Any:
    kind = draw(st.sampled_from(["default", "single", "random"]))
    if kind == "default":
        out = json.loads(json.dumps(DEFAULT_PERIODS))
    elif kind == "single":
        out = {"day": {"windows": ["07:00-21:00"], "weight": 1.0}}
    else:
        names = draw(st.lists(st.sampled_from(["peak", "normal", "low", "night", "x y", "é"]),
                              min_size=1, max_size=3, unique=True))
        wins = windows_good(draw, len(names) * 2) if p_bad else wide_windows(draw, len(names) * 2)
        weights = [draw(st.integers(1, 10)) for _ in names]
        out = {nm: {"windows": wins[2 * i:2 * i + 2], "weight": w / sum(weights)}
               for i, (nm, w) in enumerate(zip(names, weights, strict=True))}
    if p_bad:
        for spec in out.values():
            if draw(st.integers(0, 99)) >= 100 - p_bad:
                what = draw(st.sampled_from(["window", "weight", "drop", "unknown", "empty"]))
                if what == "window":
                    spec["windows"] = [*spec["windows"], draw(st.sampled_from(WINDOWS_BAD))]
                elif what == "weight":
                    spec["weight"] = draw(st.sampled_from(
                        [0, -0.1, 1.5, 2, "0.5", None, math.inf, 1e-300, 0.333333]
                        + [math.nan]))  # nan: formerly "nan-weight"
                    if spec["weight"] is None:
                        del spec["weight"]
                elif what == "drop":
                    del spec["windows"]
                elif what == "unknown":
                    spec[draw(st.sampled_from(UNKNOWN_KEYS))] = 1
                else:
                    spec["windows"] = []
        if draw(st.integers(0, 99)) >= 100 - p_bad:
            # overlapping windows between two periods, or none at all
            if draw(st.booleans()) and len(out) >= 1:
                first = next(iter(out.values()))
                if isinstance(first.get("windows"), list):
                    out["overlap"] = {"windows": [*first["windows"][:1]], "weight": 0.0}
            else:
                out = draw(st.sampled_from([{}, [], "09:00-17:00", 1]))
    return out


@st.composite
def ramp(draw: st.DrawFn, p_bad: int) -> Any:
    return {"start": draw(field_value(st.integers(1, 5), [0, -1, 1.5, "2", 2**63 - 1], p_bad)),
            "step": draw(field_value(st.integers(1, 3), [0, -3, True, None], p_bad)),
            "max": draw(field_value(st.integers(5, 20), [0, 10**9, 2**62, 1.0], p_bad))}


@st.composite
def engagement(draw: st.DrawFn, p_bad: int) -> dict[str, Any]:
    rate = st.floats(0, 1)
    return {
        "delay": draw(field_value(st.sampled_from(["3m-4h", "1s-1s", "10m-1h", "1m-2d"]),
                                  ["4h-3m", "0s-1m", "3m", "-", "3m-", "-4h", "3m-4h-5h",
                                   "3m - 4h", 180], p_bad)),
        "reply_rate": draw(field_value(rate, [-0.1, 1.1, "0.3", math.nan, math.inf], p_bad)),
        "important_rate": draw(field_value(rate, [2, None], p_bad)),
        "max_thread_depth": draw(field_value(st.integers(1, 5), [0, 2.0, "2"], p_bad)),
        "archive_folder": draw(field_value(st.sampled_from(["", "Archive", "INBOX/Old"]),
                                           [5, ["A"]], p_bad)),
        "bounce_pause_rate": draw(field_value(rate, [-1, 5], p_bad)),
        # at most the default cut_junk_rate: the junk bands must rise
        "hold_junk_rate": draw(field_value(st.floats(0, 0.25), [1.0001], p_bad)),
    }


@st.composite
def server(draw: st.DrawFn, odd: Odd, p_bad: int, imap: bool) -> Any:
    sec = draw(field_value(st.sampled_from(["none", "starttls", "tls"]),
                           ["TLS", "ssl", "", None, 1, "none "], p_bad))
    srv: dict[str, Any] = {
        "host": draw(field_value(st.sampled_from(["127.0.0.1", "smtp.example.com", "::1",
                                                  "mail.ünïcode.test"]),
                                 ["", 5, None, ["h"]], p_bad)),
        "port": draw(field_value(st.integers(1, 65535),
                                 [0, -1, 65536, 70000, 2**64, 25.0, "25", True], p_bad)),
        "security": sec,
    }
    if srv["security"] is None:
        del srv["security"]
    pw = draw(st.sampled_from(["password", "password_file", "password_env", "none"]))
    if pw == "password":
        srv["password"] = draw(field_value(st.text(min_size=1, max_size=20), ["", 5], p_bad))
    elif pw == "password_file":
        good = st.sampled_from(["secrets/pw", "secrets/crlf", str(odd.base / "secrets" / "pw")])
        srv["password_file"] = draw(field_value(good, [
            "secrets/missing", "secrets/empty", "secrets/newlines", "secrets/dir",
            "secrets/binary", "", "/nonexistent/pw", "secrets", "../../../etc/shadow-not",
            "a\x00b",  # formerly "nul-path"
            "secrets/fifo", "secrets/to-fifo", "secrets/big",  # formerly "special-files"
        ], p_bad))
    elif pw == "password_env":
        srv["password_env"] = draw(field_value(st.just("WARMUPD_FUZZ_PW"), [
            "WARMUPD_FUZZ_UNSET", "", "A=B", "WARMUPD_FUZZ_EMPTY", "x" * 300], p_bad))
    if p_bad and draw(st.integers(0, 99)) >= 100 - p_bad:
        srv["password"] = "two at once"
        srv["password_env"] = "WARMUPD_FUZZ_PW"
    if draw(st.integers(0, 9)) == 0:
        srv["username"] = draw(field_value(st.sampled_from(["u", "someone@example.com"]),
                                           ["", 5], p_bad))
    if draw(st.booleans()):
        srv["timeout"] = draw(field_value(duration(), DURATIONS_BAD, p_bad))
    if odd.ca_bundle and draw(st.integers(0, 9)) == 0:
        srv["ca_file"] = draw(field_value(st.just(odd.ca_bundle), [
            "garbage.pem", "empty.pem", "missing.pem", "secrets", "", 5, "tpl.txt",
            "secrets/fifo", "secrets/to-fifo", "a\x00b"], p_bad))
    if imap:
        if draw(st.booleans()):
            srv["junk_folder"] = draw(field_value(st.sampled_from(["Junk", "Spam", ""]), [5], p_bad))
        if draw(st.booleans()):
            srv["poll"] = draw(field_value(duration(), DURATIONS_BAD, p_bad))
    return srv


SCHEDULE_OVERRIDES = ("timezone", "weekdays", "jitter", "min_gap", "max_per_hour", "holidays",
                      "ramp", "periods", "engagement", "tag", "max_attempts", "extra_recipients")


@st.composite
def defaults_table(draw: st.DrawFn, p_bad: int, odd: Odd) -> dict[str, Any]:
    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    weekdays = st.lists(st.sampled_from(days + ["Monday", "TUE", "wednesday"]), min_size=1,
                        max_size=7, unique=True)
    t: dict[str, Any] = {
        "timezone": draw(field_value(st.sampled_from(ZONES_GOOD), ZONES_BAD, p_bad)),
        "weekdays": draw(field_value(weekdays, WEEKDAYS_BAD, p_bad)),
        "holidays": draw(field_value(st.sampled_from(HOLIDAYS[:6]), HOLIDAYS[6:], p_bad)),
        "jitter": draw(field_value(duration(), DURATIONS_BAD, p_bad)),
        "micro_jitter": draw(field_value(st.sampled_from(["0s", "30s", "5s"]), DURATIONS_BAD,
                                         p_bad)),
        "min_gap": draw(field_value(st.sampled_from(["0s", "1m", "4m", "5m"]),
                                    [*DURATIONS_BAD, "2h", "1d", "9" * 400 + "d"], p_bad)),
        "max_per_hour": draw(field_value(st.sampled_from([0, 12, 20, 30]),
                                         [-1, 1, 1.5, "6", 10**20, True], p_bad)),
        "extra_recipients": draw(field_value(
            st.lists(st.sampled_from(["x@outside.test", "y@outside.test"]), max_size=2),
            [["not-an-email"], "x@outside.test", [5], EMAILS_BAD[:6]], p_bad)),
        "tag": draw(field_value(st.sampled_from(["", "[wu]", "ünï"]), [5, ["t"]], p_bad)),
        "max_attempts": draw(field_value(st.integers(1, 5), [0, -1, 2.5, "3"], p_bad)),
        "periods": draw(periods(p_bad)),
        "ramp": draw(ramp(p_bad)),
        "engagement": draw(engagement(p_bad)),
    }
    if draw(st.integers(0, 4)) == 0:
        t["templates"] = draw(field_value(st.sampled_from(["tpl.txt", "tpl.d", ""]),
                                          ["missing.txt", 5, "/nonexistent",
                                           "a\x00b"], p_bad))  # formerly "nul-path"
    # Drop some keys: every one has a default.
    for k in draw(st.lists(st.sampled_from(sorted(t)), max_size=4, unique=True)):
        del t[k]
    return t


@st.composite
def account_table(draw: st.DrawFn, i: int, p_bad: int, odd: Odd) -> Any:
    email = f"user{i}@example{i % 3}.test"
    a: dict[str, Any] = {
        "email": draw(field_value(st.just(email), [*EMAILS_BAD, "USER0@example0.test"], p_bad)),
        "start_date": draw(field_value(
            st.dates(dt.date(2020, 1, 1), dt.date(2030, 12, 31))
            | st.dates(dt.date(2020, 1, 1), dt.date(2030, 12, 31)).map(dt.date.isoformat),
            ["2026-02-30", "2026-13-01", "26-01-01", "2026/01/01", "", 20260101,
             dt.time(10, 0), "tomorrow",
             dt.datetime(2026, 1, 1, 10, 0)],  # formerly "datetime-start"
            p_bad)),
        "smtp": draw(field_value(server(odd, p_bad, imap=False), ["smtp.example.com", 25, []],
                                 p_bad)),
    }
    if draw(st.integers(0, 4)) == 0:
        a["imap"] = draw(field_value(server(odd, p_bad, imap=True), ["imap", 993], p_bad))
    # Per-account overrides of [defaults] keys.
    dflt = draw(defaults_table(p_bad, odd))
    for k in draw(st.lists(st.sampled_from(SCHEDULE_OVERRIDES), max_size=3, unique=True)):
        if k in dflt:
            if k in ("ramp", "engagement"):  # merged key by key: give a part of it
                part = dflt[k] if isinstance(dflt[k], dict) else {}
                a[k] = dict(list(part.items())[:2]) if part else dflt[k]
            else:
                a[k] = dflt[k]
    if p_bad and draw(st.integers(0, 99)) >= 100 - p_bad:
        for k in draw(st.lists(st.sampled_from(["email", "start_date", "smtp"]), min_size=1,
                               max_size=2, unique=True)):
            del a[k]
    return a


INCLUDE_PATTERNS_GOOD = ["accounts.d/*.toml", "accounts.d/10-good.toml", "accounts.d/2*.toml"]
INCLUDE_PATTERNS_BAD: list[Any] = [
    "odd/*", "odd/**", "**/*.toml", "odd/**/*.toml", "odd/syntax.toml", "odd/latin1.toml",
    "odd/binary.toml", "odd/keys.toml", "odd/notarray.toml", "odd/tablearray.toml",
    "odd/bad-entries.toml", "odd/dup.toml", "odd/bom.toml", "odd/folder.toml", "odd/loop",
    "odd/dangling.toml", "odd/devnull.toml", "odd/fifo.toml", "odd/self/self/*.toml",
    "missing/*.toml", "[", "[!", "*.toml", "config.toml", "", 5, None, ["x"], "secrets/*",
    "tpl.txt", "odd/**/", "\u00e9/*.toml", "accounts.d", "accounts.d/",
]


@st.composite
def daemon_table(draw: st.DrawFn, p_bad: int) -> dict[str, Any]:
    t: dict[str, Any] = {
        "state_dir": draw(field_value(st.sampled_from(["var", "state", "."]), [
            "", 5, "secrets/pw", "odd/folder.toml", "/nonexistent/deep", "garbage-db",
            "dbdir",  # formerly "db-folder"
            "a\x00b"], p_bad)),  # formerly "nul-path"
        "grace": draw(field_value(duration(), DURATIONS_BAD, p_bad)),
        "retention": draw(field_value(duration(), DURATIONS_BAD, p_bad)),
        "log_format": draw(field_value(st.sampled_from(["auto", "json", "console"]),
                                       ["JSON", "text", "", 1], p_bad)),
        "log_level": draw(field_value(st.sampled_from(["debug", "info", "warning", "error",
                                                       "INFO"]),
                                      ["trace", "warn", "critical", "", 10], p_bad)),
        "max_concurrent_sends": draw(field_value(st.integers(1, 200),
                                                 [0, -5, 1.5, "50", 2**63 - 1], p_bad)),
        "shutdown_timeout": draw(field_value(duration(), DURATIONS_BAD, p_bad)),
        "store_stall_limit": draw(field_value(duration(), DURATIONS_BAD, p_bad)),
    }
    if draw(st.integers(0, 3)) == 0:
        t["socket"] = draw(field_value(st.sampled_from(["var/warmupd.sock", "/tmp/x.sock"]),
                                       ["", 5, "a" * 200 + ".sock"], p_bad))
    if draw(st.integers(0, 2)) == 0:
        t["include"] = draw(field_value(
            st.lists(st.sampled_from(INCLUDE_PATTERNS_GOOD), max_size=2),
            INCLUDE_PATTERNS_BAD + [INCLUDE_PATTERNS_BAD[:8], "accounts.d/*.toml"],
            max(p_bad, 30) if p_bad else 0))
        if not isinstance(t["include"], list):
            t["include"] = [t["include"]] if draw(st.booleans()) else t["include"]
    for k in draw(st.lists(st.sampled_from(sorted(t)), max_size=3, unique=True)):
        del t[k]
    return t


@st.composite
def plausible_config(draw: st.DrawFn, odd: Odd, p_bad: int | None = None) -> dict[str, Any]:
    """The real config's shape, each value bad with probability ``p_bad`` percent (by
    default drawn per document); with 0 every value is one the README allows."""
    if p_bad is None:
        p_bad = draw(st.sampled_from([2, 4, 8, 12, 25]))
    n = draw(st.integers(2, 4)) if not p_bad else draw(st.integers(0, 4))
    doc: dict[str, Any] = {
        "daemon": draw(daemon_table(p_bad)),
        "defaults": draw(defaults_table(p_bad, odd)),
        "accounts": [draw(account_table(i, p_bad, odd)) for i in range(n)],
    }
    if not p_bad:
        return doc
    # Structural mutations: unknown keys, tables replaced or removed.
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["", "daemon", "defaults", "defaults.ramp",
                                      "defaults.engagement", "accounts", "smtp"]))
        key = draw(st.sampled_from(CONTROL_KEYS) if draw(st.integers(0, 19)) == 19
                   else st.sampled_from(UNKNOWN_KEYS) | _key_text())
        val = draw(_bad_value())
        target: Any = doc
        if where == "accounts":
            target = doc["accounts"][0] if doc["accounts"] else doc
        elif where == "smtp":
            target = doc["accounts"][0].get("smtp") if doc["accounts"] else doc
        else:
            for part in filter(None, where.split(".")):
                target = target.get(part) if isinstance(target, dict) else None
        if isinstance(target, dict) and key not in ("accounts", "daemon", "defaults"):
            target[key] = val
    if draw(st.integers(0, 99)) >= 85:
        k = draw(st.sampled_from(["daemon", "defaults", "accounts"]))
        if draw(st.booleans()):
            del doc[k]
        else:
            doc[k] = draw(_bad_value())
    return doc


def arbitrary_toml() -> st.SearchStrategy[dict[str, Any]]:
    """Any TOML document, with keys of the schema among random ones."""
    keys = st.sampled_from(["daemon", "defaults", "accounts", "smtp", "periods", "ramp",
                            "email", "start_date", "include", "timezone", "windows",
                            "weight", "port"]) | _key_text(10)
    return st.dictionaries(keys, _bad_value(), max_size=6)


@st.composite
def garbage_text(draw: st.DrawFn) -> bytes:
    """Bytes: random ones, or a real config with some characters changed, inserted or
    cut (syntax errors in every place), or a real config truncated."""
    base = (REPO_ROOT / "config.toml").read_bytes()
    kind = draw(st.sampled_from(["random", "mutated", "truncated", "text"]))
    if kind == "random":
        return draw(st.binary(max_size=400))
    if kind == "text":
        return draw(st.text(max_size=300)).encode("utf-8", "surrogatepass")
    if kind == "truncated":
        return base[: draw(st.integers(0, len(base)))]
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        chunk = draw(st.sampled_from([b"=", b"[", b"]", b"\"", b"{", b"}", b"\n", b",", b"#",
                                      b"'", b"\\", b"\x00", b"\xff", b"\xc3", b"[[accounts]]\n",
                                      b"= =", b"\t", b"\r", b"1979-05-27T07:32:00Z"]))
        if op == "insert":
            data[pos:pos] = chunk
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 20))]
        else:
            data[pos:pos + len(chunk)] = chunk
    return bytes(data)


# ================================================================ running `warmupd check`


class _Hang(Exception):
    pass


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Raise _Hang in the main thread after ``seconds`` (a hang is a defect too)."""
    def on_alarm(signum: int, frame: Any) -> None:
        raise _Hang(f"warmupd check still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class CheckResult:
    rc: int
    out: str
    err: str
    known: str | None = None  # the KNOWN_DEFECTS name of the exception it raised


def run_check(path: Path) -> CheckResult:
    """``warmupd check --config PATH`` in-process: its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _alarm(30):
        try:
            rc = cli.main(["check", "--config", str(path)])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except _Hang:
            raise
        except Exception as e:
            known = _known_check_defect(e)
            if known is None:
                raise
            return CheckResult(-1, out.getvalue(), err.getvalue(), known)
    return CheckResult(rc, out.getvalue(), err.getvalue())


_KEY = r"[A-Za-z0-9_-]+"
_PATH_TAIL = re.compile(rf"^(?:\.{_KEY}|\[\d+\])*: \S")
_PATH_ROOT = re.compile(rf"^{_KEY}(?:\.{_KEY}|\[\d+\])*: \S")
_HEADER = re.compile(r"^warmupd: (?:(?P<file>.+): )?invalid config, (?P<n>\d+) problem\(s\):$")


def doc_paths(data: Any, key: Callable[[str], str] = shown_key) -> set[str]:
    """Every key path of a parsed document, each key written by ``key``."""
    out: set[str] = set()

    def walk(v: Any, path: str, top: bool) -> None:
        if not top:
            out.add(path)
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{path}.{key(k)}" if not top else key(k), False)
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, f"{path}[{i}]", False)

    walk(data, "", True)
    return out


def problem_has_path(problem: str, paths: set[str], config: Path) -> bool:
    """A problem line starts with a file name (a syntax error, an included file's problem)
    or a key path: a path of the document, possibly extended by schema keys it lacks
    (``accounts[0].smtp.host: is required``), followed by ": " and the message."""
    at = problem.find(": ")
    while at != -1:
        name = problem[:at]
        with contextlib.suppress(OSError, ValueError):
            if name == str(config) or (name and (config.parent / name).is_file()):
                return True
        at = problem.find(": ", at + 1)
    if _PATH_ROOT.match(problem):
        return True
    return any(problem.startswith(p) and _PATH_TAIL.match(problem[len(p):]) for p in paths)


def assert_check_contract(res: CheckResult, path: Path, data: Any, doc_text: str,
                          known: Counter[str]) -> None:
    """Exit 0 or 78; with 78 a header and one line per problem, each naming where."""
    if res.known:
        known[res.known] += 1
        return
    assert res.rc in (0, EX_CONFIG), (res.rc, res.err[-2000:], doc_text[:3000])
    assert "Traceback" not in res.err, res.err
    if res.rc == 0:
        assert res.out.startswith(f"{path}: OK, "), res.out[:500]
        return
    lines = res.err.splitlines()
    assert lines, "exit 78 with nothing on stderr"
    m = _HEADER.match(lines[0])
    assert m, lines[0]
    n = int(m.group("n"))
    assert n >= 1, res.err
    # One problem a line, plain text: keys (and names, paths) with control characters
    # are escaped, so nothing but the newlines ending the lines is a control character.
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f]", res.err), res.err
    problems = [ln[2:] for ln in lines[1:]]
    assert len(problems) == n and all(ln.startswith("  ") for ln in lines[1:]), res.err
    shown = doc_paths(data) if isinstance(data, dict) else set()
    paths = shown | (doc_paths(data, toml_key) | doc_paths(data, str)
                     if isinstance(data, dict) else set())
    for p in problems:
        assert p.strip(), res.err
        where, sep, msg = p.partition(": unknown key")
        if sep and ": " not in where and where not in shown:
            # Once, at the path the key has in the file (a key of [defaults.ramp] is not
            # reported under the accounts that override a part of the table), escaped.
            raise AssertionError(f"unknown key reported at a path not in the file: {p!r}\n"
                                 f"{doc_text[:3000]}")
        assert problem_has_path(p, paths, path), f"no key path or file in {p!r}\n{doc_text[:3000]}"


# ---------------------------------------------------------------- the config tests


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> Odd:
    return make_odd_files(tmp_path_factory.mktemp("fuzzcfg"))


@pytest.fixture(scope="module")
def fuzz_env() -> Iterator[None]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY", "CREDENTIALS_DIRECTORY")}
    clean.update({"WARMUPD_FUZZ_PW": "from-env", "WARMUPD_FUZZ_EMPTY": ""})
    with mock.patch.dict(os.environ, clean, clear=True):
        yield


def _examples(long_form: bool, quick: int, long: int) -> int:
    return long if long_form else quick


def _settings(n: int) -> settings:
    # Shrinking a config takes minutes: only with WARMUPD_FUZZ_SHRINK=1 (the failing
    # example is printed either way, and derandomize makes every run draw the same ones).
    phases = [Phase.explicit, Phase.reuse, Phase.generate]
    if os.environ.get("WARMUPD_FUZZ_SHRINK"):
        phases.append(Phase.shrink)
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True, phases=phases)


@dataclass
class CheckTally:
    examples: int = 0
    exit0: int = 0
    exit78: int = 0
    problems: int = 0
    bytes: int = 0
    known: Counter[str] = field(default_factory=Counter)

    def add(self, res: CheckResult, size: int) -> None:
        self.examples += 1
        self.bytes += size
        if res.rc == 0:
            self.exit0 += 1
        elif res.rc == EX_CONFIG:
            self.exit78 += 1
            self.problems += max(0, len(res.err.splitlines()) - 1)

    def report(self, what: str) -> str:
        known = ", ".join(f"{k} x{n}" for k, n in sorted(self.known.items())) or "none"
        return (f"[fuzz] {what}: {self.examples} examples ({self.bytes:,} bytes): exit 0: "
                f"{self.exit0}, exit 78: {self.exit78} ({self.problems} problems listed); "
                f"known defects met: {known}")


def _check_doc(odd: Odd, text: str | bytes, tally: CheckTally, name: str = "config.toml") -> CheckResult:
    path = odd.base / name
    raw = text.encode("utf-8") if isinstance(text, str) else text
    path.write_bytes(raw)
    try:
        data: Any = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        data = None
    doc_text = raw.decode("utf-8", "replace")
    res = run_check(path)
    assert_check_contract(res, path, data, doc_text, tally.known)
    tally.add(res, len(raw))
    return res


def test_check_on_plausible_configs(odd: Odd, fuzz_env: None, long_form: bool) -> None:
    tally = CheckTally()

    @_settings(_examples(long_form, 150, 3000))
    @given(doc=plausible_config(odd), inline_depth=st.sampled_from([1, 2, 3, 99]))
    def check(doc: dict[str, Any], inline_depth: int) -> None:
        _check_doc(odd, dump_toml(doc, inline_depth), tally)

    check()
    print("\n" + tally.report("check, plausible configs"))
    assert tally.exit78 > tally.examples // 2  # the mutations do reach the validator
    assert tally.examples >= (3000 if long_form else 150)


def test_check_on_arbitrary_toml_and_garbage(odd: Odd, fuzz_env: None, long_form: bool) -> None:
    tally = CheckTally()

    @_settings(_examples(long_form, 100, 1500))
    @given(doc=st.one_of(arbitrary_toml().map(dump_toml), garbage_text()))
    def check(doc: str | bytes) -> None:
        _check_doc(odd, doc, tally)

    check()
    print("\n" + tally.report("check, arbitrary TOML and garbage"))


def test_check_accepts_configs_of_good_values(odd: Odd, fuzz_env: None, long_form: bool) -> None:
    """Plausible configs with every value one the README allows are valid (exit 0)."""
    tally = CheckTally()

    @_settings(_examples(long_form, 40, 400))
    @given(doc=plausible_config(odd, p_bad=0), inline_depth=st.sampled_from([1, 2, 99]))
    def check(doc: dict[str, Any], inline_depth: int) -> None:
        res = _check_doc(odd, dump_toml(doc, inline_depth), tally)
        assert res.rc == 0, f"{res.err}\n{dump_toml(doc, inline_depth)}"

    check()
    print("\n" + tally.report("check, good configs"))


def test_check_in_process_matches_the_cli(odd: Odd) -> None:
    """The in-process runner tells what `warmupd check` as a process says: same exit code
    and the same problem list, for a valid and an invalid config."""
    good = dump_toml(_GOOD_DOC)
    bad = dump_toml({**_GOOD_DOC, "daemon": {"grace": "soon", "grcae": 1}})
    env = {k: v for k, v in os.environ.items()
           if k not in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY", "CREDENTIALS_DIRECTORY")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    for name, text in (("inproc-good.toml", good), ("inproc-bad.toml", bad)):
        path = odd.base / name
        path.write_text(text)
        mine = run_check(path)
        p = subprocess.run([sys.executable, "-m", "warmupd.cli", "check", "--config", str(path)],
                           capture_output=True, text=True, timeout=60, env=env, cwd=odd.base)
        assert (mine.rc, mine.err) == (p.returncode, p.stderr)
        assert mine.out.splitlines()[:2] == p.stdout.splitlines()[:2]
    assert run_check(odd.base / "inproc-bad.toml").rc == EX_CONFIG


_GOOD_DOC: dict[str, Any] = {
    "daemon": {"state_dir": "var"},
    "defaults": {"timezone": "UTC"},
    "accounts": [
        {"email": f"g{i}@good.test", "start_date": dt.date(2026, 1, 5),
         "smtp": {"host": "127.0.0.1", "port": 2525, "security": "none", "password": "p"}}
        for i in range(2)
    ],
}


# ---------------------------------------------------------------- known config defects


def _with(doc_patch: Callable[[dict[str, Any]], None]) -> str:
    doc = json.loads(json.dumps(_GOOD_DOC, default=str))
    for a in doc["accounts"]:
        a["start_date"] = dt.date.fromisoformat(a["start_date"])
    doc_patch(doc)
    return dump_toml(doc)


def _problems(odd: Odd, name: str, text: str) -> list[str]:
    """`warmupd check` on ``text`` (in-process) exits 78 keeping the contract; its
    problem lines."""
    path = odd.base / name
    path.write_text(text)
    res = run_check(path)
    assert res.rc == EX_CONFIG, (res.rc, res.out, res.err)
    data = tomllib.loads(text)
    assert_check_contract(res, path, data, text, Counter())
    return [ln[2:] for ln in res.err.splitlines()[1:]]


NUL_PROBLEM = "must be a path without a NUL character, got 'a\\x00b'"


def test_nan_weight_and_rate_formerly_known_defect(odd: Odd, fuzz_env: None) -> None:
    """Formerly "nan-weight": nan passed the 0-1 range check, and check died in
    split_by_weight (ValueError: cannot convert float NaN to integer)."""
    def patch(d: dict[str, Any]) -> None:
        d["defaults"]["periods"] = {"peak": {"windows": ["08:00-18:00"], "weight": math.nan}}
        d["defaults"]["engagement"] = {"reply_rate": math.nan}
    assert _problems(odd, "fixed-nan.toml", _with(patch)) == [
        "defaults.periods.peak.weight: must be 0-1, got nan",
        "defaults.engagement.reply_rate: must be 0-1, got nan"]


@pytest.mark.parametrize("where", ["state_dir", "socket", "include", "password_file",
                                   "templates", "ca_file"])
def test_nul_in_a_path_formerly_known_defect(odd: Odd, fuzz_env: None, where: str) -> None:
    """Formerly "nul-path": ValueError (embedded null byte) out of resolve()/open()."""
    def patch(d: dict[str, Any]) -> None:
        if where in ("state_dir", "socket"):
            d["daemon"][where] = "a\x00b"
        elif where == "include":
            d["daemon"]["include"] = ["a\x00b/*.toml"]
        elif where == "templates":
            d["defaults"]["templates"] = "a\x00b"
        else:
            d["accounts"][0]["smtp"].pop("password", None)
            d["accounts"][0]["smtp"][where] = "a\x00b"
    at = {"state_dir": "daemon.state_dir", "socket": "daemon.socket",
          "include": "daemon.include[0]", "templates": "defaults.templates",
          "password_file": "accounts[0].smtp.password_file",
          "ca_file": "accounts[0].smtp.ca_file"}[where]
    problem = NUL_PROBLEM.replace("'a\\x00b'", "'a\\x00b/*.toml'") if where == "include" \
        else NUL_PROBLEM
    assert _problems(odd, f"fixed-nul-{where}.toml", _with(patch)) == [f"{at}: {problem}"]


def test_datetime_start_date_formerly_known_defect(odd: Odd, fuzz_env: None) -> None:
    """Formerly "datetime-start": a TOML date-time (a date subclass) was taken as the
    date, and check died comparing datetime to date (TypeError)."""
    def patch(d: dict[str, Any]) -> None:
        d["accounts"][0]["start_date"] = dt.datetime(2026, 1, 5, 10, 0)
        d["accounts"][1]["start_date"] = dt.datetime(2026, 1, 5, 10, 0, tzinfo=dt.UTC)
    assert _problems(odd, "fixed-datetime.toml", _with(patch)) == [
        "accounts[0].start_date: must be a date YYYY-MM-DD without a time of day (write "
        "2026-01-05), got 2026-01-05T10:00:00",
        "accounts[1].start_date: must be a date YYYY-MM-DD without a time of day (write "
        "2026-01-05), got 2026-01-05T10:00:00+00:00"]


@pytest.mark.parametrize("zone", ["America", "Europe", "a" * 300])
def test_zone_os_error_formerly_known_defect(odd: Odd, fuzz_env: None, zone: str) -> None:
    """Formerly "zone-oserror": IsADirectoryError / OSError (name too long) out of ZoneInfo."""
    def patch(d: dict[str, Any]) -> None:
        d["defaults"]["timezone"] = zone
    probs = _problems(odd, "fixed-zone.toml", _with(patch))
    assert len(probs) == 1 and probs[0].startswith(
        f"defaults.timezone: unknown timezone {zone!r}"), probs


def test_control_characters_in_key_paths_formerly_known_defect(odd: Odd,
                                                                fuzz_env: None) -> None:
    """Formerly "raw-key": unknown keys were printed raw (a newline broke the listing, an
    escape sequence reached the terminal) and the empty key had no path (": unknown key").
    Now a key that is not bare is printed as a quoted TOML key, escaped."""
    def patch(d: dict[str, Any]) -> None:
        d["defaults"]["new\nline"] = 1
        d["defaults"]["\x1b[2J"] = 1
        d["defaults"]["a\u2028b \"q\" \\"] = 1
        d["defaults"]["periods"] = {"x\ty": {"windows": ["07:00-21:00"], "weight": 1.0,
                                             "": 1}}
        d[""] = 1
    path = odd.base / "fixed-rawkey.toml"
    path.write_text(_with(patch))
    res = run_check(path)
    assert res.rc == EX_CONFIG and "\x1b" not in res.err, res.err
    valid = ("dkim_selectors, dns_required, engagement, extra_recipients, graduate_day, graduate_score, "
             "holidays, jitter, maintenance_per_day, max_attempts, max_per_hour, "
             "micro_jitter, min_gap, periods, ramp, sending_ips, tag, templates, timezone, weekdays")
    assert res.err.splitlines()[1:] == [
        '  "": unknown key; valid keys: accounts, daemon, defaults, oauth',
        f'  defaults."new\\u000Aline": unknown key; valid keys: {valid}',
        f'  defaults."\\u001B[2J": unknown key; valid keys: {valid}',
        f'  defaults."a\\u2028b \\"q\\" \\\\": unknown key; valid keys: {valid}',
        '  defaults.periods."x\\u0009y"."": unknown key; valid keys: weight, windows',
    ], res.err


def test_unknown_default_key_reported_once_where_it_is_formerly_known_defect(
        odd: Odd, fuzz_env: None) -> None:
    """Formerly "merged-key-path": an unknown key of [defaults.ramp] / [defaults.engagement]
    was reported under accounts[i].ramp / .engagement for every account that overrides a
    part of the table. Now once, at its path in the file; so is a bad [defaults] value
    that such an account merges, and an account's own unknown key stays its own."""
    def patch(d: dict[str, Any]) -> None:
        d["defaults"]["ramp"] = {"max": 20, "typo": 1}
        d["defaults"]["engagement"] = {"reply_rate": 0.2, "delay": "4h-3m", "typo": 1}
        for a in d["accounts"]:
            a["ramp"] = {"start": 1}
            a["engagement"] = {"important_rate": 0.5}
    assert _problems(odd, "fixed-merged.toml", _with(patch)) == [
        "defaults.ramp.typo: unknown key; valid keys: max, start, step",
        "defaults.engagement.typo: unknown key; valid keys: archive_folder, bounce_min_sample, "
        "bounce_pause_rate, cut_junk_rate, delay, hold_junk_rate, hold_min_sample, hygiene, important_rate, "
        "keep_days, max_thread_depth, pause_junk_rate, reply_rate",
        "defaults.engagement.delay: must be a range of durations like \"3m-4h\", got '4h-3m'"]

    def patch2(d: dict[str, Any]) -> None:
        d["defaults"]["ramp"] = {"max": 0}
        d["defaults"]["max_attempts"] = 0
        d["accounts"][0]["ramp"] = {"start": 1, "stpe": 2}
        d["accounts"][1]["ramp"] = {"step": 1}
    assert _problems(odd, "fixed-merged2.toml", _with(patch2)) == [
        'accounts[0].ramp.stpe: unknown key; did you mean "step"?',
        "defaults.ramp.max: must be at least 1 (zero or negative ramp values plan nothing), "
        "got 0",
        "defaults.max_attempts: must be at least 1, got 0"]


def _check_subprocess(path: Path, timeout: float,
                      preexec: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "warmupd.cli", "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=timeout, env=env,
                          preexec_fn=preexec)


@pytest.mark.parametrize("key", ["password_file", "ca_file"])
@pytest.mark.parametrize("name", ["secrets/fifo", "secrets/to-fifo"])
def test_fifo_is_refused_formerly_known_defect(odd: Odd, key: str, name: str) -> None:
    """Formerly "special-files": a password_file or ca_file that is a FIFO (or a symlink
    to one) blocked check in open() for ever. Now refused without being opened. (A
    subprocess with a timeout: in-process a regression would hang the test run.)"""
    def patch(d: dict[str, Any]) -> None:
        smtp = d["accounts"][0]["smtp"]
        if key == "password_file":
            smtp.pop("password")
        smtp[key] = name
    path = odd.base / f"fifo-{key}.toml"
    path.write_text(_with(patch))
    p = _check_subprocess(path, timeout=20)
    assert p.returncode == EX_CONFIG, p.stderr
    fifo = odd.base / name
    want = (f"accounts[0].smtp.password_file: password file {fifo} is a FIFO (named pipe), "
            "not a regular file: point password_file at a file that holds only the password"
            if key == "password_file" else
            f"accounts[0].smtp.ca_file: cannot load CA bundle {fifo.resolve()}: is a FIFO "
            "(named pipe), not a regular file; give a readable PEM file")
    assert p.stderr.splitlines()[1:] == [f"  {want}"], p.stderr


@pytest.mark.parametrize("key", ["password_file", "ca_file"])
def test_endless_or_big_file_is_refused_formerly_known_defect(odd: Odd, key: str) -> None:
    """Formerly "special-files": password_file = "/dev/zero" was read until memory ran
    out. Now a device is refused before it is opened, and a password file over 64 KiB
    is a problem (run under a 2 GiB address-space limit, so a regression cannot hurt
    the machine)."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    def patch(d: dict[str, Any]) -> None:
        d["accounts"][0]["smtp"].pop("password")
        d["accounts"][0]["smtp"]["password_file"] = "secrets/pw"
        d["accounts"][0]["smtp"][key] = "/dev/zero"
        if key == "ca_file":
            d["accounts"][1]["smtp"].pop("password")
            d["accounts"][1]["smtp"]["password_file"] = "secrets/big"
    path = odd.base / f"zero-{key}.toml"
    path.write_text(_with(patch))
    p = _check_subprocess(path, timeout=60, preexec=limit)
    assert p.returncode == EX_CONFIG, p.stderr[-500:]
    if key == "password_file":
        want = ["accounts[0].smtp.password_file: password file /dev/zero is a character "
                "device, not a regular file: point password_file at a file that holds only "
                "the password"]
    else:
        want = ["accounts[0].smtp.ca_file: cannot load CA bundle /dev/zero: is a character "
                "device, not a regular file; give a readable PEM file",
                f"accounts[1].smtp.password_file: password file {odd.base / 'secrets/big'} is "
                "65,537 bytes, more than 64 KiB: point password_file at a file that holds "
                "only the password"]
    assert [ln[2:] for ln in p.stderr.splitlines()[1:]] == want, p.stderr


def test_state_db_that_is_a_folder_formerly_known_defect(odd: Odd, fuzz_env: None) -> None:
    """Formerly "db-folder": check died in store.check_file (IsADirectoryError out of
    path.open; only StoreError is caught). Now check_file refuses it as StoreError (as a
    start would), and check, which only reads the state for history, shows none."""
    from warmupd.store import StoreError, check_file

    with pytest.raises(StoreError, match=r"warmupd\.db is a folder, not a database; "
                                         r"refusing to touch it"):
        check_file(odd.base / "dbdir" / "warmupd.db")

    def patch(d: dict[str, Any]) -> None:
        d["daemon"]["state_dir"] = "dbdir"
    path = odd.base / "fixed-dbdir.toml"
    path.write_text(_with(patch))
    res = run_check(path)
    assert res.rc == 0 and res.out.startswith(f"{path}: OK, "), (res.out, res.err)


# ---------------------------------------------------------------- socket defects, fixed


class _StubHandler:
    """Answers every command with an empty result: only the protocol is under test."""

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("cmd_"):
            raise AttributeError(name)

        async def cmd(*args: Any) -> dict[str, Any]:
            return {}
        return cmd


async def _replies(lines: Sequence[bytes]) -> list[bytes]:
    """Serve a ControlServer with the stub on a fresh socket; send ``lines`` on one
    connection; one reply line each (the connection stays usable after an error)."""
    import asyncio
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="wdfz-", dir="/tmp"))
    try:
        async with ControlServer(folder / "c.sock", _StubHandler()):  # type: ignore[arg-type]
            reader, writer = await asyncio.open_unix_connection(str(folder / "c.sock"))
            replies = []
            for line in lines:
                writer.write(line)
                await writer.drain()
                replies.append(await asyncio.wait_for(reader.readline(), 10))
            writer.close()
            return replies
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("line", [
    b"[" * 50000, b'{"a": [' * 8000, b'{"cmd": ' + b"[" * 20000 + b"]" * 20000 + b"}",
    b'{"a":' * 10000 + b"1" + b"}" * 10000], ids=["arrays", "mixed", "closed", "objects"])
async def test_deep_json_request_gets_an_error_reply(line: bytes) -> None:
    """Formerly KNOWN_DEFECTS "json-depth": RecursionError in control._parse, the client
    dropped with a logged traceback."""
    reply, after = await _replies([line + b"\n", b'{"cmd": "version"}\n'])
    assert json.loads(reply) == {"ok": False, "error": "bad JSON: nested too deeply"}
    assert json.loads(after) == {"ok": True, "result": {}}


@pytest.mark.parametrize("digits", [101, 4301, 5000, 60000])
async def test_huge_integer_request_gets_an_error_reply(digits: int) -> None:
    """Formerly KNOWN_DEFECTS "json-bigint": ValueError (int max_str_digits) in
    control._parse, the client dropped with a logged traceback."""
    big = b"9" * digits
    reply, neg, after = await _replies([b'{"cmd": ' + big + b"}\n",
                                        b'{"cmd": "status", "x": [-' + big + b"]}\n",
                                        b'{"cmd": "version"}\n'])
    for r in (reply, neg):
        assert json.loads(r) == {
            "ok": False, "error": f"bad JSON: a number of {digits} digits (at most 100)"}
    assert json.loads(after) == {"ok": True, "result": {}}
    ok, = await _replies([b'{"cmd": ' + b"9" * 100 + b"}\n"])  # a long but fine number
    assert json.loads(ok) == {"ok": False, "error": '"cmd" must be a string (one of: '
                                                    + ", ".join(COMMANDS) + ")"}


def test_pause_reason_with_a_lone_surrogate_is_refused(tmp_path: Path) -> None:
    """Formerly KNOWN_DEFECTS "surrogate-reason": the pause failed in the store with
    UnicodeEncodeError after the in-memory state was set. Now refused before anything
    changes, naming the field; status and accounts answer, nothing is paused, nothing
    is logged as an error."""
    cfg = write_config(tmp_path, 9)  # nothing is sent: the port is never used
    sock = load_config(cfg, env={}).daemon.socket
    d = DaemonProc(cfg, tmp_path, split_stderr=True)
    try:
        d.start()
        pause = json.loads(raw_request(
            sock, b'{"cmd": "pause", "account": "carol@warmup.test", "reason": "\\ud800"}\n'))
        account = json.loads(raw_request(sock, b'{"cmd": "pause", "account": "\\udfffcarol"}\n'))
        status = json.loads(raw_request(sock, b'{"cmd": "status"}\n'))
        accounts = json.loads(raw_request(sock, b'{"cmd": "accounts"}\n'))
        d.stop()
        errors = d.errors(run=1)
    finally:
        d.close()
    assert pause == {"ok": False, "error": 'pause: "reason" must be valid Unicode text: it '
                                           "holds a lone surrogate (\\ud800 at character 0)"}
    assert account["ok"] is False and '"account"' in account["error"], account
    assert status["ok"] is True and status["result"]["accounts"]["paused"] == 0, status
    assert accounts["ok"] is True, accounts
    assert all(a["paused"] is None for a in accounts["result"]), accounts
    assert not errors, errors


# ================================================================ the control socket

MAX_LINE = inspect.signature(ControlServer).parameters["max_line"].default
MAX_CLIENTS = inspect.signature(ControlServer).parameters["max_clients"].default
IDLE_TIMEOUT = inspect.signature(ControlServer).parameters["idle_timeout"].default
SEEDED = (ALICE, BOB)  # accounts whose sends are seeded: never paused by the fuzzer
VICTIM = CAROL  # paused and resumed at will: it has nothing planned
LATE_MAX = 0.050


@dataclass
class Req:
    """One request line, and what its reply must be: "ok", "error" or "any"."""

    line: bytes
    expect: str
    kind: str


def _j(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")


ODD_STRINGS = [
    "", " ", "\t", "\n", "é", "ünïcödé@exämple.test", "🦆", "\u200b", "\u202e", "\x00",
    "\ufeff", "a" * 3000, "alice@warmup.test\u0000", "ALICE@WARMUP.TEST", "alice", "@", "%s%n",
    "'; DROP TABLE sends; --", "../../etc/passwd", "\\", '"', "null", "None", "0", "\ud800",
    "\udfff", "\ud83d", "\U0010ffff", "\x7f", "\r\n",
]
ODD_DATES = [
    "2026-02-30", "20261201", "0001-01-01", "9999-12-31", "2026-W01-1", "", " ",
    "２０２６-０１-０１", "2026-1-1", "yesterday", "2026-12-01T00:00:00", "-1", "0000-00-00",
    "1e9", "2026-12-01\n", "\ud800", "2026-13-01", "2026-366",
]
JSON_VALUES: list[Any] = [None, True, False, 0, -1, 1.5, 1e308, [], {}, [1, "a"], {"a": 1},
                          "status", 2**64, -0.0]


class RequestGen:
    """Seeded generator of request lines for the control socket."""

    def __init__(self, rng: random.Random) -> None:
        self.r = rng

    def j(self, obj: Any) -> bytes:
        """JSON text of ``obj``: non-ASCII escaped (lone surrogates as valid ``\\udXXX``
        escapes) or written as UTF-8 (lone surrogates then make the line invalid UTF-8)."""
        if self.r.random() < 0.5:
            return json.dumps(obj, ensure_ascii=True).encode("ascii")
        return _j(obj)

    def odd_str(self) -> str:
        r = self.r
        if r.random() < 0.7:
            return r.choice(ODD_STRINGS)
        n = r.randint(0, 40)
        return "".join(chr(r.choice([r.randint(0x20, 0x7e), r.randint(0xa0, 0x2fff),
                                     r.randint(0xd800, 0xdfff), r.randint(0x1f300, 0x1f64f),
                                     r.randint(0, 0x1f)])) for _ in range(n))

    def _bad_account(self) -> str:
        while True:
            s = self.odd_str()
            if s.strip() not in SEEDED:
                return s

    def request(self) -> Req:
        r = self.r
        kind = r.choices(
            ["valid", "schedule", "pause", "unknown_cmd", "bad_type", "missing", "extra",
             "not_object", "bad_json", "bad_utf8", "random_bytes", "deep", "bigint",
             "dup_keys", "nan", "blank", "bom", "whitespace"],
            [30, 10, 8, 6, 8, 3, 4, 4, 6, 3, 6, 1, 1, 2, 2, 2, 1, 3])[0]
        return getattr(self, f"_{kind}")()

    def _valid(self) -> Req:
        r = self.r
        cmd = r.choices(["status", "accounts", "version", "metrics", "reload", "schedule"],
                        [30, 15, 15, 15, 1, 10])[0]
        req: dict[str, Any] = {"cmd": cmd}
        if cmd == "schedule":
            req["account"] = r.choice([*SEEDED, VICTIM])
            if r.random() < 0.5:
                req["date"] = None if r.random() < 0.3 else dt.date.today().isoformat()
        return Req(self.j(req), "ok", "valid")

    def _schedule(self) -> Req:
        r = self.r
        known = r.random() < 0.6
        day = r.choice(ODD_DATES) if r.random() < 0.8 else self.odd_str()
        req = {"cmd": "schedule", "account": r.choice([*SEEDED, VICTIM]) if known
               else self._bad_account(), "date": day}
        return Req(self.j(req), "error" if not known or not _date_ok(day) else "ok", "schedule")

    def _pause(self) -> Req:
        r = self.r
        cmd = r.choice(["pause", "resume"])
        if r.random() < 0.3:
            acc = r.choice([VICTIM, f" {VICTIM} ", f"\t{VICTIM}\n"])
            req: dict[str, Any] = {"cmd": cmd, "account": acc}
            if cmd == "pause" and r.random() < 0.7:
                req["reason"] = r.choice([None, "fuzz", self.odd_str(), "x" * 10000])
            # A reason holding a lone surrogate is refused (as invalid UTF-8, or in a
            # \udXXX escape); else pausing a paused account or resuming an active one may
            # be either.
            line = self.j(req)
            return Req(line, "error" if _lone_surrogate(line) else "any", "pause_victim")
        req = {"cmd": cmd, "account": self._bad_account()}
        if cmd == "pause" and r.random() < 0.5:
            req["reason"] = self.odd_str()
        return Req(self.j(req), "error", "pause_unknown")

    def _unknown_cmd(self) -> Req:
        r = self.r
        cmd = r.choice([self.odd_str(), "STATUS", "status ", "stat", "shutdown", "exec",
                        "__init__", "cmd_status", "_method", "help", "kill"])
        return Req(self.j({"cmd": cmd}), "error", "unknown_cmd")

    def _bad_type(self) -> Req:
        r = self.r
        if r.random() < 0.4:
            cmd_value = r.choice([v for v in JSON_VALUES if not isinstance(v, str)])
            return Req(self.j({"cmd": cmd_value}), "error", "bad_type")
        cmd, (req_args, opt_args) = r.choice([(c, a) for c, a in COMMANDS.items() if any(a)])
        req: dict[str, Any] = {"cmd": cmd}
        for a in req_args:
            req[a] = r.choice([*SEEDED, VICTIM])
        name = r.choice([*req_args, *opt_args])
        bad = r.choice([v for v in JSON_VALUES if not isinstance(v, str)]
                       + ["", "   "] * (name in req_args))
        if bad is None and name in opt_args:
            bad = 5
        req[name] = bad
        return Req(self.j(req), "error", "bad_type")

    def _missing(self) -> Req:
        cmd = self.r.choice(["schedule", "pause", "resume"])
        return Req(self.j({"cmd": cmd, **({"reason": "x"} if cmd == "pause" else {})}), "error",
                   "missing")

    def _extra(self) -> Req:
        r = self.r
        req: dict[str, Any] = {"cmd": r.choice(["status", "version", "metrics", "accounts"])}
        key = r.choice(["account", "x", "", "CMD", self.odd_str()])
        req[key if key != "cmd" else "x"] = r.choice(JSON_VALUES)
        return Req(self.j(req), "error", "extra")

    def _not_object(self) -> Req:
        return Req(self.j(self.r.choice(JSON_VALUES[:12] + [["status"], "status"])), "error",
                   "not_object")

    def _bad_json(self) -> Req:
        r = self.r
        good = self.j({"cmd": "status"})
        cut = r.choice([good[: r.randint(0, len(good) - 1)], b"{cmd: status}", b"{'cmd': 'status'}",
                        b'{"cmd": "status",}', b'{"cmd": "status"} {"cmd": "status"}',
                        b'{"cmd": "status"}}', b'{"cmd" "status"}', b"[1,2", b'"abc',
                        b'{"cmd": "st\\qatus"}', b'{"cmd": "\\u12"}', b"tru", b"-", b"0x10",
                        b'{"cmd": status}', b"\x00", b"/* c */ {}", b"{} // x"])
        if not cut.strip():
            cut = b"{"
        return Req(cut, "error", "bad_json")

    def _bad_utf8(self) -> Req:
        r = self.r
        junk = r.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf",
                         b"\x80\x80", b"\xfe\xff"])
        return Req(b'{"cmd": "' + junk + b'"}', "error", "bad_utf8")

    def _random_bytes(self) -> Req:
        r = self.r
        n = r.choice([1, 2, 10, 100, 1000, r.randint(1, 30000)])
        data = bytes(r.getrandbits(8) for _ in range(n)).replace(b"\n", b"")
        if not data.strip():
            data = b"\x01"
        return Req(data, "error", "random_bytes")

    def _deep(self) -> Req:
        r = self.r
        n = r.choice([100, 1000, 20000, 60000])
        line = r.choice([b"[" * n, b'{"cmd": ' + b"[" * n + b"]" * n + b"}",
                         b'{"a":' * (n // 6) + b"1" + b"}" * (n // 6)])
        return Req(line[: MAX_LINE - 2], "error", "deep")

    def _bigint(self) -> Req:
        n = self.r.choice([100, 4300, 4301, 10000])
        return Req(b'{"cmd": ' + b"9" * n + b"}", "error", "bigint")

    def _dup_keys(self) -> Req:
        return Req(self.r.choice([b'{"cmd": "status", "cmd": "frob"}',
                                  b'{"cmd": "frob", "cmd": "status"}']), "any", "dup_keys")

    def _nan(self) -> Req:
        return Req(self.r.choice([b'{"cmd": NaN}', b'{"cmd": "status", "x": Infinity}',
                                  b'{"cmd": -Infinity}', b"NaN", b'{"cmd": 1e999}']), "error",
                   "nan")

    def _blank(self) -> Req:
        return Req(self.r.choice([b"", b" ", b"\t", b"\r", b" \t \r", b"\x0b\x0c"]), "none",
                   "blank")

    def _bom(self) -> Req:
        return Req(b"\xef\xbb\xbf" + self.j({"cmd": "status"}), "error", "bom")

    def _whitespace(self) -> Req:
        pad = self.r.choice([b" ", b"\t", b"\r", b"  \t\r"])
        return Req(pad + self.j({"cmd": "version"}) + pad, "ok", "whitespace")


def _lone_surrogate(line: bytes) -> bool:
    """Whether a request line is not UTF-8, or holds a lone surrogate once decoded: two
    escapes "\\ud83d\\ude00" that make a pair decode to one valid character (the generator
    draws surrogates one at a time, so two in a row may pair up)."""
    try:
        text = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return True
    return any(0xD800 <= ord(ch) <= 0xDFFF for ch in json.dumps(text, ensure_ascii=False))


def _date_ok(day: str) -> bool:
    """Whether the daemon takes ``day`` as a schedule date: empty means today, else what
    date.fromisoformat reads (more than YYYY-MM-DD: "20261201", "2026-W01-1")."""
    if not day:
        return True
    try:
        dt.date.fromisoformat(day)
    except ValueError:
        return False
    return True


def _is_blank(line: bytes) -> bool:
    return not line.strip()


# ---------------------------------------------------------------- the fuzzing clients


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    clients: int = 0
    messages: int = 0  # complete request lines sent
    bytes: int = 0
    replies: int = 0
    results: int = 0
    errors: int = 0
    refused: int = 0  # "too many control connections"
    drops: int = 0  # connections closed by the daemon before every line was answered
    idle_dropped: int = 0
    too_long: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    drop_kinds: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def fail(self, msg: str) -> None:
        with self.lock:
            if len(self.failures) < 50:
                self.failures.append(msg)

    def add(self, **kw: int) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)


def _connect(path: Path, timeout: float = 10.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(path))
    return s


def _read_lines(s: socket.socket, want: int, timeout: float) -> tuple[list[bytes], bool]:
    """Up to ``want`` reply lines; (lines, closed): closed when the daemon hung up first."""
    buf = b""
    lines: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(lines) < want:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{len(lines)} of {want} replies after {timeout} s")
        s.settimeout(left)
        try:
            chunk = s.recv(1 << 16)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return lines, True
        buf += chunk
        while b"\n" in buf and len(lines) < want:
            line, buf = buf.split(b"\n", 1)
            lines.append(line)
    return lines, False


def _check_reply(raw: bytes, req: Req | None, tally: Tally) -> dict[str, Any] | None:
    try:
        reply = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        tally.fail(f"reply is not JSON: {raw[:300]!r} to {req.line[:200] if req else None!r}")
        return None
    ok = isinstance(reply, dict) and isinstance(reply.get("ok"), bool) and (
        ("result" in reply) if reply["ok"] else isinstance(reply.get("error"), str)
        and bool(reply["error"]))
    if not ok:
        tally.fail(f"reply of the wrong shape: {raw[:300]!r}")
        return None
    tally.add(replies=1, results=int(reply["ok"]), errors=int(not reply["ok"]))
    if req is not None and not (req.expect == "any"
                                or (req.expect == "ok") == reply["ok"]
                                or "too many control connections" in str(reply.get("error"))):
        tally.fail(f"{req.kind}: expected {req.expect}, got {raw[:300]!r} for {req.line[:300]!r}")
    return reply


def session(path: Path, reqs: Sequence[Req], tally: Tally, *, eof_last: bool = False,
            byte_by_byte: bool = False) -> None:
    """One client: send the lines (pipelined), read one reply per non-blank line, check
    each in order. ``eof_last`` sends the last line without its newline, then EOF."""
    tally.add(clients=1)
    try:
        s = _connect(path)
    except OSError as e:  # the backlog full of a flood
        tally.fail(f"connect failed: {e}")
        return
    with s:
        data = b"".join(r.line + b"\n" for r in reqs)
        if eof_last and reqs:
            data = data[:-1]
        try:
            if byte_by_byte:
                for i in range(len(data)):
                    s.sendall(data[i:i + 1])
                    time.sleep(0.002)
            else:
                s.sendall(data)
            if eof_last:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused, or dropped: the replies already sent are still there
        answered = [r for r in reqs if not _is_blank(r.line)]
        tally.add(messages=len(reqs), bytes=len(data))
        with tally.lock:
            tally.kinds.update(r.kind for r in reqs)
        try:
            lines, closed = _read_lines(s, len(answered), timeout=15)
        except TimeoutError as e:
            tally.fail(f"no reply (hang?): {e}; requests {[r.line[:100] for r in reqs]}")
            return
    if lines and b"too many control connections" in lines[0]:
        _check_reply(lines[0], None, tally)
        tally.add(refused=1)
        return
    for raw, req in zip(lines, answered, strict=False):
        _check_reply(raw, req, tally)
    if closed and len(lines) < len(answered):
        first = answered[len(lines)]
        tally.add(drops=1)
        tally.drop_kinds[first.kind] += 1
        if first.expect == "ok":
            tally.fail(f"dropped before answering a valid request {first.line[:200]!r}")


def huge_line(path: Path, tally: Tally, size: int) -> None:
    """A line of ``size`` bytes (newline included): over the limit it gets the "too long"
    error and a hang-up; at or under it, an answer (an error: it is one long JSON string)."""
    tally.add(clients=1, messages=1, bytes=size)
    tally.kinds["huge"] += 1
    body = b'{"cmd": "status", "x": "' + b"a" * max(0, size - 27) + b'"}\n'
    try:
        s = _connect(path)
    except OSError as e:
        tally.fail(f"connect failed: {e}")
        return
    with s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(body)
        try:
            lines, closed = _read_lines(s, 1, timeout=15)
        except TimeoutError as e:
            tally.fail(f"huge line of {size} bytes: {e}")
            return
    if not lines:
        tally.fail(f"huge line of {len(body)} bytes: dropped without a reply")
        return
    reply = _check_reply(lines[0], None, tally)
    if reply is None or "too many control connections" in str(reply.get("error")):
        tally.add(refused=int(reply is not None))
        return
    if len(body) > MAX_LINE + 1:
        if not (reply["ok"] is False and "too long" in reply["error"]):
            tally.fail(f"line of {len(body)} bytes: {lines[0][:200]!r}")
        tally.add(too_long=1)
    elif len(body) <= MAX_LINE - 1 and reply["ok"] is not False:
        tally.fail(f"line of {len(body)} bytes with an extra argument answered ok")


class HeldClients:
    """Connections that stay open without a complete line: idle ones, half lines, the
    flood. A watcher notes when the daemon hangs up on each and what it said."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.socks: dict[socket.socket, tuple[str, float]] = {}  # sock -> (kind, opened at)
        self.closed: list[tuple[str, float, bytes]] = []  # (kind, after s, data received)
        self._data: dict[socket.socket, bytes] = {}
        self._lock = threading.Lock()
        self.left_open = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def open(self, path: Path, kind: str, first: bytes = b"") -> None:
        self.tally.add(clients=1, bytes=len(first))
        self.tally.kinds[kind] += 1
        try:
            s = _connect(path, timeout=5)
            if first:
                s.sendall(first)
        except OSError as e:
            self.tally.fail(f"{kind}: {e}")
            return
        s.setblocking(False)
        with self._lock:
            self.socks[s] = (kind, time.monotonic())
            self._data[s] = b""

    def _watch(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                socks = list(self.socks)
            if not socks:
                time.sleep(0.05)
                continue
            ready, _, _ = select.select(socks, [], [], 0.1)
            for s in ready:
                try:
                    chunk = s.recv(4096)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    chunk = b""
                with self._lock:
                    if chunk:
                        self._data[s] += chunk
                        continue
                    kind, t0 = self.socks.pop(s)
                    self.closed.append((kind, time.monotonic() - t0, self._data.pop(s)))
                s.close()

    def pending(self) -> int:
        with self._lock:
            return len(self.socks)

    def wait_all_closed(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        with self._lock:
            self.left_open = len(self.socks)
            for s in self.socks:
                s.close()
            self.socks.clear()

    def verify(self) -> None:
        """Each held client was either refused at once (one error line, then closed) or
        dropped for idleness after about ``IDLE_TIMEOUT`` with nothing said."""
        t = self.tally
        for kind, after, data in self.closed:
            if data:
                if b"too many control connections" not in data:
                    t.fail(f"{kind}: a held client received {data[:200]!r}")
                elif after > 3.0:
                    t.fail(f"{kind}: refused only after {after:.1f} s")
                else:
                    t.add(refused=1)
                    lines = data.split(b"\n")
                    _check_reply(lines[0], None, t)
            elif not (IDLE_TIMEOUT - 1.5 <= after <= IDLE_TIMEOUT + 5.0):
                t.fail(f"{kind}: hung up on after {after:.1f} s, not about {IDLE_TIMEOUT} s")
            else:
                t.add(idle_dropped=1)
        if self.left_open:
            t.fail(f"{self.left_open} held clients were still open at the end")


def slow_reader(path: Path, tally: Tally, seconds: float) -> None:
    """Pipelines requests and never reads: the daemon must drop it (its writes time out),
    not buffer for ever nor stall."""
    tally.add(clients=1)
    tally.kinds["slow_reader"] += 1
    try:
        s = _connect(path)
    except OSError as e:
        tally.fail(f"slow reader: {e}")
        return
    line = _j({"cmd": "metrics"}) + b"\n"
    sent = 0
    deadline = time.monotonic() + seconds
    s.setblocking(False)
    with s:
        dropped = False
        while time.monotonic() < deadline:
            try:
                n = s.send(line * 64)
                sent += n
            except BlockingIOError:
                time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                dropped = True
                break
        tally.add(messages=sent // len(line), bytes=sent)
        if not dropped:
            # Nothing read so far; the daemon hangs up once a write waits IDLE_TIMEOUT.
            end = time.monotonic() + IDLE_TIMEOUT + 10
            while time.monotonic() < end and not dropped:
                try:
                    s.send(line)
                except BlockingIOError:
                    time.sleep(0.1)
                except (BrokenPipeError, ConnectionResetError):
                    dropped = True
            if not dropped:
                # Unix sockets: the daemon closing shows as EOF once we drain the replies.
                with contextlib.suppress(OSError):
                    while s.recv(1 << 20):
                        pass
                    dropped = True
    if not dropped:
        tally.fail("a client that never reads its replies was never dropped")
    else:
        tally.add(drops=1)
        tally.drop_kinds["slow_reader"] += 1


def fuzz_worker(path: Path, rng: random.Random, tally: Tally, held: HeldClients,
                deadline: float) -> None:
    gen = RequestGen(rng)
    while time.monotonic() < deadline:
        action = rng.choices(["session", "one", "eof", "bytewise", "huge", "half", "abort"],
                             [40, 30, 6, 1, 2, 2, 3])[0]
        try:
            if action == "session":
                session(path, [gen.request() for _ in range(rng.randint(2, 30))], tally)
            elif action == "one":
                session(path, [gen.request()], tally)
            elif action == "eof":
                reqs = [gen.request() for _ in range(rng.randint(1, 3))]
                reqs[-1] = gen._valid() if _is_blank(reqs[-1].line) else reqs[-1]
                session(path, reqs, tally, eof_last=True)
            elif action == "bytewise":
                session(path, [gen._valid()], tally, byte_by_byte=True)
            elif action == "huge":
                size = rng.choice([MAX_LINE - 1, MAX_LINE, MAX_LINE + 1, MAX_LINE + 2,
                                   2 * MAX_LINE, 10 * MAX_LINE, rng.randint(MAX_LINE, 1 << 20)])
                huge_line(path, tally, size)
            elif action == "half":
                if held.pending() < MAX_CLIENTS // 4:
                    full = gen.request().line or b"{}"
                    held.open(path, "half_line", full[: rng.randint(1, max(1, len(full) - 1))])
            else:  # a half request, then the client goes away
                tally.add(clients=1)
                tally.kinds["abort"] += 1
                with contextlib.suppress(OSError), _connect(path) as s:
                    s.sendall(gen.request().line[: rng.randint(1, 50)])
        except Exception as e:  # a bug in the fuzzer itself must not pass silently
            tally.fail(f"fuzzer {action}: {type(e).__name__}: {e}")


def flood(path: Path, held: HeldClients, n: int) -> None:
    """``n`` idle clients at once, more than the daemon's cap."""
    for _ in range(n):
        held.open(path, "flood")


# ---------------------------------------------------------------- the daemon under fuzz


@dataclass
class Lateness:
    values: list[float]

    def pct(self, q: float) -> float:
        v = sorted(self.values)
        return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


def test_control_socket_fuzz_while_firing(tmp_path: Path, long_form: bool) -> None:
    seconds = 300.0 if long_form else 45.0
    workers = 3 if long_form else 2
    floods = 4 if long_form else 1
    skip_near_midnight(seconds + 120)
    seed = int(os.environ.get("WARMUPD_FUZZ_SEED", "20261201"))
    tally = Tally()
    record = tmp_path / "smtp.jsonl"
    with SMTPServerProcess(users=RIG_USERS, record=record) as smtp:
        cfg = write_config(tmp_path, smtp.port, grace="3s", min_gap="2s")
        sock = load_config(cfg, env={}).daemon.socket
        t0 = time.time() + 6.0
        instants = {a: [t0 + i * 2.0 + k * 1.0 for i in range(int((seconds - 4) // 2.0))]
                    for k, a in enumerate(SEEDED)}
        seeded = seed_plan(tmp_path, instants)
        d = DaemonProc(cfg, tmp_path, split_stderr=True)
        held = HeldClients(tally)
        try:
            d.start()
            start = time.monotonic()
            deadline = start + (t0 - time.time()) + seconds
            threads = [threading.Thread(target=fuzz_worker, daemon=True,
                                        args=(sock, random.Random(seed + i), tally, held,
                                              deadline)) for i in range(workers)]
            for th in threads:
                th.start()
            for k in range(floods):
                # The floods are spread over the run, each idle until the daemon drops it.
                at = start + (k + 0.5) * (deadline - start) / floods - IDLE_TIMEOUT / 2
                time.sleep(max(0.0, at - time.monotonic()))
                flood(sock, held, MAX_CLIENTS + 16)
                if k == 0:
                    slow = threading.Thread(target=slow_reader, args=(sock, tally, 3.0),
                                            daemon=True)
                    slow.start()
            for th in threads:
                th.join(max(1.0, deadline - time.monotonic() + 30))
                assert not th.is_alive(), "a fuzzing client hangs"
            slow.join(IDLE_TIMEOUT + 30)
            held.wait_all_closed(IDLE_TIMEOUT + 10)

            wait_rows(tmp_path, lambda rs: all(r["status"] in FINAL for r in rs
                                                  if r["id"] in {s.id for s in seeded}),
                      timeout=30, what="every seeded send to be final")
            assert d.running(), d.tail()
            status = json.loads(raw_request(sock, b'{"cmd": "status"}\n'))
            assert status["ok"] is True, status
            version = json.loads(raw_request(sock, b'{"cmd": "version"}\n'))
            assert version["ok"] is True, version
            d.stop()
            assert d.proc is not None and d.proc.returncode == 0, d.tail()
        finally:
            held.close()
            d.close()
        held.verify()
        records = smtp.records()

    by_mid = Counter(m["message_id"] for m in records)
    rows_by_id = {r["id"]: r for r in send_rows(tmp_path)}
    first_at = {}
    for m in records:
        first_at.setdefault(m["message_id"], m["mail_from_at"])
    late = [first_at[s.message_id] - s.at for s in seeded if s.message_id in first_at]
    lat = Lateness(late)
    not_sent = [rows_by_id[s.id] for s in seeded if rows_by_id[s.id]["status"] != "sent"]
    not_once = [(s.message_id, by_mid[s.message_id]) for s in seeded if by_mid[s.message_id] != 1]

    unexpected = d.errors(run=1)  # no error-level event is expected at all
    held_n = sum(1 for _ in held.closed)
    print(f"\n[fuzz] control socket, {seconds:.0f} s, seed {seed}, {workers} workers: "
          f"{tally.clients:,} clients ({held_n} held idle/half, {floods} flood(s) of "
          f"{MAX_CLIENTS + 16}), {tally.messages:,} request lines, {tally.bytes:,} bytes; "
          f"replies {tally.replies:,} (results {tally.results:,}, errors {tally.errors:,}); "
          f"refused {tally.refused}, dropped idle {tally.idle_dropped}, too long "
          f"{tally.too_long}, other drops {tally.drops} {dict(tally.drop_kinds)}; errors in the "
          f"log: {len(unexpected)}")
    print(f"[fuzz] sends: {len(seeded)} seeded, {len(seeded) - len(not_sent)} sent, "
          f"{len(not_once)} not received exactly once; MAIL FROM lateness p50 "
          f"{lat.pct(0.5) * 1000:.1f} ms, p99 {lat.pct(0.99) * 1000:.1f} ms, max "
          f"{max(late, default=math.nan) * 1000:.1f} ms, min "
          f"{min(late, default=math.nan) * 1000:.1f} ms")
    print(f"[fuzz] request kinds: {dict(sorted(tally.kinds.items()))}")
    print(f"[fuzz] machine load average at the end (1/5/15 min): "
          f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    assert not not_sent and not not_once, (not_sent[:5], not_once[:5])
    assert not tally.failures, "\n".join(tally.failures)
    # Only the client that never reads is dropped: every other line gets its reply.
    assert set(tally.drop_kinds) <= {"slow_reader"}, tally.drop_kinds
    assert not unexpected, unexpected[:5]
    assert max(late) < LATE_MAX and min(late) > -0.001, sorted(late)[-5:]
    assert tally.messages >= (5000 if long_form else 300), tally.messages
    assert tally.refused >= 16 * floods and tally.idle_dropped >= 1
