"""Secret redaction benchmark: registering N secrets, and redacting a typical log line.

    .venv/bin/python bench/redact.py [--sizes 100,10000,100000] [--baseline-full-max 1000] [--seed 1]

Each account's passwords are registered with ``warmupd.logs.register_secret`` at start and
on reload, and every log line is redacted twice: each string field of the event (nested
dicts and lists too), then the rendered JSON line. This measures the structure behind
``register_secret`` (``warmupd.logs._SecretIndex``) on exactly those two passes, beside the
approach it replaced (reimplemented below): one regex alternation of all secrets, longest
first, recompiled on every new secret.

Columns, for N secrets of 12-32 characters:

* ``register N``: registering all N, one by one (seconds), and ``per add`` that over N;
* ``line``: redacting one typical event (fields + rendered line, no secret in it), best of
  several runs; ``line w/ secret``: the same event carrying a password in its message;
* ``memory``: what the structure holds for N secrets (tracemalloc; not the secret strings,
  which the daemon's Config holds anyway); the old one's only up to 10,000 (compiling
  100,000 under tracemalloc is slow).

The baseline is capped: registering N secrets the old way costs about N^2/2 alternative
compilations (some 13 s for 1,000 here, more than 15 minutes for 10,000), so it is run in
full only up to ``--baseline-full-max``. Above that, the N-th add is timed (one recompile of
N alternatives), ``register N`` is estimated as N x that / 2 and ``per add`` as half of it
(both marked ``~``), and the line figures are measured on that pattern of N secrets.
A baseline row at ``--baseline-full-max`` is added when it is not one of the sizes. The
whole run takes about 30 s.

Targets (exit 2 when one is missed): 10,000 secrets register in under 1 s, and from the
smallest to the largest N, per add and per line grow by at most x2 (flat: no dependence on
how many secrets there are).
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import random
import re
import sys
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from warmupd.logs import REDACTED, _redact, _SecretIndex

EVENT: dict[str, Any] = {
    "timestamp": "2026-11-02T09:14:07.318Z",
    "level": "info",
    "logger": "warmupd.firing",
    "event": "send_state",
    "account": "asha@demo.warmup.test",
    "recipient": "carla@demo.warmup.test",
    "state": "sent",
    "message_id": "<20261102091407.3f9a1c@demo.warmup.test>",
    "period": "peak",
    "attempt": 1,
    "smtp": {"host": "smtp.demo.warmup.test", "port": 587, "reply": "250 2.0.0 Ok: queued as 4Xk2"},
}


def make_secrets(n: int, seed: int) -> list[str]:
    """Passwords of 12-32 characters from base85's alphabet."""
    rng = random.Random(seed)
    lengths = [rng.randint(12, 32) for _ in range(n)]
    chars = base64.b85encode(rng.randbytes(sum(lengths))).decode()
    ends = itertools.accumulate(lengths)
    return [chars[e - k:e] for e, k in zip(ends, lengths, strict=True)]


