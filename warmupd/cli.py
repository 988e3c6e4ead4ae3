"""Argument parsing for `warmupd` (the daemon and its offline tools); nothing else."""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from datetime import date, datetime, timedelta

from . import __version__
from .calendar import (
    iso_local,
    iso_utc,
    local_date,
    next_sending_day,
    projected_warmup_day,
    why_not_sending,
)
from .config import EX_CONFIG, Account, Config, ConfigError, load_config
from .planner import Pool, day_target, new_send_target, plan_day, plan_stats
from .planning import plan_rng

EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        where = f"{e.path}: " if e.path else ""
        print(f"warmupd: {where}invalid config, {len(e.problems)} problem(s):", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None


def stored_states(cfg: Config) -> dict[str, tuple[int, str]]:
    """{email: (warmup_day, advanced_through)} from an existing database, read-only, in
    one query; empty without a usable one."""
    from .store import read_states

    return {e: (st.warmup_day, st.advanced_through) for e, st in read_states(cfg.daemon.database).items()}


def warmup_day_for(account: Account, day: date, stored: dict[str, tuple[int, str]]) -> int:
    """The warmup day on ``day``: the stored one, with the days after it projected as
    uninterrupted operation; without history, the projection from start_date."""
    from .calendar import is_sending_day

    if account.email not in stored:
        return projected_warmup_day(account, day)
    if why_not_sending(account, day) is not None:
        return 0
    wday, through = stored[account.email]
    d = date.fromisoformat(through) + timedelta(days=1)
    while d < day:
        if is_sending_day(account.schedule, d):
            wday += 1
        d += timedelta(days=1)
    return wday


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if args.dns:
        import asyncio

        from .reputation import check_report

        print(asyncio.run(check_report(cfg)))
        return 0
    now = time.time()
    by_tz: dict[str, list[Account]] = {}
    for a in cfg.accounts:
        by_tz.setdefault(a.timezone, []).append(a)
    print(f"{cfg.path}: OK, {len(cfg.accounts)} account(s) in {len(by_tz)} timezone(s)")
    print(f"state: {cfg.daemon.database}   socket: {cfg.daemon.socket}")
    for tz, accs in sorted(by_tz.items()):
        print(f"  {tz}: {len(accs)}")
    print()
    print(f"{'account':<34} {'tz':<22} {'today':>5} {'tmrw':>5}  next sending day")
    stored = stored_states(cfg)
    for a in cfg.accounts:
        today = local_date(a.timezone, now)
        tmrw = today + timedelta(days=1)
        t0 = day_target(a, warmup_day_for(a, today, stored)) if why_not_sending(a, today) is None else 0
        t1 = day_target(a, warmup_day_for(a, tmrw, stored)) if why_not_sending(a, tmrw) is None else 0
        nxt = next_sending_day(a, today)
        print(f"{a.email:<34} {a.timezone:<22} {t0:>5} {t1:>5}  {nxt.isoformat() if nxt else 'none'}")
    _check_tokens(cfg)
    return 0


def _check_tokens(cfg: Config) -> None:
    """OAuth accounts whose refresh token is not stored yet, with the command that fixes
    each (the daemon runs the others and shows these paused)."""
    from .oauth import authorize_command, client_of
    from .store import stored_token_keys

    wanting = [(a, c) for a in cfg.accounts if (c := client_of(a, cfg)) is not None
               and c.grant == "refresh_token"]
    if not wanting:
        return
    stored = stored_token_keys(cfg.daemon.database) or set()
    missing = [(a, c) for a, c in wanting if (a.email, c.name) not in stored]
    print()
    print(f"OAuth: {len(wanting) - len(missing)} of {len(wanting)} refresh-token account(s) authorized")
    for a, _ in missing:
        print(f"  {a.email}: no refresh token stored: run `{authorize_command(cfg, a.email)}`")


def cmd_authorize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .authorize import authorize, run

    cfg = _load(args.config)
    token_file = Path(args.refresh_token_file) if args.refresh_token_file else None
    return run(authorize(cfg, args.account, out=sys.stdout, stdin=sys.stdin, token_file=token_file,
                         flow=args.flow))


def cmd_import_accounts(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .authorize import import_accounts, run

    cfg = _load(args.config)
    out = Path(args.out) if args.out else cfg.path.parent / "accounts.d" / f"{Path(args.csv).stem}.toml"
    return run(import_accounts(cfg, Path(args.csv), out, force=args.force))


def cmd_preview(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    account = cfg.account(args.account)
    if account is None:
        known = ", ".join(a.email for a in cfg.accounts)
        print(f"warmupd: no account {args.account!r} in {cfg.path}; known: {known}", file=sys.stderr)
        return EX_USAGE
    if args.date:
        try:
            day = date.fromisoformat(args.date)
        except ValueError:
            print(f"warmupd: --date must be YYYY-MM-DD, got {args.date!r}", file=sys.stderr)
            return EX_USAGE
    else:
        day = local_date(account.timezone, time.time())
    # With a seed, the draw the daemon makes for that account-day (daemon.seed = the same seed).
    rng = plan_rng(args.seed, account.email, day) if args.seed is not None else random.Random()
    reason = why_not_sending(account, day)
    wday = warmup_day_for(account, day, stored_states(cfg))
    pool = Pool([a.email for a in cfg.accounts])
    sends = plan_day(account, day, wday, rng, pool) if reason is None else []
    if args.json:
        if reason:
            print(f"warmupd: nothing planned on {day}: {reason}", file=sys.stderr)
        out = [{"at": iso_local(account.timezone, s.at), "at_utc": iso_utc(s.at), "period": s.period,
                "recipient": s.recipient, "message_id": s.message_id} for s in sends]
        print(json.dumps(out, indent=2))
        return 0
    if reason:
        print(f"{account.email} on {day.isoformat()}: nothing planned ({reason})")
        return 0
    target = day_target(account, wday)
    new = new_send_target(account, target)
    extra = f" ({new} new, {target - new} left for replies)" if new != target else ""
    print(f"{account.email} on {day.isoformat()} ({account.timezone}), warmup day {wday}, "
          f"target {target}{extra}")
    print(f"{'#':>3}  {'local time':<23} {'UTC':<24} {'period':<8} recipient")
    for i, s in enumerate(sends, 1):
        local = datetime.fromisoformat(iso_local(account.timezone, s.at))
        print(f"{i:>3}  {local.strftime('%H:%M:%S.%f')[:-3]} {local.strftime('%z'):<10} "
              f"{iso_utc(s.at):<24} {s.period:<8} {s.recipient}")
    st = plan_stats(sends)
    per = ", ".join(f"{k} {v}" for k, v in st["per_period"].items())
    if sends and st["first"] is not None and st["last"] is not None:
        first = iso_local(account.timezone, st["first"])[11:23]
        last = iso_local(account.timezone, st["last"])[11:23]
        gaps = ""
        if st["min_gap"] is not None and st["median_gap"] is not None:
            gaps = (f", smallest gap {st['min_gap'] / 60:.1f} min, "
                    f"median gap {st['median_gap'] / 60:.1f} min")
        print(f"stats: {st['count']} sends ({per}), first {first}, last {last}{gaps}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from .simulate import run_cli

    return run_cli(_load(args.config), days=args.days, start=args.start, seed=args.seed,
                   junk_rate=args.junk_rate, bounce_rate=args.bounce_rate, as_json=args.json,
                   report=args.report, fresh=args.fresh)


def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import main as daemon_main

    return daemon_main(args.config)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="warmupd", description="Self-hosted email warmup daemon.")
    p.add_argument("--version", action="version", version=f"warmupd {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", default="config.toml", help="path of config.toml")
    run.set_defaults(func=cmd_run)
    chk = sub.add_parser("check", help="validate a config file and summarise it")
    chk.add_argument("--config", default="config.toml")
    chk.add_argument("--dns", action="store_true",
                     help="check each sender domain's MX, SPF, DKIM, DMARC and the blocklists, print a table")
    chk.set_defaults(func=cmd_check)
    pre = sub.add_parser("preview", help="print a day's plan for one account without writing anything")
    pre.add_argument("--config", default="config.toml")
    pre.add_argument("--account", required=True, help="the account's email")
    pre.add_argument("--date", help="local date YYYY-MM-DD (default: today in the account's zone)")
    pre.add_argument("--seed", type=int, help="a seed for a reproducible draw")
    pre.add_argument("--json", action="store_true", help="print a JSON array")
    pre.set_defaults(func=cmd_preview)
    auth = sub.add_parser("authorize", help="store an OAuth refresh token for one account (consent once)")
    auth.add_argument("--config", default="config.toml")
    auth.add_argument("--account", required=True, help="the account's email")
    auth.add_argument("--flow", choices=("device", "browser"),
                      help="device code (default where the client has a device_authorization_url) "
                           "or browser (authorization code + PKCE, loopback redirect)")
    auth.add_argument("--refresh-token-file", metavar="FILE",
                      help="import a refresh token obtained elsewhere instead of asking")
    auth.set_defaults(func=cmd_authorize)
    imp = sub.add_parser("import-accounts", help="onboard OAuth mailboxes from a CSV file "
                         "(email,provider,client,refresh_token[,smtp_host,...])")
    imp.add_argument("csv", help="the CSV file")
    imp.add_argument("--config", default="config.toml")
    imp.add_argument("--out", help="the accounts file to write (default accounts.d/<csv name>.toml)")
    imp.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    imp.set_defaults(func=cmd_import_accounts)
    sim = sub.add_parser("simulate", help="play the next days of the pool on a virtual clock (nothing sent or written)")
    sim.add_argument("--config", default="config.toml")
    sim.add_argument("--days", type=int, default=30, help="local days to play (default 30)")
    sim.add_argument("--start", help="first local date YYYY-MM-DD (default: today)")
    sim.add_argument("--seed", type=int, help="the plan's seed (default: daemon.seed, else a random one)")
    sim.add_argument("--junk-rate", type=float, default=0.0, help="share of received mail placed in junk (what-if)")
    sim.add_argument("--bounce-rate", type=float, default=0.0, help="share of sends that bounce (what-if)")
    sim.add_argument("--json", action="store_true", help="print the run as JSON")
    sim.add_argument("--report", metavar="OUT.html", help="also write the HTML report there")
    sim.add_argument("--fresh", action="store_true",
                     help="ignore the state database: every account from its start date")
    sim.set_defaults(func=cmd_simulate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "build_parser"]
