"""`warmupctl`: talk to a running warmupd over its control socket.

Exit codes: 0 success, 1 the daemon answered with an error (or a reload reported errors),
64 usage, 69 no daemon answers on the socket, 76 an unreadable reply, 77 permission denied.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

EX_OK = 0
EX_ERROR = 1
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_PROTOCOL = 76
EX_NOPERM = 77

SYSTEM_SOCKET = Path("/run/warmupd/warmupd.sock")
_MAX_REPLY = 64 * 1024 * 1024
_HINT = "is warmupd running? start it with `warmupd run --config ...` or `systemctl start warmupd`"


class _Unavailable(Exception):
    pass


class _Fail(Exception):
    def __init__(self, msg: str, code: int) -> None:
        super().__init__(msg)
        self.code = code


# --- socket resolution and transport ------------------------------------------------------


def resolve_socket(socket_arg: str | None, config_arg: str | None) -> Path:
    """--socket, else --config's socket, else $WARMUPD_SOCKET, the system one, ./config.toml's."""
    if socket_arg:
        return Path(socket_arg)
    if config_arg:
        from .config import read_socket_path

        return read_socket_path(config_arg)
    env = os.environ.get("WARMUPD_SOCKET")
    if env:
        return Path(env)
    if SYSTEM_SOCKET.exists():
        return SYSTEM_SOCKET
    from .config import read_socket_path

    return read_socket_path("config.toml")


def request(path: Path, req: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send one request, return the decoded reply object."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(os.fspath(path))
        except FileNotFoundError:
            raise _Unavailable(f"no control socket at {path}") from None
        except ConnectionRefusedError:
            raise _Unavailable(f"nothing listens on {path} (connection refused)") from None
        except PermissionError:
            raise _Fail(
                f"permission denied on {path}: run as the warmupd user or a member of the "
                "socket's group",
                EX_NOPERM,
            ) from None
        except (TimeoutError, BlockingIOError):
            raise _Unavailable(f"warmupd on {path} did not accept within {timeout:g}s") from None
        except OSError as e:
            raise _Unavailable(f"cannot connect to {path}: {e.strerror or e}") from None
        buf = bytearray()
        try:
            s.sendall(json.dumps(req).encode("utf-8") + b"\n")
            while b"\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > _MAX_REPLY:
                    raise _Fail(f"reply from {path} is too large", EX_PROTOCOL)
        except TimeoutError:
            raise _Unavailable(f"warmupd on {path} did not answer within {timeout:g}s") from None
        except OSError as e:
            if not buf:
                raise _Unavailable(
                    f"connection to {path} failed before an answer: {e.strerror or e}"
                ) from None
    finally:
        s.close()
    line = bytes(buf).split(b"\n", 1)[0]
    if not line.strip():
        raise _Unavailable(f"warmupd on {path} closed the connection without answering")
    try:
        reply = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _Fail(f"unreadable reply from {path}: {e}", EX_PROTOCOL) from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise _Fail(f"unexpected reply from {path}: {line[:200]!r}", EX_PROTOCOL)
    return reply


# --- human output ----------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    out = []
    for r in [headers, *rows]:
        out.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    return "\n".join(out)


def _s(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_s(x)}" for k, x in v.items()) or "-"
    if isinstance(v, list):
        return ", ".join(_s(x) for x in v) or "-"
    return str(v)


def _duration(seconds: Any) -> str:
    try:
        s = int(float(seconds))
    except (TypeError, ValueError):
        return _s(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h}h {m}m"
    if h:
        return f"{h}h {m}m"
    if m:
        return f"{m}m {s}s"
    return f"{s}s"


def _parse_time(v: Any) -> datetime | None:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return datetime.fromtimestamp(v, UTC)
    if isinstance(v, str):
        try:
            return datetime.fromisoformat(v.replace("Z", "+00:00") if v.endswith("Z") else v)
        except ValueError:
            return None
    return None


def _when(v: Any) -> str:
    """Local wall-clock time with its UTC offset, as the daemon gave it."""
    t = _parse_time(v)
    if t is None:
        return _s(v)
    off = t.strftime("%z")
    off = f" {off[:3]}:{off[3:]}" if off else ""
    return f"{t:%Y-%m-%d %H:%M:%S}{off}"


def _clock(v: Any) -> str:
    t = _parse_time(v)
    return _s(v) if t is None else f"{t:%H:%M:%S}"


_STATUSES = ("pending", "sending", "sent", "failed", "skipped", "uncertain")


def _counts(d: Any) -> str:
    if not isinstance(d, dict):
        return _s(d)
    keys = [k for k in _STATUSES if k in d] + [k for k in d if k not in _STATUSES]
    return "  ".join(f"{k} {_s(d[k])}" for k in keys) or "-"


def render_status(r: dict[str, Any]) -> str:
    lines: list[str] = []

    def row(label: str, value: str) -> None:
        lines.append(f"{label:<13}{value}")

    row("warmupd", f"{_s(r.get('version'))}, up {_duration(r.get('uptime_s'))}")
    loaded = r.get("config_loaded_at")
    row("config", f"{_s(r.get('config_path'))} (loaded {_when(loaded)})")
    err = r.get("last_reload_error")
    row("last reload", f"FAILED: {err}" if err else "ok")
    acc = r.get("accounts") or {}
    if isinstance(acc, dict):
        row("accounts", f"{_s(acc.get('active'))} active, {_s(acc.get('paused'))} paused")
        for p in acc.get("paused_list") or []:
            if isinstance(p, dict):
                reason = p.get("reason")
                lines.append(f"{'':<13}  paused {_s(p.get('email'))}"
                             + (f": {reason}" if reason else ""))
    else:
        row("accounts", _s(acc))
    row("today", _counts(r.get("today")))
    if "engagement_today" in r:
        row("engagement", _counts(r.get("engagement_today")))
    holds = r.get("holds")
    if holds:
        if isinstance(holds, list):
            row("holds", str(len(holds)))
            for h in holds:
                if isinstance(h, dict):
                    who = h.get("account") or h.get("email")
                    rest = ", ".join(f"{k} {_when(v) if k in ('until', 'at') else _s(v)}"
                                     for k, v in h.items()
                                     if k not in ("account", "email", "reason"))
                    reason = h.get("reason")
                    lines.append(f"{'':<13}  {_s(who)}" + (f" ({rest})" if rest else "")
                                 + (f": {reason}" if reason else ""))
                else:
                    lines.append(f"{'':<13}  {_s(h)}")
        else:
            row("holds", _s(holds))
    row("timers", f"{_s(r.get('pending_timers'))} pending")
    nxt = r.get("next_send")
    if isinstance(nxt, dict):
        row("next send", f"{_s(nxt.get('account'))} at {_when(nxt.get('at'))}")
    else:
        row("next send", "none" if nxt is None else _s(nxt))
    lag = r.get("loop_lag_ms")
    row("loop lag", f"{lag:.1f} ms" if isinstance(lag, int | float) else _s(lag))
    tzs = r.get("timezones")
    if isinstance(tzs, dict) and tzs:
        cols = [k for k in _STATUSES if any(isinstance(v, dict) and k in v for v in tzs.values())]
        for v in tzs.values():
            if isinstance(v, dict):
                cols += [k for k in v if k not in cols]
        rows = [[tz, *(_s(v.get(c, 0)) if isinstance(v, dict) else "" for c in cols)]
                for tz, v in sorted(tzs.items())]
        lines.append("")
        lines.append(_table(["TIMEZONE", *(c.upper() for c in cols)], rows))
    return "\n".join(lines)


def _account_state(a: dict[str, Any]) -> str:
    parts = []
    if a.get("paused") is not None and a.get("paused") is not False:
        reason = a["paused"]
        parts.append("paused" + (f": {reason}" if isinstance(reason, str) and reason else ""))
    hold = a.get("hold")
    if isinstance(hold, dict):
        text = f"hold until {_when(hold.get('until'))}"
        if hold.get("reason"):
            text += f": {hold['reason']}"
        parts.append(text)
    elif hold:
        parts.append(f"hold: {_s(hold)}")
    return "; ".join(parts) or "active"


def render_accounts(items: list[Any]) -> str:
    if not items:
        return "no accounts"
    engage = any(isinstance(a, dict) and "engagement_today" in a for a in items)
    headers = ["EMAIL", "TIMEZONE", "DAY", "SENT/TARGET"]
    if engage:
        headers.append("ENGAGEMENT")
    headers.append("STATE")
    rows = []
    for a in items:
        if not isinstance(a, dict):
            continue
        row = [
            _s(a.get("email")),
            _s(a.get("timezone")),
            _s(a.get("warmup_day")),
            f"{_s(a.get('sent_today'))}/{_s(a.get('target_today'))}",
        ]
        if engage:
            row.append(_counts(a.get("engagement_today")) if a.get("engagement_today") else "-")
        row.append(_account_state(a))
        rows.append(row)
    return _table(headers, rows)


def render_schedule(items: list[Any], account: str, day: str | None) -> str:
    if not items:
        return f"nothing planned for {account} on {day or 'today'}"
    dates = {t.date() for t in (_parse_time(i.get("at")) for i in items if isinstance(i, dict))
             if t is not None}
    one_day = len(dates) == 1
    rows = []
    for i in items:
        if not isinstance(i, dict):
            continue
        status = _s(i.get("status"))
        note = i.get("reason") or ""
        if not note and status == "sent" and i.get("sent_at"):
            note = f"sent {_clock(i['sent_at']) if one_day else _when(i['sent_at'])}"
        rows.append([
            _s(i.get("id")),
            _clock(i.get("at")) if one_day else _when(i.get("at")),
            _s(i.get("period")),
            _s(i.get("recipient")),
            status,
            _s(i.get("attempts")),
            str(note),
        ])
    head = f"{account}: {len(rows)} send(s)"
    if one_day:
        t = _parse_time(items[0].get("at")) if isinstance(items[0], dict) else None
        off = t.strftime("%z") if t else ""
        head += f" on {next(iter(dates))}" + (f" (local time, UTC{off[:3]}:{off[3:]})"
                                              if off else "")
    table = _table(["ID", "TIME", "PERIOD", "RECIPIENT", "STATUS", "TRIES", "REASON"], rows)
    return f"{head}\n{table}"


def _extras(d: dict[str, Any], skip: set[str]) -> str:
    rest = [f"{k}={_s(v)}" for k, v in d.items() if k not in skip]
    return f" ({', '.join(rest)})" if rest else ""


def render_pause(r: Any, account: str) -> str:
    if not isinstance(r, dict):
        return f"paused {account}: {_s(r)}"
    who = r.get("account") or r.get("email") or account
    reason = r.get("reason")
    return (f"paused {who}" + (f": {reason}" if reason else "")
            + _extras(r, {"account", "email", "reason", "paused", "ok"}))


def render_resume(r: Any, account: str) -> str:
    if not isinstance(r, dict):
        return f"resumed {account}: {_s(r)}"
    who = r.get("account") or r.get("email") or account
    return f"resumed {who}" + _extras(r, {"account", "email", "paused", "ok"})


def render_version(r: Any) -> str:
    from . import __version__

    if not isinstance(r, dict):
        return f"warmupd {_s(r)}"
    ver = r.get("version")
    text = f"warmupd {_s(ver)}" + _extras(r, {"version"})
    if ver is not None and str(ver) != __version__:
        text += f" [warmupctl {__version__}]"
    return text


def _change(c: Any) -> str:
    if isinstance(c, dict):
        return ", ".join(f"{k} {_s(v)}" for k, v in c.items())
    return _s(c)


# --- command line --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # --json is accepted before and after the command; SUPPRESS keeps the subparser from
    # resetting a value given before it.
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="print the daemon's result as JSON")
    p = argparse.ArgumentParser(
        prog="warmupctl",
        description="Query and control a running warmupd over its control socket.",
        epilog="Socket: --socket, else --config's, else $WARMUPD_SOCKET, else "
               f"{SYSTEM_SOCKET} if it exists, else the one of ./config.toml.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help="control socket path")
    where.add_argument("--config", metavar="PATH",
                       help="read the socket path from this warmupd config file")
    p.add_argument("--json", action="store_true", default=False,
                   help="print the daemon's result as JSON")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the daemon (default 10)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("status", parents=[after], help="daemon overview")
    sub.add_parser("accounts", parents=[after], help="accounts and today's progress")
    sp = sub.add_parser("schedule", parents=[after], help="one account's planned sends")
    sp.add_argument("email")
    sp.add_argument("--date", metavar="YYYY-MM-DD", help="local date (default: today)")
    sp = sub.add_parser("pause", parents=[after], help="stop sending for an account")
    sp.add_argument("email")
    sp.add_argument("--reason", metavar="TEXT")
    sp = sub.add_parser("resume", parents=[after], help="resume a paused account")
    sp.add_argument("email")
    sub.add_parser("reload", parents=[after], help="re-read the configuration file")
    sub.add_parser("metrics", parents=[after], help="Prometheus metrics text")
    sub.add_parser("version", parents=[after], help="the daemon's version")
    sp = sub.add_parser("report", help="write the HTML report of what the daemon did")
    sp.add_argument("--days", type=int, default=14, metavar="N", help="local days, up to today (default 14)")
    sp.add_argument("--out", required=True, metavar="FILE.html", help="where to write it (- for stdout)")
    return p


def _request_for(a: argparse.Namespace) -> dict[str, Any]:
    req: dict[str, Any] = {"cmd": a.command}
    if a.command == "schedule":
        req["account"] = a.email
        if a.date:
            req["date"] = a.date
    elif a.command == "pause":
        req["account"] = a.email
        if a.reason:
            req["reason"] = a.reason
    elif a.command == "resume":
        req["account"] = a.email
    elif a.command == "report":
        req["days"] = str(a.days)
    return req


def _run(a: argparse.Namespace) -> int:
    path = resolve_socket(a.socket, a.config)
    try:
        # A report over a large pool takes the daemon a while to gather.
        reply = request(path, _request_for(a), max(a.timeout, 120.0) if a.command == "report" else a.timeout)
    except _Unavailable as e:
        print(f"warmupctl: {e}; {_HINT}", file=sys.stderr)
        return EX_UNAVAILABLE
    except _Fail as e:
        print(f"warmupctl: {e}", file=sys.stderr)
        return e.code
    if not reply["ok"]:
        print(f"warmupctl: {reply.get('error') or 'unknown error'}", file=sys.stderr)
        return EX_ERROR
    result = reply.get("result")
    cmd = a.command
    if cmd == "report":
        return _write_report(result, a.out)
    if a.json:
        if cmd == "metrics" and isinstance(result, str):
            sys.stdout.write(result if result.endswith("\n") or not result else result + "\n")
        else:
            print(json.dumps(result, indent=2, ensure_ascii=False))
        if cmd == "reload" and isinstance(result, dict) and (
            result.get("errors") or result.get("ok") is False
        ):
            return EX_ERROR
        return EX_OK
    if cmd == "status":
        print(render_status(result) if isinstance(result, dict) else _s(result))
    elif cmd == "accounts":
        print(render_accounts(result) if isinstance(result, list) else _s(result))
    elif cmd == "schedule":
        print(render_schedule(result, a.email, a.date) if isinstance(result, list)
              else _s(result))
    elif cmd == "pause":
        print(render_pause(result, a.email))
    elif cmd == "resume":
        print(render_resume(result, a.email))
    elif cmd == "metrics":
        text = result if isinstance(result, str) else _s(result)
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    elif cmd == "version":
        print(render_version(result))
    elif cmd == "reload":
        return _print_reload(result)
    return EX_OK


def _write_report(result: Any, out: str) -> int:
    html = result.get("html") if isinstance(result, dict) else None
    if not isinstance(html, str):
        print("warmupctl: the daemon's report reply holds no HTML", file=sys.stderr)
        return EX_PROTOCOL
    if out == "-":
        sys.stdout.write(html)
        return EX_OK
    try:
        Path(out).write_text(html, encoding="utf-8")
    except OSError as e:
        print(f"warmupctl: cannot write the report to {out}: {e.strerror or e}", file=sys.stderr)
        return EX_ERROR
    print(f"report of the last {result.get('days')} days written to {out}")
    return EX_OK


def _print_reload(r: Any) -> int:
    if not isinstance(r, dict):
        print(f"reloaded: {_s(r)}")
        return EX_OK
    errors = r.get("errors") or []
    changes = r.get("changes") or []
    if errors or r.get("ok") is False:
        print(f"warmupctl: reload failed: {len(errors)} error(s)", file=sys.stderr)
        for e in errors:
            print(f"  {_change(e)}", file=sys.stderr)
        return EX_ERROR
    if not changes:
        print("reloaded: no changes")
    else:
        print(f"reloaded: {len(changes)} change(s)")
        for c in changes:
            print(f"  {_change(c)}")
    return EX_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        a = parser.parse_args(argv)
    except SystemExit as e:  # argparse: 0 for --help, 2 for usage errors
        return EX_OK if e.code in (0, None) else EX_USAGE
    if a.timeout <= 0:
        parser.print_usage(sys.stderr)
        print("warmupctl: --timeout must be positive", file=sys.stderr)
        return EX_USAGE
    try:
        code = _run(a)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `warmupctl metrics | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EX_OK
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
