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
import re
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import IO, Any, cast

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

# Secrets are kept as one compiled alternation; replaced wholesale (never mutated) so that
# threads logging concurrently always see a consistent pattern without taking a lock.
_secrets: set[str] = set()
_secret_re: re.Pattern[str] | None = None
_secrets_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Make every later log line replace *value* with ``***`` (empty strings are ignored)."""
    global _secret_re
    if not value:
        return
    with _secrets_lock:
        if value in _secrets:
            return
        _secrets.add(value)
        # Longest first so that a secret containing another one is redacted entirely.
        alternation = "|".join(re.escape(s) for s in sorted(_secrets, key=len, reverse=True))
        _secret_re = re.compile(alternation)


def _redact(value: Any, pattern: re.Pattern[str]) -> Any:
    if isinstance(value, str):
        return pattern.sub(REDACTED, value)
    if isinstance(value, dict):
        return {k: _redact(v, pattern) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact(v, pattern) for v in value)
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
    pattern = _secret_re
    if pattern is not None:
        ordered = {k: _redact(v, pattern) for k, v in ordered.items()}
    return ordered


def _redact_rendered(renderer: Processor) -> Processor:
    """Second net after rendering: catches secrets hidden in repr() of arbitrary objects."""

    def render(logger: WrappedLogger, name: str, event_dict: EventDict) -> Any:
        out = renderer(logger, name, event_dict)
        pattern = _secret_re
        if pattern is not None and isinstance(out, str):
            out = pattern.sub(REDACTED, out)
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
    # The logging HOWTO's "Optimization" switches: no caller frame walk, no thread or
    # process lookups per record. Our lines never show them, and the daemon logs one
    # event per send state change, so this is on the firing path.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def get_logger(name: str | None = None, **initial_values: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger (stdlib-backed, so it shares level filtering and output)."""
    args = () if name is None else (name,)  # None: structlog names it after the calling module
    return cast(structlog.stdlib.BoundLogger, structlog.stdlib.get_logger(*args, **initial_values))


def _isatty(stream: IO[str]) -> bool:
    isatty: Callable[[], bool] | None = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # closed or detached stream
        return False
