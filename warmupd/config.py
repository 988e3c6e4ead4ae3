"""TOML -> frozen dataclasses.

Every problem found is collected (not just the first) and names its key path,
e.g. ``accounts[2].smtp.port: must be 1-65535, got 70000``, so that
``warmupd check`` and a failed reload can list them all at once.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import glob
import ipaddress
import json
import math
import os
import pickle
import re
import ssl
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Generic, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import rtoml

from .geometry import layout_spans, period_capacity, split_by_weight

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SECURITY = ("none", "starttls", "tls")
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
EX_CONFIG = 78

_DURATION_RE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*([smhd]))+\s*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_WINDOW_RE = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")
_EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# A password file holds one password; anything larger is not one (and is not read whole).
PASSWORD_FILE_MAX = 64 * 1024
# A CA bundle of every public root is about 200 KiB.
CA_FILE_MAX = 16 * 1024 * 1024


class Secret:
    """A password that cannot leak by accident: repr/str show ``***``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class ConfigError(Exception):
    """One or more problems in a config file; ``problems`` lists each one."""

    def __init__(self, problems: list[str], path: Path | None = None) -> None:
        self.problems = problems
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{len(problems)} problem(s): " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class Period:
    name: str
    windows: tuple[tuple[int, int], ...]  # local minute-of-day [start, end)
    weight: float


@dataclass(frozen=True, slots=True)
class Ramp:
    start: int
    step: int
    max: int

    def target(self, day: int) -> int:
        """Sends on warmup day ``day`` (1-based)."""
        if day < 1:
            return 0
        return min(self.max, self.start + self.step * (day - 1))


@dataclass(frozen=True, slots=True)
class Server:
    host: str
    port: int
    security: str
    username: str
    password: Secret | None = field(repr=False)
    timeout: float = 30.0
    # IMAP only
    junk_folder: str = ""
    poll: float = 300.0
    ca_file: Path | None = None  # trust this CA bundle (a private CA) instead of the system's
    auth: str = "password"  # "password" or "oauth"
    oauth: str | None = None  # the [oauth.NAME] client, for auth = "oauth"

    def tls_context(self) -> ssl.SSLContext:
        """A verifying client context: the system's CAs, or ``ca_file``'s."""
        return _tls_context(str(self.ca_file) if self.ca_file else None)


@dataclass(frozen=True, slots=True)
class ServiceKey:
    """A Google service-account key (its JSON file): signs JWT bearer assertions."""

    client_email: str
    private_key: Secret = field(repr=False)
    private_key_id: str | None
    token_uri: str | None


@dataclass(frozen=True, slots=True)
class OAuthClient:
    """One ``[oauth.NAME]`` table with the provider's endpoints and scopes filled in."""

    name: str
    provider: str  # google | microsoft | generic
    grant: str  # refresh_token | service_account | client_credentials
    client_id: str
    client_secret: Secret | None = field(repr=False)
    token_url: str
    device_authorization_url: str | None
    authorization_url: str | None
    scopes: tuple[str, ...]
    tenant: str | None = None
    key: ServiceKey | None = field(default=None, repr=False)
    timeout: float = 20.0


@dataclass(frozen=True, slots=True)
class Engagement:
    delay_min: float = 180.0
    delay_max: float = 4 * 3600.0
    reply_rate: float = 0.3
    important_rate: float = 0.3
    max_thread_depth: int = 2
    archive_folder: str = ""
    bounce_pause_rate: float = 0.05
    hold_junk_rate: float = 0.10
    # Protections act only on enough data (README: "Thresholds"): bounces over at least
    # bounce_min_sample sends, junk over at least hold_min_sample received messages.
    bounce_min_sample: int = 20
    hold_min_sample: int = 10
    cut_junk_rate: float = 0.25  # junk share above which the day's target is cut too
    pause_junk_rate: float = 0.50  # junk share above which the account pauses
    keep_days: int = 14  # engaged warmup mail older than this is cleaned up (0: never)
    hygiene: str = "trash"  # trash | delete | off


@dataclass(frozen=True, slots=True)
class Reputation:
    """An account's DNS, blocklist and graduation settings (README: "Reputation")."""

    dkim_selectors: tuple[str, ...] = ()
    sending_ips: tuple[str, ...] = ()  # addresses its mail leaves from (SPF and IP blocklists)
    dns_required: bool = False  # hold the ramp while the domain's DNS checks fail
    graduate_score: int = 80
    graduate_day: int = 30
    maintenance_per_day: int = 10  # the daily target once graduated (0: keep the ramp)


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """[daemon] resolver and check settings (dnscheck.py, blocklists.py, reputation.py)."""

    resolver: str = ""  # "ADDRESS[:PORT]"; "" = the system's; "off": no lookups at all
    timeout: float = 5.0
    interval: float = 86400.0  # each domain's DNS checks
    blocklist_interval: float = 6 * 3600.0
    ip_blocklists: tuple[str, ...] = ("zen.spamhaus.org", "bl.spamcop.net", "psbl.surriel.com")
    domain_blocklists: tuple[str, ...] = ("dbl.spamhaus.org",)


@dataclass(frozen=True, slots=True)
class Schedule:
    """The settings that shape a day's plan; equal schedules plan alike."""

    timezone: str
    weekdays: frozenset[int]  # 0 = Monday
    holidays: str
    jitter: float
    micro_jitter: float
    min_gap: float
    max_per_hour: int
    periods: tuple[Period, ...]
    ramp: Ramp

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def effective_gap(self) -> float:
        """The spacing the planner keeps between two sends of one account.

        A gap of 3600/max_per_hour guarantees at most max_per_hour sends in
        any hour (the (n+1)-th would sit exactly one hour after the first).
        """
        gap = self.min_gap
        if self.max_per_hour > 0:
            gap = max(gap, 3600.0 / self.max_per_hour)
        return gap


@dataclass(frozen=True, slots=True)
class Account:
    email: str
    start_date: date
    schedule: Schedule
    smtp: Server | None
    imap: Server | None
    extra_recipients: tuple[str, ...]
    tag: str
    max_attempts: int
    templates: Path | None
    engagement: Engagement
    name: str = ""  # the display name; derived from the address when empty
    reputation: Reputation = field(default_factory=Reputation)

    @property
    def timezone(self) -> str:
        return self.schedule.timezone

    @property
    def domain(self) -> str:
        return self.email.rpartition("@")[2]

    @property
    def display_name(self) -> str:
        return self.name or name_from_address(self.email)


def name_from_address(address: str) -> str:
    """"nora.lind@x" -> "Nora Lind", "nora_lind+w@x" -> "Nora Lind", "nora@x" -> "Nora"."""
    local = address.partition("@")[0].split("+")[0]
    words = [w for w in re.split(r"[._-]+", local) if w and not w.isdigit()]
    return " ".join(w[:1].upper() + w[1:] for w in words) or local

@dataclass(frozen=True, slots=True)
class DaemonSettings:
    state_dir: Path
    socket: Path
    grace: float
    retention: float
    log_format: str
    log_level: str
    max_concurrent_sends: int
    shutdown_timeout: float
    # How long the state database may refuse writes before the daemon stops pinging
    # the systemd watchdog (so that systemd restarts a daemon that can no longer persist).
    store_stall_limit: float = 300.0
    dns: DnsSettings = field(default_factory=DnsSettings)
    # The planner's seed: each account-day's plan draws from (seed, account, date), so
    # `warmupd simulate --seed` with the same seed shows the plan the daemon will make.
    # None: a seed drawn at each start.
    seed: int | None = None
    # The live page and /metrics (web.py): (host, port), None when off.
    http: tuple[str, int] | None = None
    http_allow_remote: bool = False  # a non-loopback http address is refused without it

    @property
    def database(self) -> Path:
        return self.state_dir / "warmupd.db"


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    daemon: DaemonSettings
    accounts: tuple[Account, ...]
    oauth: Mapping[str, OAuthClient] = field(default_factory=dict)

    _by_email: dict[str, Account] = field(default_factory=dict, init=False, repr=False,
                                          compare=False, hash=False)

    def __post_init__(self) -> None:
        self._by_email.update((a.email, a) for a in self.accounts)

    def account(self, email: str) -> Account | None:
        return self._by_email.get(email)

    def secrets(self) -> Iterator[str]:
        for acc in self.accounts:
            for srv in (acc.smtp, acc.imap):
                if srv is not None and srv.password is not None:
                    yield srv.password.reveal()
        for client in self.oauth.values():
            if client.client_secret is not None:
                yield client.client_secret.reveal()
            if client.key is not None:
                yield client.key.private_key.reveal()
                # A PEM key is logged, if ever, line by line: each line of the body too.
                yield from (line for line in client.key.private_key.reveal().splitlines()
                            if len(line) >= 16 and "-----" not in line)


@lru_cache(maxsize=32)
def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)


# ---------------------------------------------------------------- parsing helpers


RESOLVER_OFF = "off"  # [daemon] resolver = "off": no DNS or blocklist lookups (a closed network)