class RegexRedactor:
    """The old warmupd.logs: one alternation of every secret, recompiled per new secret."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()
        self.pattern: re.Pattern[str] | None = None

    def add(self, value: str, *, compile_now: bool = True) -> None:
        if not value or value in self.secrets:
            return
        self.secrets.add(value)
        if compile_now:
            self.compile()

    def compile(self) -> None:
        # Each pattern the old code compiled was new; re's cache would otherwise serve one
        # this bench already compiled (the memory column) for free.
        re.purge()
        alternation = "|".join(re.escape(s) for s in sorted(self.secrets, key=len, reverse=True))
        self.pattern = re.compile(alternation)

    def redact(self, text: str) -> str:
        return self.pattern.sub(REDACTED, text) if self.pattern is not None else text


def _redact_fields(value: Any, redact: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_fields(v, redact) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_fields(v, redact) for v in value)
    return value


def line_new(index: _SecretIndex, event: dict[str, Any]) -> str:
    """What logs._finalize and _redact_rendered do to one event."""
    fields = {k: _redact(v, index) for k, v in event.items()}
    return index.redact(json.dumps(fields))


def line_old(old: RegexRedactor, event: dict[str, Any]) -> str:
    fields = {k: _redact_fields(v, old.redact) for k, v in event.items()}
    return old.redact(json.dumps(fields))


def best_of(fn: Callable[[], object], *, budget: float = 0.3, runs: int = 5) -> float:
    """Seconds per call: the best of ``runs`` batches sized to fill ``budget`` together."""
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    batch = max(1, int(budget / runs / once))
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        best = min(best, (time.perf_counter() - t0) / batch)
    return best


def new_index(secrets: list[str]) -> _SecretIndex:
    index = _SecretIndex()
    for s in secrets:
        index.add(s)
    return index


def old_index(secrets: list[str]) -> RegexRedactor:
    old = RegexRedactor()
    for s in secrets:
        old.add(s, compile_now=False)
    old.compile()
    return old


def index_memory(build: Callable[[list[str]], object], secrets: list[str]) -> float:
    """MiB the structure holds for these secrets (tracemalloc; the secret strings
    themselves exist beforehand, as in the daemon's Config, and are not counted)."""
    tracemalloc.start()
    kept = build(secrets)
    used = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    return used / 2**20


def string_fields(value: Any) -> int:
    if isinstance(value, str):
        return 1
    if isinstance(value, dict):
        return sum(string_fields(v) for v in value.values())
    return 0


def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} us"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="100,10000,100000", help="comma-separated N")
    p.add_argument("--baseline-full-max", type=int, default=1000,
                   help="largest N the old approach registers in full (default 1000, ~13 s)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    sizes = sorted(int(x) for x in args.sizes.split(","))
    secrets = make_secrets(max(sizes) + 1, args.seed)
    leaked = secrets[len(secrets) // 2]
    with_secret = {**EVENT, "level": "warning", "event": f"AUTH PLAIN failed with {leaked}",
                   "state": "failed"}

    rows: list[tuple[str, int, str, float, float, float, float]] = []
    baseline_sizes = sorted({*sizes, args.baseline_full_max} if args.baseline_full_max < max(sizes)
                            else set(sizes))
    for n in sizes:
        index = _SecretIndex()
        t0 = time.perf_counter()
        for s in secrets[:n]:
            index.add(s)
        reg = time.perf_counter() - t0
        index.add(leaked)
        assert leaked not in line_new(index, with_secret)
        rows.append(("new", n, "", reg, reg / n, best_of(partial(line_new, index, EVENT)),
                     best_of(partial(line_new, index, with_secret))))

    memory = {("new", n): index_memory(new_index, secrets[:n]) for n in sizes}
    memory.update({("old regex", n): index_memory(old_index, secrets[:n])
                   for n in baseline_sizes if n <= 10_000})

    for n in baseline_sizes:
        old = RegexRedactor()
        if n <= args.baseline_full_max:
            t0 = time.perf_counter()
            for s in secrets[:n]:
                old.add(s)
            reg = time.perf_counter() - t0
            per_add, mark = reg / n, ""
        else:
            for s in secrets[:n - 1]:
                old.add(s, compile_now=False)
            t0 = time.perf_counter()
            old.add(secrets[n - 1])  # the n-th add: one recompile of n alternatives
            nth_add = time.perf_counter() - t0
            reg, mark = n * nth_add / 2, "~"  # the adds before it cost 1/n .. (n-1)/n of it
            per_add = reg / n
        old.add(leaked)
        assert leaked not in line_old(old, with_secret)
        rows.append(("old regex", n, mark, reg, per_add,
                     best_of(partial(line_old, old, EVENT), runs=3),
                     best_of(partial(line_old, old, with_secret), runs=3)))

    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"secrets of 12-32 characters, seed {args.seed}; a line is {len(json.dumps(EVENT))} "
          f"characters rendered from {string_fields(EVENT)} string fields; "
          f"old regex registered in full up to N={args.baseline_full_max:,}, ~ = estimated")
    print(f"{'approach':<10} {'N':>8} {'register N':>12} {'per add':>10} {'line':>10} "
          f"{'line w/ secret':>15} {'memory':>10}")
    for name, n, mark, reg, per_add, line, line_s in rows:
        mem = memory.get((name, n))
        print(f"{name:<10} {n:>8,} {mark + fmt_time(reg):>12} {mark + fmt_time(per_add):>10} "
              f"{fmt_time(line):>10} {fmt_time(line_s):>15} "
              f"{'-' if mem is None else f'{mem:.1f} MiB':>10}")

    new = [r for r in rows if r[0] == "new"]
    reg_10k = next((r[3] for r in new if r[1] == 10_000), None)
    add_growth = new[-1][4] / new[0][4]
    line_growth = max(new[-1][5] / new[0][5], new[-1][6] / new[0][6])
    ok = (reg_10k is None or reg_10k < 1.0) and add_growth <= 2.0 and line_growth <= 2.0
    reg_text = f"10,000 register in {fmt_time(reg_10k)} (target < 1 s), " if reg_10k is not None else ""
    print(f"SUMMARY {reg_text}from N={new[0][1]:,} to {new[-1][1]:,} per add x{add_growth:.2f}, "
          f"per line x{line_growth:.2f} (targets <= x2): {'met' if ok else 'MISSED'}")
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
