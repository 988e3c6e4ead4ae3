"""Logging set-up: structlog for our code, stdlib ``logging`` for everyone else, one output.

Everything (structlog events, stdlib records from aiosmtplib/aiosqlite/asyncio, ``warnings``,
uncaught exceptions) ends up in a single stdlib handler whose ``ProcessorFormatter`` renders
either one JSON object per line or a human console line.  One handler means one lock, so lines
from aiosqlite's worker thread never interleave with ours.

structlog's own processor chain is identical in every mode, so ``configure_logging`` can be
called again at runtime (config reload): it only swaps the handler's formatter/stream and the
level, and loggers cached by structlog keep working.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import IO, Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["configure_logging", "get_logger", "register_secret", "REDACTED"]

REDACTED = "***"

_LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# structlog method names -> numeric level (``exception`` logs at error, like stdlib).
_METHOD_LEVELS: dict[str, int] = {**_LEVELS, "exception": logging.ERROR, "fatal": logging.CRITICAL}

_min_level: int = logging.INFO
_handler: logging.StreamHandler[Any] | None = None
_configured_structlog = False

# Secrets are found without a regex over all of them (recompiling one alternation per new
# secret made a 10,000-account start take more than 15 minutes). A secret of _LONG or more
# characters is indexed by its _GRAM-character pieces at offsets 0.._STRIDE-1: any
# occurrence of it in a text then covers one of the text's positions 0, _STRIDE,
# 2*_STRIDE, ... with one of those pieces, so only every _STRIDE-th position of a text is
# looked up, and each hit is confirmed by looking the candidate slice up in the set of all
# secrets. Shorter secrets are looked up at every position, once per length they come in.
# Adding a secret costs O(1) amortised (_STRIDE dict updates) and redacting a text is
# linear in its length; neither depends on how many secrets there are.
_GRAM = 4
_STRIDE = 5
_LONG = _GRAM + _STRIDE - 1


class _SecretIndex:
    """Registered secrets, and their replacement in a string: every character of every
    occurrence of a secret is covered by one ``***`` (the longest where they overlap).

    Readers (any logging thread) take no lock: every container they iterate is a tuple
    replaced wholesale, and the dict and set they only query are changed by single
    operations that are atomic under the GIL. Writers serialise on a lock.
    """

    def __init__(self) -> None:
        self._all: set[str] = set()
        # piece -> (offset of the piece in a secret, that secret's length), distinct pairs
        self._pieces: dict[str, tuple[tuple[int, int], ...]] = {}
        self._one: dict[tuple[int, int], tuple[tuple[int, int]]] = {}
        # How many secrets give each (piece, offset, length), and have each length: a
        # forgotten secret (an expired access token) removes only what no other needs.
        self._refs: dict[tuple[str, int, int], int] = {}
        self._lengths: dict[int, int] = {}
        self._short: tuple[int, ...] = ()  # lengths below _LONG that some secret has
        self._shortest = 0  # 0: no secret yet
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return self._shortest > 0

    def __len__(self) -> int:
        return len(self._all)

    def add(self, value: str) -> None:
        if not value:
            return
        n = len(value)
        with self._lock:
            if value in self._all:
                return
            self._all.add(value)  # first: a piece found must find its secret in the set
            if n >= _LONG:
                pieces, refs = self._pieces, self._refs
                for offset in range(_STRIDE):
                    piece = value[offset:offset + _GRAM]
                    ref = (piece, offset, n)
                    count = refs.get(ref, 0)
                    refs[ref] = count + 1
                    if count:
                        continue
                    entries = pieces.get(piece)
                    if entries is None:
                        # Most pieces belong to one secret: share that one-entry tuple.
                        entries = self._one.setdefault((offset, n), ((offset, n),))
                        pieces[piece] = entries
                    elif (offset, n) not in entries:
                        pieces[piece] = (*entries, (offset, n))
            elif n not in self._short:
                self._short = (*self._short, n)
            self._lengths[n] = self._lengths.get(n, 0) + 1
            if not self._shortest or n < self._shortest:
                self._shortest = n

    def discard(self, value: str) -> None:
        """Stop redacting ``value`` (a secret that no longer exists, e.g. an expired token);
        the cost is constant, as for ``add``."""
        n = len(value)
        with self._lock:
            if value not in self._all:
                return
            if n >= _LONG:
                pieces, refs = self._pieces, self._refs
                for offset in range(_STRIDE):
                    piece = value[offset:offset + _GRAM]
                    ref = (piece, offset, n)
                    count = refs[ref] - 1
                    if count:
                        refs[ref] = count
                        continue
                    del refs[ref]
                    rest = tuple(e for e in pieces[piece] if e != (offset, n))
                    if rest:
                        pieces[piece] = rest
                    else:
                        del pieces[piece]
            left = self._lengths[n] - 1
            if left:
                self._lengths[n] = left
            else:
                del self._lengths[n]
                if n < _LONG:
                    self._short = tuple(x for x in self._short if x != n)
                if n == self._shortest:
                    self._shortest = min(self._lengths, default=0)
            self._all.discard(value)  # last: readers find no piece without its secret

    def redact(self, text: str) -> str:
        shortest = self._shortest
        size = len(text)
        if not shortest or size < shortest:
            return text
        secrets, pieces = self._all, self._pieces
        found: dict[int, int] = {}  # start -> length of the longest secret starting there
        if size >= _LONG and pieces:
            hits = [q for q in range(0, size - _GRAM + 1, _STRIDE)
                    if text[q:q + _GRAM] in pieces]
            for q in hits:
                for offset, n in pieces.get(text[q:q + _GRAM], ()):
                    p = q - offset
                    if p >= 0 and p + n <= size and n > found.get(p, 0) and text[p:p + n] in secrets:
                        found[p] = n
        for n in self._short:
            if n <= size:
                for p in [i for i in range(size - n + 1) if text[i:i + n] in secrets]:
                    if n > found.get(p, 0):
                        found[p] = n
        if not found:
            return text
        # Left to right, the longest secret at each start; a secret overlapping the one
        # being replaced extends that replacement, so no part of either shows (a regex
        # alternation would leave the overlapping secret's tail in the clear).
        out: list[str] = []
        pos = 0
        for i in sorted(found):
            end = i + found[i]
            if i >= pos:
                out.append(text[pos:i])
                out.append(REDACTED)
                pos = end
            elif end > pos:
                pos = end
        out.append(text[pos:])
        return "".join(out)


_secrets = _SecretIndex()


def register_secret(value: str) -> None:
    """Make every later log line replace *value* with ``***`` (empty strings are ignored)."""
    _secrets.add(value)


def forget_secret(value: str) -> None:
    """Undo ``register_secret`` for a secret that is gone (an expired access token), so
    that short-lived secrets do not pile up for the life of the process."""
    _secrets.discard(value)


def _redact(value: Any, index: _SecretIndex) -> Any:
    if isinstance(value, str):
        return index.redact(value)
    if isinstance(value, dict):
        return {k: _redact(v, index) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact(v, index) for v in value)
    return value


# --- processors ---------------------------------------------------------------------------


def _filter_level(_: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    # A module global instead of structlog.stdlib.filter_by_level: no hierarchy walk per event,
    # and configure_logging can change it at runtime without rebuilding cached loggers.
    if _METHOD_LEVELS.get(method_name, logging.INFO) < _min_level:
        raise structlog.DropEvent
    return event_dict


def _add_timestamp(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # ISO 8601 UTC with milliseconds and a "Z"; strftime on gmtime is cheaper than datetime.
    now = time.time()
    secs = int(now)
    event_dict["timestamp"] = (
        f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(secs))}.{int((now - secs) * 1000):03d}Z"
    )
    return event_dict


def _tidy_foreign(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # warnings.formatwarning() ends with a newline (and a source line); keep the event tidy.
    event = event_dict.get("event")
    if isinstance(event, str):
        event_dict["event"] = event.rstrip()
    return event_dict


_HEAD = ("timestamp", "level", "logger", "event")


def _finalize(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Put the well-known keys first (readable JSON) and redact registered secrets."""
    ordered = {k: event_dict.pop(k) for k in _HEAD if k in event_dict}
    ordered.update(event_dict)
    if _secrets:
        ordered = {k: _redact(v, _secrets) for k, v in ordered.items()}
    return ordered