def parse_resolver(spec: str) -> tuple[str, int] | None:
    """``"127.0.0.1:5353"``, ``"127.0.0.1"``, ``"[::1]:53"`` or ``"::1"`` -> (address, port);
    ``""`` (or ``"off"``, no checks at all) -> None (the system's resolver). Raises
    ValueError naming the problem."""
    spec = spec.strip()
    if not spec or spec == RESOLVER_OFF:
        return None
    host, port = spec, 53
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", spec)
    if m:
        host, port = m.group(1), int(m.group(2) or 53)
    elif spec.count(":") == 1:
        host, _, p = spec.partition(":")
        if not p.isdigit():
            raise ValueError(f'must be "ADDRESS" or "ADDRESS:PORT", got {spec!r}')
        port = int(p)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f'must be an IP address with an optional port, like "127.0.0.1:5353", '
                         f"got {spec!r}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1-65535, got {port}")
    return host, port


def parse_duration(value: Any) -> float:
    """"30s", "4m", "1h", "7d" or combinations like "1h30m" -> seconds."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f'must be a duration like "30s", "4m", "1h" or "7d", got {value!r}')
    if isinstance(value, int | float):
        if value == 0:
            return 0.0
        raise ValueError(f'must be a duration string like "30s", "4m", "1h" or "7d", got {value!r}')
    return _duration_text(value)


@lru_cache(maxsize=1024)
def _duration_text(value: str) -> float:
    """parse_duration of a string, kept per string: every account parses the same few
    (a server's timeout defaults to "30s"). A string that raises is not kept."""
    if not _DURATION_RE.match(value):
        raise ValueError(f'must be a duration like "30s", "4m", "1h" or "7d", got {value!r}')
    return float(sum(float(n) * _UNIT[u] for n, u in _DURATION_PART.findall(value)))


def parse_window(value: Any) -> tuple[int, int]:
    if not isinstance(value, str):
        raise ValueError(f'must be a window "HH:MM-HH:MM", got {value!r}')
    m = _WINDOW_RE.match(value.strip())
    if not m:
        raise ValueError(f'must be a window "HH:MM-HH:MM", got {value!r}')
    h1, m1, h2, m2 = (int(x) for x in m.groups())
    for h, mi in ((h1, m1), (h2, m2)):
        if h > 24 or mi > 59 or (h == 24 and mi != 0):
            raise ValueError(f"has an impossible time of day in {value!r}")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if end <= start:
        raise ValueError(f"is inverted or empty: {value!r} ends before it starts")
    return start, end


def fmt_window(w: tuple[int, int]) -> str:
    return f"{w[0] // 60:02d}:{w[0] % 60:02d}-{w[1] // 60:02d}:{w[1] % 60:02d}"


def parse_holiday_region(value: str) -> tuple[str, str | None]:
    country, _, subdiv = value.partition("-")
    return country.upper(), (subdiv.upper() or None)


def check_holiday_region(value: str) -> None:
    import holidays

    country, subdiv = parse_holiday_region(value)
    try:
        holidays.country_holidays(country, subdiv=subdiv, years=[2026])
    except NotImplementedError:
        raise ValueError(
            f"unknown holidays region {value!r}: use an ISO country code like \"IN\" "
            f'or a country-subdivision like "US-NY"'
        ) from None


# ---------------------------------------------------------------- the schema

_DAEMON_KEYS = {
    "state_dir", "grace", "retention", "log_format", "log_level", "socket",
    "max_concurrent_sends", "shutdown_timeout", "include", "store_stall_limit",
    "resolver", "dns_timeout", "dns_interval", "blocklist_interval", "ip_blocklists", "domain_blocklists",
    "seed", "http", "http_allow_remote",
}
_DEFAULT_KEYS = {
    "timezone", "weekdays", "holidays", "jitter", "micro_jitter", "min_gap", "max_per_hour",
    "extra_recipients", "tag", "periods", "ramp", "engagement", "max_attempts", "templates",
    *("dkim_selectors", "sending_ips", "dns_required", "graduate_score", "graduate_day",
      "maintenance_per_day"),
}
_ACCOUNT_KEYS = _DEFAULT_KEYS | {"email", "start_date", "smtp", "imap", "name"}
_SERVER_KEYS = {"ca_file", "host", "port", "security", "username", "password_file", "password_env",
                "password", "timeout", "auth", "oauth"}
_IMAP_KEYS = _SERVER_KEYS | {"junk_folder", "poll"}
_PERIOD_KEYS = {"windows", "weight"}
_RAMP_KEYS = {"start", "step", "max"}
_ENGAGEMENT_KEYS = {"delay", "reply_rate", "important_rate", "max_thread_depth",
                    "archive_folder", "bounce_pause_rate", "hold_junk_rate", "bounce_min_sample",
                    "hold_min_sample", "cut_junk_rate", "pause_junk_rate", "keep_days", "hygiene"}
_TOP_KEYS = {"daemon", "defaults", "accounts", "oauth"}
_OAUTH_KEYS = {"provider", "grant", "client_id", "client_secret_file", "client_secret_env",
               "client_secret", "key_file", "tenant", "token_url", "device_authorization_url",
               "authorization_url", "scopes", "timeout"}

AUTH_METHODS = ("password", "oauth")
OAUTH_PROVIDERS = ("google", "microsoft", "generic")
OAUTH_GRANTS = ("refresh_token", "service_account", "client_credentials")
# The grants each provider offers for mail: Google has no client-credentials grant for
# Gmail (a whole domain is reached through a service account's domain-wide delegation),
# Microsoft no service accounts (a tenant is reached app-only with client credentials).
PROVIDER_GRANTS = {"google": ("refresh_token", "service_account"),
                   "microsoft": ("refresh_token", "client_credentials"),
                   "generic": OAUTH_GRANTS}
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
GOOGLE_AUTHORIZATION_URL = "https://accounts.google.com/o/oauth2/v2/auth"
GOOGLE_SCOPES = ("https://mail.google.com/",)
MICROSOFT_LOGIN = "https://login.microsoftonline.com"
MICROSOFT_DELEGATED_SCOPES = ("https://outlook.office.com/SMTP.Send",
                              "https://outlook.office.com/IMAP.AccessAsUser.All", "offline_access")
MICROSOFT_APP_SCOPES = ("https://outlook.office365.com/.default",)
# Tenants that stand for "any": an app-only token needs the tenant itself.
MICROSOFT_SHARED_TENANTS = ("common", "organizations", "consumers")
# A service-account key file is about 2.4 KiB.
KEY_FILE_MAX = 64 * 1024

BUILTIN_DEFAULTS: dict[str, Any] = {
    "timezone": "UTC",
    "weekdays": ["mon", "tue", "wed", "thu", "fri"],
    "holidays": "",
    "jitter": "3m",
    "micro_jitter": "30s",
    "min_gap": "4m",
    "max_per_hour": 0,
    "extra_recipients": [],
    "tag": "",
    "max_attempts": 3,
    "templates": "",
    "periods": {
        "peak": {"windows": ["09:00-11:00", "14:00-16:00"], "weight": 0.60},
        "normal": {"windows": ["11:00-12:00", "16:00-18:00"], "weight": 0.30},
        "low": {"windows": ["12:00-14:00"], "weight": 0.10},
    },
    "ramp": {"start": 2, "step": 2, "max": 40},
    "engagement": {
        "delay": "3m-4h", "reply_rate": 0.3, "important_rate": 0.3, "max_thread_depth": 2,
        "archive_folder": "", "bounce_pause_rate": 0.05, "hold_junk_rate": 0.10,
        "bounce_min_sample": 20, "hold_min_sample": 10, "cut_junk_rate": 0.25, "pause_junk_rate": 0.50,
        "keep_days": 14, "hygiene": "trash",
    },
    "dkim_selectors": [], "sending_ips": [], "dns_required": False,
    "graduate_score": 80, "graduate_day": 30, "maintenance_per_day": 10,
}
HYGIENE = ("trash", "delete", "off")
# Blocklist zones ask for few queries (Spamhaus's and SpamCop's usage policies); DNS
# records change rarely: neither is checked more often than this (tests: WARMUPD_*_INTERVAL).
MIN_CHECK_INTERVAL = 3600.0


class _Collector:
    def __init__(self) -> None:
        self.problems: list[str] = []
        # Every add(), also one the list already holds: _Memo tells a clean build by it.
        self.reported = 0

    def add(self, path: str, msg: str) -> None:
        self.reported += 1
        line = f"{path}: {msg}"
        if line not in self.problems:  # a [defaults] problem met again via another account
            self.problems.append(line)

    def unknown_keys(self, table: Mapping[str, Any], allowed: set[str], path: str) -> None:
        for key in table:
            if key not in allowed:
                near = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
                hint = f'; did you mean "{near[0]}"?' if near else f"; valid keys: {', '.join(sorted(allowed))}"
                self.add(_join(path, _key(key)), f"unknown key{hint}")


# ---------------------------------------------------------------- one build per distinct setting
#
# In a big pool most accounts inherit [defaults] or share a few settings (a timezone
# among a dozen), so the same Schedule or Engagement would be validated and built
# again for each one. A _Memo keeps, for one load, the frozen object built from given
# raw values and hands that same object to every later account with equal values
# (frozen dataclasses: sharing is safe, and saves memory). Only a build that reported
# no problem at all is kept: raw values with a problem are validated again for every
# account that has them, so each account's message names its own key path.

_T = TypeVar("_T")


def _fingerprint(value: Any) -> bytes:
    """A raw TOML value as a key equal to another's only if the values are the same.

    The pickle of what the TOML parser gives (dicts, lists, strings, ints, floats, bools,
    dates and times) tells apart what ``==`` does not (1, 1.0 and true; -0.0 and 0.0;
    one instant in two offsets) and keeps the order of keys (the order periods are
    listed in); equal values shared differently may give two keys (a second build, no
    harm). It runs in C: a Python walk over the values cost 1.3 s at 100,000 accounts,
    ``repr`` (floats through dtoa) 1.1 s. A value pickle refuses (the parser's own
    time-zone objects in a date-time) falls back to its ``repr``, marked apart."""
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        return b"repr:" + repr(value).encode("utf-8", "surrogatepass")


class _Memo(Generic[_T]):
    """Objects built by one load, by the raw values they were built from."""

    def __init__(self) -> None:
        self._built: dict[bytes, _T] = {}

    def get(self, c: _Collector, raw: Any, build: Callable[[], _T | None]) -> _T | None:
        """The object built earlier from values equal to ``raw``, else ``build()``'s,
        kept for later if it reported no problem."""
        key = _fingerprint(raw)
        if key in self._built:
            return self._built[key]
        reported = c.reported
        value = build()
        if value is not None and c.reported == reported:
            self._built[key] = value
        return value


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    """ZoneInfo(name), kept alive: ZoneInfo's own strong cache holds only 8 zones, so a
    pool over 12 zones read a zone file for every account. Unknown names raise (not kept)."""
    return ZoneInfo(name)


@lru_cache(maxsize=256)
def _holiday_region_problem(value: str) -> str | None:
    """check_holiday_region's verdict per region: building a holiday calendar is slow."""
    try:
        check_holiday_region(value)
    except ValueError as e:
        return str(e)
    return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _key(key: str) -> str:
    """A key of the file as it is written in a key path: bare where TOML allows it, else
    a quoted TOML key with quotes, backslashes and every non-printable character escaped,
    so that a problem stays one line of plain text and an empty key still shows ("")."""
    if _BARE_KEY.fullmatch(key):
        return key
    return '"' + "".join(_escape_char(ch) for ch in key) + '"'


def _escape_char(ch: str) -> str:
    if ch in '"\\':
        return "\\" + ch
    if ch.isprintable():
        return ch
    o = ord(ch)
    return f"\\u{o:04X}" if o <= 0xFFFF else f"\\U{o:08X}"


def _show(text: object) -> str:
    """A name from the file (or a path built from one) inside a message: as it is when
    printable, else quoted and escaped like a key, so that the message stays one line."""
    s = str(text)
    return s if s.isprintable() else '"' + "".join(_escape_char(ch) for ch in s) + '"'


def _table(c: _Collector, raw: Any, path: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        c.add(path, f"must be a table, got {type(raw).__name__}")
        return {}
    return raw


def _num(c: _Collector, value: Any, path: str, *, lo: float | None = None, hi: float | None = None,
         integer: bool = False, what: str = "") -> Any:
    ok_types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        c.add(path, f"must be {'a whole number' if integer else 'a number'}{what}, got {value!r}")
        return None
    if (isinstance(value, float) and math.isnan(value)) or (lo is not None and value < lo) \
            or (hi is not None and value > hi):
        if lo is not None and hi is not None:
            c.add(path, f"must be {lo}-{hi}, got {value}")
        elif lo is not None:
            c.add(path, f"must be at least {lo}{what}, got {value}")
        else:
            c.add(path, f"must be at most {hi}, got {value}")
        return None
    return value


def _dur(c: _Collector, value: Any, path: str, *, positive: bool = False) -> float | None:
    try:
        d = parse_duration(value)
    except ValueError as e:
        c.add(path, str(e))
        return None
    if positive and d <= 0:
        c.add(path, f"must be longer than zero, got {value!r}")
        return None
    return d


def _str(c: _Collector, value: Any, path: str) -> str | None:
    if not isinstance(value, str):
        c.add(path, f"must be a string, got {value!r}")
        return None
    return value


def _http_address(c: _Collector, d: dict[str, Any]) -> tuple[str, int] | None:
    """``daemon.http`` ("127.0.0.1:8025", "[::1]:8025") as (host, port). A non-loopback
    host needs ``http_allow_remote = true``: the page has no authentication of its own."""
    raw = d.get("http")
    remote = d.get("http_allow_remote", False)
    if not isinstance(remote, bool):
        c.add("daemon.http_allow_remote", f"must be true or false, got {remote!r}")
        remote = False
    if raw is None:
        return None
    m = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d{1,5})", raw) if isinstance(raw, str) else None
    if m is None or not 1 <= int(m.group(2)) <= 65535:
        c.add("daemon.http", f'must be "host:port" like "127.0.0.1:8025", got {raw!r}')
        return None
    host, port = m.group(1), int(m.group(2))
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not remote:
        c.add("daemon.http", f"{host} is not a loopback address: the page has no authentication; "
                             "put it behind a reverse proxy that authenticates and set "
                             "daemon.http_allow_remote = true")
        return None
    return host, port


def _no_nul(c: _Collector, value: str, path: str) -> str | None:
    """``value``, a file path from the file, unless it holds a NUL (no path can)."""
    if "\x00" in value:
        c.add(path, f"must be a path without a NUL character, got {value!r}")
        return None
    return value


class _NotAFile(Exception):
    """A path that names something other than a small enough regular file."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _regular_file(file: str | Path, limit: int) -> os.stat_result:
    """stat ``file`` (following symlinks): raise _NotAFile unless it is a regular file
    of at most ``limit`` bytes. A FIFO or a device is never opened (an open() of a FIFO
    waits for a writer for ever; /dev/zero never ends). OSError (FileNotFoundError
    among them) comes out as is."""
    st = os.stat(file)
    if not stat.S_ISREG(st.st_mode):
        raise _NotAFile(f"is {_kind(st.st_mode)}, not a regular file")
    if st.st_size > limit:
        raise _NotAFile(f"is {st.st_size:,} bytes, more than {_size(limit)}")
    return st


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n >= 1024 * 1024 else f"{n // 1024} KiB"


def _read_regular(file: str | Path, limit: int) -> bytes:
    """The bytes of ``file``, a regular file of at most ``limit`` bytes (else _NotAFile):
    checked before it is opened, opened without blocking, and never read past ``limit``
    (in case it was swapped or grew since)."""
    _regular_file(file, limit)
    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _NotAFile(f"is {_kind(st.st_mode)}, not a regular file")
        # One read: on a regular file a read shorter than asked ends at its end of file
        # (a second read to see b"" cost a system call per password file).
        data = os.read(fd, limit + 1)
        if len(data) > limit:
            raise _NotAFile(f"is more than {_size(limit)}")
        return data
    finally:
        os.close(fd)


class _CredentialFolder:
    """$CREDENTIALS_DIRECTORY's entries, listed once per load and indexed by every
    ``_<name>`` suffix: a glob per password file made a 10,000-account load quadratic."""

    def __init__(self, folder: str | None) -> None:
        self.folder = Path(folder) if folder else None
        self._by_suffix: dict[str, list[Path]] | None = None

    def named(self, name: str) -> list[Path]:
        """Sorted entries ``*_<name>``, as systemd 252's LoadCredential=NAME:/a/folder
        names each file of the folder NAME_<file>."""
        if self.folder is None:
            return []
        if self._by_suffix is None:
            index: dict[str, list[Path]] = {}
            try:
                entries = os.listdir(self.folder)
            except OSError:
                entries = []
            for entry in entries:
                at = entry.find("_")
                while at != -1:
                    index.setdefault(entry[at + 1:], []).append(self.folder / entry)
                    at = entry.find("_", at + 1)
            for paths in index.values():
                paths.sort()
            self._by_suffix = index
        return self._by_suffix.get(name, [])


def _resolve_password(c: _Collector, srv: dict[str, Any], path: str, base: Path,
                      env: Mapping[str, str], creds: _CredentialFolder,
                      name: str = "password") -> Secret | None:
    """``<name>_file``, ``<name>_env`` or ``<name>`` (a password, a client secret)."""
    keys = (f"{name}_file", f"{name}_env", name)
    given = [k for k in keys if k in srv]
    if len(given) > 1:
        c.add(path, f"give one of {', '.join(keys[:2])} or {name}, not {' and '.join(given)}")
        return None
    if not given:
        return None
    key = given[0]
    val = srv[key]
    if not isinstance(val, str) or not val:
        c.add(_join(path, key), "must be a non-empty string")
        return None
    if key == name:
        return Secret(val)
    if key == keys[1]:
        if val not in env:
            c.add(_join(path, key), f"environment variable {_show(val)} is not set: export it before starting warmupd")
            return None
        return Secret(env[val])
    what = name.replace("_", " ")
    found = _read_credential(c, val, _join(path, key), base, creds, what, PASSWORD_FILE_MAX)
    if found is None:
        return None
    data, file = found
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        c.add(_join(path, key), f"{what} file {_show(file)} is not UTF-8 text; write the {what} as UTF-8")
        return None
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    secret = text.rstrip("\r\n")
    if not secret:
        c.add(_join(path, key), f"{what} file {_show(file)} is empty")
        return None
    return Secret(secret)


def _read_credential(c: _Collector, val: str, path: str, base: Path, creds: _CredentialFolder,
                     what: str, limit: int) -> tuple[bytes, str] | None:
    """The bytes of a credential file named in the config: an absolute path, or a name
    looked up in $CREDENTIALS_DIRECTORY (systemd's LoadCredential=) first and then
    against the config's folder."""
    if _no_nul(c, val, path) is None:
        return None
    # Plain strings, not Path objects: pathlib's joins cost more than the reads at
    # 100,000 password files.
    candidates: list[str] = []
    if os.path.isabs(val):
        candidates.append(val)
    else:
        if creds.folder is not None:
            name = os.path.basename(val)
            # systemd's LoadCredential= puts each credential here by its name.
            candidates.append(os.path.join(creds.folder, val))
            candidates.append(os.path.join(creds.folder, name))
            # LoadCredential=NAME:/a/folder names each file NAME_<file> (systemd 252).
            candidates.extend(str(x) for x in creds.named(name))
        candidates.append(os.path.join(base, val))
    for cand in candidates:
        try:
            # read_text's text layer costs twice the bytes read at 100,000 files; the
            # callers decode (and fold newlines) themselves.
            return _read_regular(cand, limit), cand
        except FileNotFoundError:
            continue
        except _NotAFile as e:
            c.add(path, f"{what} file {_show(cand)} {e}: point {path.rpartition('.')[2]} "
                        f"at a file that holds only the {what}")
            return None
        except OSError as e:
            c.add(path, f"cannot read {what} file {_show(cand)}: {e.strerror}; check its permissions")
            return None
    tried = ", ".join(_show(x) for x in dict.fromkeys(candidates))
    c.add(path, f"{what} file not found (tried {tried}): create it or fix the path")
    return None


_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "[::1]", "localhost")


def _url(c: _Collector, raw: Any, path: str) -> str | None:
    """An endpoint address: https, or plain http on loopback only (tokens travel in it)."""
    if not isinstance(raw, str) or not raw:
        c.add(path, "must be an https:// address")
        return None
    scheme, sep, rest = raw.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    hostname = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    if not sep or not hostname or scheme.lower() not in ("https", "http"):
        c.add(path, f"must be an https:// address, got {_show(raw)}")
        return None
    if scheme.lower() == "http" and hostname.lower() not in _LOOPBACK_HOSTS:
        c.add(path, f"must use https (tokens travel over it); plain http is for loopback only, got {_show(raw)}")
        return None
    return raw


def _service_key(c: _Collector, t: dict[str, Any], path: str, base: Path,
                 creds: _CredentialFolder) -> tuple[ServiceKey, str | None] | None:
    """A Google service-account JSON key, and the client id it names."""
    raw = t.get("key_file")
    kpath = _join(path, "key_file")
    if not isinstance(raw, str) or not raw:
        c.add(kpath, "is required for grant = service_account: the service account's JSON key file")
        return None
    found = _read_credential(c, raw, kpath, base, creds, "key", KEY_FILE_MAX)
    if found is None:
        return None
    data, file = found
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        c.add(kpath, f"key file {_show(file)} is not JSON: download the service account's key as JSON")
        return None
    if not isinstance(doc, dict) or doc.get("type") != "service_account":
        c.add(kpath, f"key file {_show(file)} is not a service-account key (\"type\": \"service_account\")")
        return None
    missing = [k for k in ("client_email", "private_key") if not isinstance(doc.get(k), str) or not doc[k]]
    if missing:
        c.add(kpath, f"key file {_show(file)} lacks {' and '.join(missing)}: download a new JSON key")
        return None
    if "PRIVATE KEY-----" not in doc["private_key"]:
        c.add(kpath, f"key file {_show(file)}: private_key is not a PEM private key")
        return None
    kid = doc.get("private_key_id")
    uri = doc.get("token_uri")
    cid = doc.get("client_id")
    return (ServiceKey(client_email=doc["client_email"], private_key=Secret(doc["private_key"]),
                       private_key_id=kid if isinstance(kid, str) and kid else None,
                       token_uri=uri if isinstance(uri, str) and uri else None),
            cid if isinstance(cid, str) and cid else None)


def _oauth_client(c: _Collector, name: str, t: dict[str, Any], path: str, base: Path,
                  env: Mapping[str, str], creds: _CredentialFolder) -> OAuthClient | None:
    c.unknown_keys(t, _OAUTH_KEYS, path)
    provider = t.get("provider")
    if provider not in OAUTH_PROVIDERS:
        c.add(_join(path, "provider"), f"must be one of {', '.join(OAUTH_PROVIDERS)}, got {provider!r}")
        return None
    grant = t.get("grant", "refresh_token")
    if grant not in OAUTH_GRANTS:
        c.add(_join(path, "grant"), f"must be one of {', '.join(OAUTH_GRANTS)}, got {grant!r}")
        return None
    ok = True
    if grant not in PROVIDER_GRANTS[provider]:
        c.add(_join(path, "grant"), f"the {provider} provider offers no {grant} grant for mail: "
                                    f"use {' or '.join(PROVIDER_GRANTS[provider])}")
        ok = False
    tenant: str | None = None
    if provider == "microsoft":
        tenant = _str(c, t.get("tenant", "common"), _join(path, "tenant"))
        if tenant is None or not re.fullmatch(r"[A-Za-z0-9.-]+", tenant):
            if tenant is not None:
                c.add(_join(path, "tenant"), f"must be a tenant id or domain like contoso.onmicrosoft.com, got {_show(tenant)}")
            ok = False
        elif grant == "client_credentials" and tenant.lower() in MICROSOFT_SHARED_TENANTS:
            c.add(_join(path, "tenant"), "client_credentials needs the tenant itself (its id or "
                                         f'domain, e.g. "contoso.onmicrosoft.com"), not {tenant!r}')
            ok = False
    elif "tenant" in t:
        c.add(_join(path, "tenant"), "is for provider = \"microsoft\" only: remove it")
        ok = False
    secret = _resolve_password(c, t, path, base, env, creds, name="client_secret")
    if any(k in t for k in ("client_secret_file", "client_secret_env", "client_secret")) and secret is None:
        ok = False
    key: ServiceKey | None = None
    key_client_id: str | None = None
    if grant == "service_account":
        found = _service_key(c, t, path, base, creds)
        if found is None:
            ok = False
        else:
            key, key_client_id = found
    elif "key_file" in t:
        c.add(_join(path, "key_file"), "is for grant = \"service_account\" only: remove it")
        ok = False
    if grant == "client_credentials" and secret is None and ok:
        c.add(path, "grant = \"client_credentials\" needs the client secret: set client_secret_file")
        ok = False
    client_id = t.get("client_id", key_client_id)
    if not isinstance(client_id, str) or not client_id:
        c.add(_join(path, "client_id"), "is required: the OAuth client's id from the provider's console")
        ok = False
    urls: dict[str, str | None] = {"token_url": None, "device_authorization_url": None,
                                   "authorization_url": None}
    if provider == "google":
        urls.update(token_url=GOOGLE_TOKEN_URL, authorization_url=GOOGLE_AUTHORIZATION_URL)
    elif provider == "microsoft" and tenant is not None:
        ms = f"{MICROSOFT_LOGIN}/{tenant}/oauth2/v2.0"
        urls.update(token_url=f"{ms}/token", device_authorization_url=f"{ms}/devicecode",
                    authorization_url=f"{ms}/authorize")
    if key is not None and key.token_uri:
        urls["token_url"] = key.token_uri  # the table's token_url, below, overrides it
    for k in urls:
        if k in t:
            value = _url(c, t[k], _join(path, k))
            ok = ok and value is not None
            urls[k] = value
    if urls["token_url"] is None and ok:
        c.add(_join(path, "token_url"), "is required for provider = \"generic\": the token endpoint's address")
        ok = False
    if "scopes" in t:
        raw = t["scopes"]
        if not isinstance(raw, list) or not all(isinstance(x, str) and x and " " not in x for x in raw):
            c.add(_join(path, "scopes"), 'must be a list of scope strings like ["https://mail.google.com/"]')
            ok = False
            scopes: tuple[str, ...] = ()
        else:
            scopes = tuple(raw)
    elif provider == "google":
        scopes = GOOGLE_SCOPES
    elif provider == "microsoft":
        scopes = MICROSOFT_APP_SCOPES if grant == "client_credentials" else MICROSOFT_DELEGATED_SCOPES
    else:
        scopes = ()
    timeout = _dur(c, t.get("timeout", "20s"), _join(path, "timeout"), positive=True)
    if not ok or timeout is None or urls["token_url"] is None or not isinstance(client_id, str):
        return None
    return OAuthClient(name=name, provider=provider, grant=grant, client_id=client_id,
                       client_secret=secret, token_url=urls["token_url"],
                       device_authorization_url=urls["device_authorization_url"],
                       authorization_url=urls["authorization_url"], scopes=scopes,
                       tenant=tenant, key=key, timeout=timeout)


def _oauth_clients(c: _Collector, raw: Any, base: Path, env: Mapping[str, str],
                   creds: _CredentialFolder) -> tuple[dict[str, OAuthClient], set[str]]:
    """The ``[oauth.NAME]`` clients that are valid, and the names of every one given
    (an account naming a broken client is not reported a second time)."""
    table = _table(c, raw, "oauth")
    clients: dict[str, OAuthClient] = {}
    for name, spec in table.items():
        path = f"oauth.{_key(name)}"
        if not isinstance(spec, dict):
            c.add(path, 'must be a table: [oauth.NAME] with provider = "google" | "microsoft" | "generic"')
            continue
        client = _oauth_client(c, name, spec, path, base, env, creds)
        if client is not None:
            clients[name] = client
    return clients, set(table)


def _server_auth(c: _Collector, srv: dict[str, Any], path: str,
                 clients: tuple[dict[str, OAuthClient], set[str]] | None) -> tuple[str, str | None] | None:
    auth = srv.get("auth", "password")
    if auth not in AUTH_METHODS:
        c.add(_join(path, "auth"), f"must be one of {', '.join(AUTH_METHODS)}, got {auth!r}")
        return None
    name = srv.get("oauth")
    if auth == "password":
        if name is not None:
            c.add(_join(path, "oauth"), 'names an OAuth client but auth is "password": set auth = "oauth"')
            return None
        return auth, None
    if name is None:
        c.add(path, 'auth = "oauth" needs oauth = "NAME", the [oauth.NAME] client to use')
        return None
    valid, given = clients or ({}, set())
    if not isinstance(name, str) or name not in given:
        known = ", ".join(sorted(given)) or "none is configured"
        c.add(_join(path, "oauth"), f"names no [oauth] client: {_show(name)} (known: {known})")
        return None
    for k in ("password_file", "password_env", "password"):
        if k in srv:
            c.add(_join(path, k), 'an auth = "oauth" server takes no password: remove it')
            return None
    if name not in valid:
        return None  # its table's problems are reported under oauth.NAME
    return auth, name


_OWN_SERVER_KEYS = {"username", "password_file", "password_env", "password", "auth", "oauth"}


def _server(c: _Collector, raw: Any, path: str, base: Path, env: Mapping[str, str], *,
            imap: bool, email: str, creds: _CredentialFolder | None = None,
            clients: tuple[dict[str, OAuthClient], set[str]] | None = None,
            memo: _Memo[Server] | None = None) -> Server | None:
    """An ``smtp``/``imap`` table. What accounts share (host, port, security, timeouts,
    ca_file) is checked once per distinct value through ``memo``; the username, the
    password and the auth method are the account's own."""
    srv = _table(c, raw, path)
    if not srv:
        return None
    shared = {k: v for k, v in srv.items() if k not in _OWN_SERVER_KEYS}
    build = partial(_server_settings, c, shared, path, base, imap)
    settings = memo.get(c, (imap, shared), build) if memo is not None else build()
    username = srv.get("username", email)
    if not isinstance(username, str) or not username:
        if "username" in srv:  # else the account's bad email is the problem, reported already
            c.add(_join(path, "username"), "must be a non-empty string")
        username = None
    if creds is None:
        creds = _CredentialFolder(env.get("CREDENTIALS_DIRECTORY"))
    auth = _server_auth(c, srv, path, clients)
    password = _resolve_password(c, srv, path, base, env, creds) if auth and auth[0] == "password" else None
    if settings is None or username is None or auth is None:
        return None
    return Server(host=settings.host, port=settings.port, security=settings.security, username=username,
                  password=password, timeout=settings.timeout, junk_folder=settings.junk_folder,
                  poll=settings.poll, ca_file=settings.ca_file, auth=auth[0], oauth=auth[1])


def _server_settings(c: _Collector, srv: dict[str, Any], path: str, base: Path, imap: bool) -> Server | None:
    """The shared part of a server table (all but ``_OWN_SERVER_KEYS``) as a Server
    without username and password."""
    c.unknown_keys(srv, (_IMAP_KEYS if imap else _SERVER_KEYS) - _OWN_SERVER_KEYS, path)
    host = srv.get("host")
    if not isinstance(host, str) or not host:
        c.add(_join(path, "host"), "is required: the server's host name or address")
        host = None
    security = srv.get("security", "tls" if imap else "starttls")
    if security not in SECURITY:
        c.add(_join(path, "security"), f"must be one of none, starttls, tls, got {security!r}")
        security = None
    default_port = {"none": 143 if imap else 25, "starttls": 143 if imap else 587,
                    "tls": 993 if imap else 465}.get(security or "", 0)
    port = _num(c, srv.get("port", default_port), _join(path, "port"), lo=1, hi=65535, integer=True)
    timeout = _dur(c, srv.get("timeout", "30s"), _join(path, "timeout"), positive=True)
    junk = srv.get("junk_folder", "")
    if not isinstance(junk, str):
        c.add(_join(path, "junk_folder"), "must be a folder name string")
        junk = ""
    poll = _dur(c, srv.get("poll", "5m"), _join(path, "poll"), positive=True) if imap else 300.0
    ca_file: Path | None = None
    if "ca_file" in srv:
        raw_ca = srv["ca_file"]
        if not isinstance(raw_ca, str) or not raw_ca:
            c.add(_join(path, "ca_file"), "must be the path of a PEM CA bundle")
        elif _no_nul(c, raw_ca, _join(path, "ca_file")) is not None:
            ca_file = (base / raw_ca).resolve()
            try:
                with _suppress_missing():  # OpenSSL reports it as the other problems
                    _regular_file(ca_file, CA_FILE_MAX)
                _tls_context(str(ca_file))
            except (OSError, ssl.SSLError, _NotAFile) as e:
                c.add(_join(path, "ca_file"), f"cannot load CA bundle {_show(ca_file)}: {e}; "
                                              "give a readable PEM file")
                ca_file = None
    if host is None or security is None or port is None or timeout is None or poll is None:
        return None
    return Server(host=host, port=port, security=security, username="", password=None,
                  timeout=timeout, junk_folder=junk, poll=poll, ca_file=ca_file)


@contextlib.contextmanager
def _suppress_missing() -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        pass


def _periods(c: _Collector, raw: Any, path: str) -> tuple[Period, ...] | None:
    table = _table(c, raw, path)
    if not table:
        c.add(path, "at least one period with windows and a weight is required")
        return None
    periods: list[Period] = []
    ok = True
    for name, spec in table.items():
        ppath = _join(path, _key(name))
        spec = _table(c, spec, ppath)
        c.unknown_keys(spec, _PERIOD_KEYS, ppath)
        windows = spec.get("windows")
        if not isinstance(windows, list) or not windows:
            c.add(_join(ppath, "windows"), 'must be a non-empty list like ["09:00-11:00"]')
            ok = False
            continue
        parsed: list[tuple[int, int]] = []
        for i, w in enumerate(windows):
            try:
                parsed.append(parse_window(w))
            except ValueError as e:
                c.add(f"{ppath}.windows[{i}]", str(e))
                ok = False
        weight = _num(c, spec.get("weight"), _join(ppath, "weight"), lo=0, hi=1)
        if weight is None:
            ok = False
            continue
        periods.append(Period(name=name, windows=tuple(sorted(parsed)), weight=float(weight)))
    if not ok:
        return None
    # No two windows (of one period or of two) may overlap: a minute belongs to one period.
    spans = sorted((w, p.name) for p in periods for w in p.windows)
    for (a, pa), (b, pb) in zip(spans, spans[1:], strict=False):
        if b[0] < a[1]:
            c.add(path, f"window {fmt_window(b)} of {_key(pb)} overlaps window {fmt_window(a)} "
                        f"of {_key(pa)}")
            ok = False
    total = sum(p.weight for p in periods)
    if abs(total - 1.0) > 1e-6:
        c.add(path, f"weights must sum to 1, got {round(total, 6)}")
        ok = False
    return tuple(periods) if ok else None


def _ramp(c: _Collector, raw: dict[str, Any], path: str,
          where: Callable[[str], str] | None = None) -> Ramp | None:
    """``where(key)``: the key path of a key of the merged table (its own or [defaults]')."""
    at = where or partial(_join, path)
    c.unknown_keys(raw, _RAMP_KEYS, path)
    vals = {}
    for k in ("start", "step", "max"):
        v = _num(c, raw.get(k), at(k), lo=1, integer=True, what=" (zero or negative ramp values plan nothing)")
        vals[k] = v
    if None in vals.values():
        return None
    return Ramp(**vals)


def _engagement(c: _Collector, raw: dict[str, Any], path: str,
                where: Callable[[str], str] | None = None) -> Engagement | None:
    """``where(key)``: the key path of a key of the merged table (its own or [defaults]')."""
    at = where or partial(_join, path)
    c.unknown_keys(raw, _ENGAGEMENT_KEYS, path)
    ok = True
    delay = raw.get("delay")
    dmin = dmax = None
    if isinstance(delay, str) and "-" in delay:
        lo, _, hi = delay.partition("-")
        try:
            dmin, dmax = parse_duration(lo), parse_duration(hi)
        except ValueError:
            pass
    if dmin is None or dmax is None or dmin <= 0 or dmax < dmin:
        c.add(at("delay"), f'must be a range of durations like "3m-4h", got {delay!r}')
        ok = False
    rates: dict[str, float] = {}
    for k in ("reply_rate", "important_rate", "bounce_pause_rate", "hold_junk_rate", "cut_junk_rate",
              "pause_junk_rate"):
        rate = _num(c, raw.get(k), at(k), lo=0, hi=1)
        if rate is None:
            ok = False
        else:
            rates[k] = float(rate)
    depth = _num(c, raw.get("max_thread_depth"), at("max_thread_depth"), lo=1, integer=True)
    archive = _str(c, raw.get("archive_folder", ""), at("archive_folder"))
    ints = {k: _num(c, raw.get(k), at(k), lo=lo, integer=True)
            for k, lo in (("bounce_min_sample", 1), ("hold_min_sample", 1), ("keep_days", 0))}
    hygiene = raw.get("hygiene")
    if hygiene not in HYGIENE:
        c.add(at("hygiene"), f"must be one of {', '.join(HYGIENE)}, got {hygiene!r}")
        ok = False
    if ok and not rates["hold_junk_rate"] <= rates["cut_junk_rate"] <= rates["pause_junk_rate"]:
        c.add(at("cut_junk_rate"), f"the junk bands must rise: hold_junk_rate {rates['hold_junk_rate']} <= "
                                   f"cut_junk_rate {rates['cut_junk_rate']} <= pause_junk_rate "
                                   f"{rates['pause_junk_rate']}")
        ok = False
    if not ok or dmin is None or dmax is None or depth is None or archive is None or None in ints.values():
        return None
    return Engagement(delay_min=dmin, delay_max=dmax, max_thread_depth=depth, archive_folder=archive,
                      reply_rate=rates["reply_rate"], important_rate=rates["important_rate"],
                      bounce_pause_rate=rates["bounce_pause_rate"],
                      hold_junk_rate=rates["hold_junk_rate"], cut_junk_rate=rates["cut_junk_rate"],
                      pause_junk_rate=rates["pause_junk_rate"], bounce_min_sample=ints["bounce_min_sample"],
                      hold_min_sample=ints["hold_min_sample"], keep_days=ints["keep_days"],
                      hygiene=str(hygiene))


def _engagement_table(c: _Collector, raw: Any, path: str,
                      where: Callable[[str], str] | None = None) -> Engagement | None:
    """The merged engagement value (a table, if valid) -> Engagement."""
    return _engagement(c, _table(c, raw, path), path, where)


def _origin_path(acc: dict[str, Any], path_i: str, key: str) -> str:
    """The key path of a merged key: the account's, or [defaults]' when the account does
    not set it (a [defaults] problem is then reported once, where it is in the file)."""
    return f"{path_i if key in acc else 'defaults'}.{key}"


def _merged_key_path(own: Any, table: str, path_i: str, key: str) -> str:
    """The key path of ``key`` of an account's merged ``table`` (ramp, engagement): the
    account's own when it sets that key, else [defaults]' (the builtin value, if the
    file does not set it, is never reported)."""
    if isinstance(own, dict) and key in own:
        return f"{path_i}.{table}.{key}"
    return f"defaults.{table}.{key}"


# The merged keys _schedule reads: equal values make an equal Schedule.
_SCHEDULE_KEYS = ("timezone", "weekdays", "holidays", "jitter", "micro_jitter", "min_gap",
                  "max_per_hour", "periods", "ramp")


def _schedule(c: _Collector, merged: dict[str, Any], path: str, origin: dict[str, str]) -> Schedule | None:
    def p(key: str) -> str:
        return origin.get(key, path) + "." + key if origin.get(key) else _join(path, key)

    def ramp_key(key: str) -> str:
        # A key of an account's ramp that the account does not set is [defaults]'.
        own = origin.get("ramp") == "" and origin.get(f"ramp.{key}") != "defaults"
        return _join(p("ramp"), key) if own or not origin else f"defaults.ramp.{key}"

    tzname = merged.get("timezone")
    tz_ok = False
    if not isinstance(tzname, str):
        c.add(p("timezone"), f"must be an IANA zone name like \"Europe/London\", got {tzname!r}")
    else:
        try:
            _zone(tzname)
            tz_ok = True
        except (ZoneInfoNotFoundError, ValueError, OSError):
            # OSError: a folder of the zone database ("America"), a name too long for a file.
            near = difflib.get_close_matches(tzname, _zone_names(), n=1, cutoff=0.6)
            hint = f'; did you mean "{near[0]}"?' if near else ""
            c.add(p("timezone"), f"unknown timezone {tzname!r}{hint}")
    wd = merged.get("weekdays")
    weekdays: set[int] = set()
    if not isinstance(wd, list) or not wd:
        c.add(p("weekdays"), 'must be a non-empty list like ["mon", "tue"]')
    else:
        for i, name in enumerate(wd):
            if isinstance(name, str) and name.lower()[:3] in WEEKDAYS and len(name) >= 3:
                weekdays.add(WEEKDAYS.index(name.lower()[:3]))
            else:
                c.add(f"{p('weekdays')}[{i}]", f"must be one of {', '.join(WEEKDAYS)}, got {name!r}")
    hol = merged.get("holidays", "")
    if not isinstance(hol, str):
        c.add(p("holidays"), 'must be a region string like "IN" or "US-NY", or ""')
        hol = ""
    elif hol:
        hol_problem = _holiday_region_problem(hol)
        if hol_problem is not None:
            c.add(p("holidays"), hol_problem)
    jitter = _dur(c, merged.get("jitter"), p("jitter"))
    micro = _dur(c, merged.get("micro_jitter"), p("micro_jitter"))
    gap = _dur(c, merged.get("min_gap"), p("min_gap"))
    mph = _num(c, merged.get("max_per_hour"), p("max_per_hour"), lo=0, integer=True)
    periods = _periods(c, merged.get("periods"), p("periods"))
    ramp = _ramp(c, _table(c, merged.get("ramp"), p("ramp")), p("ramp"), ramp_key)
    if (jitter is None or micro is None or gap is None or mph is None or periods is None
            or ramp is None or not tz_ok or not isinstance(tzname, str) or not weekdays):
        return None
    sched = Schedule(timezone=tzname, weekdays=frozenset(weekdays), holidays=hol,
                     jitter=jitter, micro_jitter=micro, min_gap=gap, max_per_hour=mph,
                     periods=periods, ramp=ramp)
    # Feasibility: each period's share of the ramp's max must fit in its windows.
    g = sched.effective_gap
    spans = layout_spans(sched.periods, g)
    shares = split_by_weight(sched.ramp.max, [pp.weight for pp in sched.periods])
    fits = True
    for per, share in zip(sched.periods, shares, strict=True):
        cap = period_capacity(spans[per.name], g)
        if share > cap:
            fits = False
            c.add(_join(p("periods"), _key(per.name)),
                  f"cannot fit its share of ramp.max ({share} sends) with min_gap {merged.get('min_gap')}"
                  + (f" and max_per_hour {mph}" if mph else "")
                  + f": at most {cap} fit in its windows; widen the windows, lower ramp.max or min_gap")
    return sched if fits else None


_ZONES: list[str] | None = None


def _zone_names() -> list[str]:
    global _ZONES
    if _ZONES is None:
        import zoneinfo

        _ZONES = sorted(zoneinfo.available_timezones())
    return _ZONES


def _merge(defaults: dict[str, Any], acc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Account keys win over [defaults]; ramp and engagement merge key by key,
    periods are replaced as a whole (their weights must sum to 1 together)."""
    merged = dict(defaults)
    origin = {k: "defaults" for k in defaults}
    for k, v in acc.items():
        if k in ("ramp", "engagement") and isinstance(v, dict) and isinstance(merged.get(k), dict):
            origin.update((f"{k}.{kk}", "defaults") for kk in merged[k] if kk not in v)
            merged[k] = {**merged[k], **v}
        else:
            merged[k] = v
        origin[k] = ""
    return merged, origin


# ---------------------------------------------------------------- reputation settings

_SELECTOR_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_ZONE_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+\.?$")


def _display_name(c: _Collector, raw: Any, path: str) -> str:
    if not isinstance(raw, str):
        c.add(path, f'must be a display name string like "Nora Lind", got {raw!r}')
        return ""
    if len(raw) > 100 or any(not ch.isprintable() for ch in raw):
        c.add(path, f"must be one line of at most 100 printable characters, got {_show(raw)[:120]}")
        return ""
    return raw.strip()


def _str_list(c: _Collector, raw: Any, path: str, ok: Callable[[str], bool], what: str) -> tuple[str, ...] | None:
    if not isinstance(raw, list):
        c.add(path, f"must be a list of {what}")
        return None
    out: list[str] = []
    good = True
    for i, x in enumerate(raw):
        if isinstance(x, str) and ok(x.strip()):
            out.append(x.strip())
        else:
            c.add(f"{path}[{i}]", f"must be {what.rstrip('s')}, got {x!r}")
            good = False
    return tuple(dict.fromkeys(out)) if good else None


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_REPUTATION_KEYS = ("dkim_selectors", "sending_ips", "dns_required", "graduate_score", "graduate_day",
                    "maintenance_per_day")


def _reputation(c: _Collector, merged: dict[str, Any], at: Callable[[str], str]) -> Reputation | None:
    selectors = _str_list(c, merged.get("dkim_selectors"), at("dkim_selectors"),
                          lambda s: bool(_SELECTOR_RE.match(s)), 'DKIM selector names like "google"')
    ips = _str_list(c, merged.get("sending_ips"), at("sending_ips"), _is_ip,
                    'IP addresses like "192.0.2.10"')
    required = merged.get("dns_required")
    if not isinstance(required, bool):
        c.add(at("dns_required"), f"must be true or false, got {required!r}")
    score = _num(c, merged.get("graduate_score"), at("graduate_score"), lo=0, hi=100, integer=True)
    day = _num(c, merged.get("graduate_day"), at("graduate_day"), lo=1, integer=True)
    maint = _num(c, merged.get("maintenance_per_day"), at("maintenance_per_day"), lo=0, integer=True)
    if selectors is None or ips is None or not isinstance(required, bool) or score is None \
            or day is None or maint is None:
        return None
    return Reputation(dkim_selectors=selectors, sending_ips=ips, dns_required=required,
                      graduate_score=score, graduate_day=day, maintenance_per_day=maint)


def _dns_settings(c: _Collector, d: dict[str, Any]) -> DnsSettings:
    base = DnsSettings()
    resolver = d.get("resolver", "")
    if not isinstance(resolver, str):
        c.add("daemon.resolver", f'must be an address like "127.0.0.1:5353", got {resolver!r}')
        resolver = ""
    else:
        try:
            parse_resolver(resolver)
        except ValueError as e:
            c.add("daemon.resolver", str(e))
            resolver = ""
    timeout = _dur(c, d.get("dns_timeout", "5s"), "daemon.dns_timeout", positive=True)
    intervals: dict[str, float] = {}
    for key, default in (("dns_interval", "1d"), ("blocklist_interval", "6h")):
        v = _dur(c, d.get(key, default), f"daemon.{key}", positive=True)
        if v is not None and v < MIN_CHECK_INTERVAL:
            c.add(f"daemon.{key}", f"must be at least 1h (blocklists' usage policies and DNS caching), "
                                   f"got {d.get(key)!r}")
            v = None
        intervals[key] = v if v is not None else 0.0
    zones: dict[str, tuple[str, ...]] = {}
    for key in ("ip_blocklists", "domain_blocklists"):
        z = _str_list(c, d.get(key, list(getattr(base, key))), f"daemon.{key}",
                      lambda s: bool(_ZONE_RE.match(s)), 'DNS zone names like "zen.spamhaus.org"')
        zones[key] = tuple(x.rstrip(".").lower() for x in z) if z is not None else ()
    return DnsSettings(resolver=resolver, timeout=timeout or base.timeout,
                       interval=intervals["dns_interval"] or base.interval,
                       blocklist_interval=intervals["blocklist_interval"] or base.blocklist_interval,
                       ip_blocklists=zones["ip_blocklists"], domain_blocklists=zones["domain_blocklists"])


# ---------------------------------------------------------------- included account files
#
# [daemon] include = ["accounts.d/*.toml"] adds the [[accounts]] of every matching file
# after the main file's. Relative paths inside an included file (password_file,
# ca_file, templates) resolve exactly as in the main file: against the main config's
# folder, and for password_file in $CREDENTIALS_DIRECTORY first, never against the
# included file's own folder, so an account can move between files unchanged.


def _account_entries(c: _Collector, raw: Any, prefix: str) -> list[tuple[str, Any]]:
    """``[[accounts]]`` of one file as (key path, table); ``prefix`` names an included file."""
    if not isinstance(raw, list):
        c.add(prefix + "accounts", "must be an array of tables: write each account as [[accounts]]")
        return []
    return [(f"{prefix}accounts[{i}]", acc) for i, acc in enumerate(raw)]


def _where(path_i: str) -> str:
    """An entry's key path as a reference inside another message: "accounts[3] of eu.toml"."""
    label, sep, rest = path_i.rpartition(": ")
    return f"{rest} of {label}" if sep else path_i


def _include_files(c: _Collector, raw: Any, config_path: Path) -> list[str]:
    """The files ``daemon.include`` matches, relative to the config's folder where they
    are inside it: every pattern's matches together, in name order, each file once."""
    if not isinstance(raw, list):
        c.add("daemon.include", 'must be a list of glob patterns like ["accounts.d/*.toml"], '
                                f"got {raw!r}")
        return []
    base = config_path.parent
    main = Path(os.path.normpath(config_path))
    found: dict[Path, str] = {}
    for i, pattern in enumerate(raw):
        if not isinstance(pattern, str) or not pattern:
            c.add(f"daemon.include[{i}]", f'must be a glob pattern like "accounts.d/*.toml", got {pattern!r}')
            continue
        if _no_nul(c, pattern, f"daemon.include[{i}]") is None:
            continue
        # glob.glob skips dot files (editor swap files); root_dir keeps relative matches relative.
        for match in glob.glob(pattern, root_dir=base, recursive=True):
            full = Path(os.path.normpath(base / match))
            if full == main or not full.is_file():
                continue  # "*.toml" next to the main file must not include the main file
            found[full] = full.relative_to(base).as_posix() if full.is_relative_to(base) else str(full)
    return [found[f] for f in sorted(found)]


def _included_entries(c: _Collector, label: str, base: Path) -> list[tuple[str, Any]]:
    """One included file's account entries; its problems are prefixed with its name."""
    data = _read_toml(c, base / label, label)
    if data is None:
        return []
    for key in data:
        if key != "accounts":
            c.add(f"{label}: {_key(key)}", "an included file holds [[accounts]] tables only; "
                                     "move this key to the main config file")
    return _account_entries(c, data.get("accounts", []), f"{label}: ")


def _read_toml(c: _Collector, file: Path, label: str) -> dict[str, Any] | None:
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        c.add(label, "not UTF-8 text")
        return None
    except OSError as e:
        c.add(label, f"cannot read: {e.strerror}")
        return None
    try:
        return rtoml.loads(text)
    except rtoml.TomlParsingError as e:
        # The parser's message already carries "at line L column C".
        c.add(label, f"TOML syntax error: {e}")
        return None


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate ``path``; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    path = Path(path).absolute()
    try:
        raw_bytes = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found; pass --config with the path of your config.toml"]) from None
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    try:
        data = rtoml.loads(raw_bytes.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    except rtoml.TomlParsingError as e:
        # The parser's message already carries "at line L column C".
        raise ConfigError([f"{path}: TOML syntax error: {e}"]) from None
    # The cyclic collector finds nothing to free in a load (no cycles are made) but, with
    # hundreds of thousands of new containers, would walk them all again and again: a
    # third of a 100,000-account load. Off for the load, as it was before if it was on.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return build_config(data, path, env)
    finally:
        if collecting:
            gc.enable()


def build_config(data: dict[str, Any], path: Path, env: Mapping[str, str]) -> Config:
    c = _Collector()
    base = path.parent
    c.unknown_keys(data, _TOP_KEYS, "")

    d = _table(c, data.get("daemon"), "daemon")
    c.unknown_keys(d, _DAEMON_KEYS, "daemon")
    state_dir_raw = d.get("state_dir", "var")
    state_dir = base
    if _str(c, state_dir_raw, "daemon.state_dir") is not None \
            and _no_nul(c, state_dir_raw, "daemon.state_dir") is not None:
        state_dir = (base / state_dir_raw).resolve()
    sock_raw = d.get("socket")
    socket_path = state_dir / "warmupd.sock"
    if sock_raw is not None and _str(c, sock_raw, "daemon.socket") is not None \
            and _no_nul(c, sock_raw, "daemon.socket") is not None:
        socket_path = (base / sock_raw).resolve()
    # Under systemd, StateDirectory=/RuntimeDirectory= win over the file's paths.
    if env.get("STATE_DIRECTORY"):
        state_dir = Path(env["STATE_DIRECTORY"].split(":")[0])
        if sock_raw is None:
            socket_path = state_dir / "warmupd.sock"
    if env.get("RUNTIME_DIRECTORY"):
        socket_path = Path(env["RUNTIME_DIRECTORY"].split(":")[0]) / "warmupd.sock"
    grace = _dur(c, d.get("grace", "5m"), "daemon.grace", positive=True)
    retention = _dur(c, d.get("retention", "7d"), "daemon.retention", positive=True)
    log_format = d.get("log_format", "auto")
    if log_format not in LOG_FORMATS:
        c.add("daemon.log_format", f"must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    log_level = d.get("log_level", "info")
    if not isinstance(log_level, str) or log_level.lower() not in LOG_LEVELS:
        c.add("daemon.log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
        log_level = "info"
    mcs = _num(c, d.get("max_concurrent_sends", 50), "daemon.max_concurrent_sends", lo=1, integer=True)
    stop_to = _dur(c, d.get("shutdown_timeout", "30s"), "daemon.shutdown_timeout", positive=True)
    stall = _dur(c, d.get("store_stall_limit", "5m"), "daemon.store_stall_limit", positive=True)
    dns_settings = _dns_settings(c, d)
    seed = None if d.get("seed") is None else _num(c, d["seed"], "daemon.seed", lo=0, integer=True)
    http = _http_address(c, d)

    defaults_raw = _table(c, data.get("defaults"), "defaults")
    c.unknown_keys(defaults_raw, _DEFAULT_KEYS, "defaults")
    defaults: dict[str, Any] = dict(BUILTIN_DEFAULTS)
    for k, v in defaults_raw.items():
        if k in ("ramp", "engagement"):
            # Checked here, once, under the path they have in the file: an account that
            # overrides a part of the table merges the rest, and must not report
            # [defaults]' unknown keys (nor its wrong type) again under its own path.
            table = _table(c, v, f"defaults.{k}")
            allowed = _RAMP_KEYS if k == "ramp" else _ENGAGEMENT_KEYS
            c.unknown_keys(table, allowed, f"defaults.{k}")
            defaults[k] = {**BUILTIN_DEFAULTS[k],
                           **{kk: vv for kk, vv in table.items() if kk in allowed}}
        else:
            defaults[k] = v

    # Every account entry with the key path its problems are reported under: the main
    # file's first, then each included file's, e.g. "accounts.d/eu.toml: accounts[3]".
    entries = _account_entries(c, data.get("accounts", []), "")
    include_files = _include_files(c, d.get("include", []), path)
    for label in include_files:
        entries.extend(_included_entries(c, label, base))
    if not entries:
        where = " (daemon.include matched no file)" if "include" in d and not include_files else ""
        c.add("accounts", f"no accounts configured{where}: add at least two [[accounts]] entries")

    creds = _CredentialFolder(env.get("CREDENTIALS_DIRECTORY"))
    clients = _oauth_clients(c, data.get("oauth", {}), base, env, creds)

    emails: dict[str, str] = {}  # lower-cased email -> where it was first seen
    accounts: list[Account] = []
    account_paths: list[str] = []
    schedule_cache: dict[str, Schedule | None] = {}
    engagement_cache: dict[str, Engagement | None] = {}
    schedules: _Memo[Schedule] = _Memo()  # by the account's own _SCHEDULE_KEYS values
    engagements: _Memo[Engagement] = _Memo()  # by the merged engagement table
    servers: _Memo[Server] = _Memo()  # by the shared part of an smtp/imap table
    reputations: _Memo[Reputation] = _Memo()  # by the merged _REPUTATION_KEYS values
    for i, (path_i, acc_raw) in enumerate(entries):
        if not isinstance(acc_raw, dict):
            c.add(path_i, "must be a table")
            continue
        c.unknown_keys(acc_raw, _ACCOUNT_KEYS, path_i)
        email = acc_raw.get("email")
        if not isinstance(email, str) or not _EMAIL_RE.match(email):
            c.add(f"{path_i}.email", f"must be an email address like alice@example.com, got {email!r}")
            email = None
        else:
            email = email.strip()
            key = email.lower()
            if key in emails:
                c.add(f"{path_i}.email", f"duplicate account {email!r}, already {emails[key]}")
            else:
                emails[key] = _where(path_i)
        sd = acc_raw.get("start_date")
        start_date: date | None = None
        if isinstance(sd, datetime):  # a TOML date-time: a date subclass
            c.add(f"{path_i}.start_date", f"must be a date YYYY-MM-DD without a time of day "
                                          f"(write {sd.date().isoformat()}), got {sd.isoformat()}")
        elif isinstance(sd, date):
            start_date = sd
        elif isinstance(sd, str):
            try:
                start_date = date.fromisoformat(sd)
            except ValueError:
                c.add(f"{path_i}.start_date", f"must be a date YYYY-MM-DD, got {sd!r}")
        elif sd is None:
            c.add(f"{path_i}.start_date", 'is required: the first possible warmup day, e.g. "2026-12-01"')
        else:
            c.add(f"{path_i}.start_date", f"must be a date YYYY-MM-DD, got {sd!r}")
        merged, origin = _merge(defaults, acc_raw)
        overrides = any(k in acc_raw for k in _SCHEDULE_KEYS)
        cache_key = "defaults" if not overrides else f"acc{i}"
        if cache_key in schedule_cache:
            sched = schedule_cache[cache_key]
        else:
            # Problems in [defaults] are reported once, under their own path.
            # Keyed by the account's own schedule values only: the rest are [defaults]',
            # the same for every account of this load.
            own = {k: merged.get(k) for k in _SCHEDULE_KEYS if k in acc_raw}
            sched = schedules.get(c, own, partial(
                _schedule, c, merged, path_i if overrides else "defaults", origin if overrides else {}))
            schedule_cache[cache_key] = sched
        eng_origin = "defaults" if "engagement" not in acc_raw else path_i
        eng_key = f"eng{i}" if "engagement" in acc_raw else "eng-defaults"
        if eng_key in engagement_cache:
            eng = engagement_cache[eng_key]
        else:
            eng = engagements.get(c, merged.get("engagement"), partial(
                _engagement_table, c, merged.get("engagement"), f"{eng_origin}.engagement",
                partial(_merged_key_path, acc_raw.get("engagement"), "engagement", path_i)))
            engagement_cache[eng_key] = eng
        smtp = None
        if "smtp" in acc_raw:
            smtp = _server(c, acc_raw["smtp"], f"{path_i}.smtp", base, env, imap=False, email=email or "",
                           creds=creds, clients=clients, memo=servers)
        else:
            c.add(f"{path_i}.smtp", "is required: { host = ..., port = ..., security = ..., username = ..., password_file = ... }")
        imap = None
        if "imap" in acc_raw:
            imap = _server(c, acc_raw["imap"], f"{path_i}.imap", base, env, imap=True, email=email or "",
                           creds=creds, clients=clients, memo=servers)
        extras_raw = merged.get("extra_recipients", [])
        extras: list[str] = []
        xpath = f"{path_i if 'extra_recipients' in acc_raw else 'defaults'}.extra_recipients"
        if not isinstance(extras_raw, list):
            c.add(xpath, "must be a list of email addresses")
        else:
            for j, x in enumerate(extras_raw):
                if isinstance(x, str) and _EMAIL_RE.match(x):
                    extras.append(x)
                else:
                    c.add(f"{xpath}[{j}]", f"must be an email address, got {x!r}")
        at = partial(_origin_path, acc_raw, path_i)
        tag = merged.get("tag", "")
        if not isinstance(tag, str):
            c.add(at("tag"), "must be a string")
            tag = ""
        max_attempts = _num(c, merged.get("max_attempts"), at("max_attempts"), lo=1, integer=True)
        templates_raw = merged.get("templates", "")
        templates: Path | None = None
        if isinstance(templates_raw, str) and templates_raw:
            if _no_nul(c, templates_raw, at("templates")) is not None:
                templates = (base / templates_raw).resolve()
                try:
                    os.stat(templates)
                except OSError as e:
                    what = ("does not exist" if isinstance(e, FileNotFoundError | NotADirectoryError)
                            else f"cannot be read: {e.strerror}")
                    c.add(at("templates"), f"{_show(templates)} {what}: point it at a "
                                                 "template file or folder, or remove it")
                    templates = None
        elif not isinstance(templates_raw, str):
            c.add(at("templates"), "must be a path string")
        display = _display_name(c, acc_raw.get("name", ""), f"{path_i}.name")
        reputation = reputations.get(c, [merged.get(k) for k in _REPUTATION_KEYS],
                                     partial(_reputation, c, merged, at))
        if email and start_date and sched and eng and max_attempts is not None and reputation:
            accounts.append(Account(
                email=email, start_date=start_date, schedule=sched, smtp=smtp, imap=imap,
                extra_recipients=tuple(extras), tag=tag, max_attempts=max_attempts,
                templates=templates, engagement=eng, name=display, reputation=reputation))
            account_paths.append(path_i)

    if len(accounts) == len(entries):
        for path_i, acc in zip(account_paths, accounts, strict=True):
            if len(accounts) < 2 and not acc.extra_recipients:
                c.add(path_i, f"{acc.email} has no possible recipient: add another account to the pool or set extra_recipients")

    # A value is None only where its problem was recorded; the checks narrow the types.
    if c.problems or grace is None or retention is None or stop_to is None or stall is None:
        raise ConfigError(c.problems, path)
    daemon = DaemonSettings(state_dir=state_dir, socket=socket_path, grace=grace,
                            retention=retention, log_format=log_format,
                            log_level=log_level.lower(), max_concurrent_sends=mcs,
                            shutdown_timeout=stop_to, store_stall_limit=stall, dns=dns_settings,
                            seed=seed, http=http, http_allow_remote=d.get("http_allow_remote") is True)
    return Config(path=path, daemon=daemon, accounts=tuple(accounts), oauth=clients[0])


def read_socket_path(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Path:
    """Only the socket location from a config file: works while the rest is broken.
    Under systemd ($RUNTIME_DIRECTORY set) the daemon's socket lives there."""
    env = os.environ if env is None else env
    if env.get("RUNTIME_DIRECTORY"):
        return Path(env["RUNTIME_DIRECTORY"].split(":")[0]) / "warmupd.sock"
    p = Path(path).absolute()
    d: dict[str, Any] = {}
    try:
        daemon = rtoml.loads(p.read_text(encoding="utf-8")).get("daemon")
        if isinstance(daemon, dict):  # else (daemon = 3) the defaults: `check` reports it
            d = daemon
    except (OSError, UnicodeDecodeError, rtoml.TomlParsingError):
        # Fall back to a line scan so a syntax error elsewhere doesn't hide the socket.
        try:
            for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
                m = re.match(r'\s*(socket|state_dir)\s*=\s*"([^"]*)"', line)
                if m:
                    d[m.group(1)] = m.group(2)
        except OSError:
            pass
    base = p.parent
    sock = d.get("socket")
    if isinstance(sock, str):
        return (base / sock).resolve()
    state = d.get("state_dir", "var")
    return (base / (state if isinstance(state, str) else "var")).resolve() / "warmupd.sock"