def _redact_rendered(renderer: Processor) -> Processor:
    """Second net after rendering: catches secrets hidden in repr() of arbitrary objects."""

    def render(logger: WrappedLogger, name: str, event_dict: EventDict) -> Any:
        out = renderer(logger, name, event_dict)
        if isinstance(out, str):
            out = _secrets.redact(out)
        return out

    return render


_SHARED: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    _add_timestamp,
]


def _formatter(json: bool, colors: bool) -> structlog.stdlib.ProcessorFormatter:
    renderer: Processor
    if json:
        renderer = structlog.processors.JSONRenderer()
    else:
        # plain_traceback: the exception is already a (redacted) string from format_exc_info.
        renderer = structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *_SHARED,
            structlog.stdlib.ExtraAdder(),
            _tidy_foreign,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            _finalize,
            _redact_rendered(renderer),
        ],
    )


# --- uncaught exceptions ---------------------------------------------------------------------

_orig_hooks: tuple[Any, Any, Any] | None = None


def _excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: types.TracebackType | None
) -> None:
    logging.getLogger("warmupd").critical("uncaught exception", exc_info=(exc_type, exc, tb))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    exc = args.exc_value or args.exc_type()
    logging.getLogger("warmupd").error(
        "uncaught exception in thread",
        exc_info=(args.exc_type, exc, args.exc_traceback),
        extra={"thread_name": getattr(args.thread, "name", None)},
    )


def _unraisablehook(u: Any) -> None:
    exc = u.exc_value
    logging.getLogger("warmupd").error(
        u.err_msg or "exception ignored",
        exc_info=(u.exc_type, exc, u.exc_traceback) if exc is not None else None,
        extra={"object": repr(u.object)},
    )


def _install_hooks(enable: bool) -> None:
    """In JSON mode route tracebacks the interpreter would print to stderr through logging."""
    global _orig_hooks
    if enable and _orig_hooks is None:
        _orig_hooks = (sys.excepthook, threading.excepthook, sys.unraisablehook)
        sys.excepthook = _excepthook
        threading.excepthook = _thread_excepthook
        sys.unraisablehook = _unraisablehook
    elif not enable and _orig_hooks is not None:
        sys.excepthook, threading.excepthook, sys.unraisablehook = _orig_hooks
        _orig_hooks = None


# --- public API ------------------------------------------------------------------------------


def configure_logging(
    fmt: str = "auto", level: str = "info", stream: IO[str] | None = None
) -> None:
    """Configure (or re-configure at runtime) logging.

    fmt: ``auto`` (JSON unless *stream* is a TTY), ``json`` or ``console``.
    level: ``debug``, ``info``, ``warning`` or ``error`` (case-insensitive).
    stream: where lines go, default ``sys.stdout`` (looked up at call time).
    """
    global _min_level, _handler, _configured_structlog
    try:
        lvl = _LEVELS[level.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}") from None
    fmt = fmt.strip().lower()
    if fmt not in ("auto", "json", "console"):
        raise ValueError(f"unknown log format {fmt!r} (auto|json|console)")
    out = stream if stream is not None else sys.stdout
    isatty = _isatty(out)
    use_json = fmt == "json" or (fmt == "auto" and not isatty)

    if not _configured_structlog:
        structlog.configure(
            processors=[
                _filter_level,
                *_SHARED,
                structlog.stdlib.PositionalArgumentsFormatter(),
                structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
            ],
            logger_factory=structlog.stdlib.LoggerFactory(ignore_frame_names=[__name__]),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=True,
        )
        _configured_structlog = True

    root = logging.getLogger()
    if _handler is None:
        _handler = logging.StreamHandler(out)
    else:
        _handler.setStream(out)
    _handler.setFormatter(_formatter(use_json, colors=isatty))
    # Drop handlers that would print raw text to our terminal streams (basicConfig & co.);
    # others (e.g. file or test-capture handlers) are left alone.
    terminals = {id(s) for s in (out, sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)}
    for h in list(root.handlers):
        if h is not _handler and isinstance(h, logging.StreamHandler):
            if id(h.stream) in terminals:
                root.removeHandler(h)
    if _handler not in root.handlers:
        root.addHandler(_handler)
    root.setLevel(lvl)
    _min_level = lvl

    logging.captureWarnings(True)
    _install_hooks(use_json)
    # The logging HOWTO's "Optimization" switches (the public ones): no thread or
    # process lookups per record. Our lines never show them, and the daemon logs one
    # event per send state change, so this is on the firing path.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def get_logger(name: str | None = None, **initial_values: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger (stdlib-backed, so it shares level filtering and output)."""
    args = () if name is None else (name,)  # None: structlog names it after the calling module
    return structlog.stdlib.get_logger(*args, **initial_values)


def _isatty(stream: IO[str]) -> bool:
    isatty: Callable[[], bool] | None = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # closed or detached stream
        return False
