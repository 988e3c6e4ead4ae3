"""sd_notify(3) in pure Python: readiness, status, reload/stop notices and watchdog pings.

Protocol: one AF_UNIX SOCK_DGRAM datagram per notification to $NOTIFY_SOCKET, containing
newline-separated ``KEY=VALUE`` assignments.  systemd identifies the sender by the kernel-attached
SCM_CREDENTIALS (it sets SO_PASSCRED on its end), so with ``NotifyAccess=main`` only the main
process may send: never call this from a forked child.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

__all__ = ["Notifier", "watchdog_loop"]

log = logging.getLogger("warmupd.notify")

# The notify socket is drained by PID 1 promptly; a bounded wait keeps a wedged manager from
# stalling the event loop for long while still not dropping READY=1 at the first EAGAIN.
_SEND_TIMEOUT = 0.5


def _parse_address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        # Abstract namespace: a leading NUL, and the name is NOT NUL-terminated (the address
        # length bounds it), which is exactly what Python does with a bytes address.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # relative paths (and vsock:, added in systemd 253) are not supported


class Notifier:
    """Sends notifications to systemd; a no-op (``enabled`` False) without NOTIFY_SOCKET."""

    def __init__(
        self,
        notify_socket: str | None = None,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
    ) -> None:
        self.address = _parse_address(notify_socket) if notify_socket else None
        if notify_socket and self.address is None:
            log.warning(
                "unsupported NOTIFY_SOCKET address %r; notifications disabled", notify_socket
            )
        self.enabled = self.address is not None
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._watchdog_pid = watchdog_pid
        self._sock: socket.socket | None = None
        self._failed_logged = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Build from NOTIFY_SOCKET / WATCHDOG_USEC / WATCHDOG_PID (left in the environment)."""
        env = os.environ if environ is None else environ
        return cls(
            env.get("NOTIFY_SOCKET") or None,
            _int_or_none(env.get("WATCHDOG_USEC")),
            _int_or_none(env.get("WATCHDOG_PID")),
        )

    # -- sending -------------------------------------------------------------------------------

    def send(self, **fields: str | int | bool) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram; True if sent. Never raises."""
        if not self.enabled or not fields:
            return False
        lines = []
        for key, value in fields.items():
            if isinstance(value, bool):
                value = int(value)
            # A newline would start a new (bogus) assignment; NUL is not allowed either.
            text = str(value).replace("\n", " ").replace("\0", "")
            lines.append(f"{key}={text}")
        return self._send_raw("\n".join(lines).encode())

    def _send_raw(self, payload: bytes) -> bool:
        assert self.address is not None
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.settimeout(_SEND_TIMEOUT)
            # MSG_NOSIGNAL as in libsystemd: no SIGPIPE if the manager side went away.
            self._sock.sendto(payload, socket.MSG_NOSIGNAL, self.address)
            return True
        except OSError as exc:
            if self._sock is not None:
                self._sock.close()
                self._sock = None  # retry with a fresh socket next time
            if not self._failed_logged:
                self._failed_logged = True
                log.warning("sd_notify to %r failed: %s", _display(self.address), exc)
            return False

    def ready(self, status: str | None = None) -> bool:
        if status is None:
            return self.send(READY=1)
        return self.send(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def reloading(self, status: str | None = None) -> bool:
        # Type=notify-reload (systemd >= 253) requires MONOTONIC_USEC alongside RELOADING=1 to
        # match the notification with the reload request; older systemd ignores the extra field.
        # Either way the service must send READY=1 again when the reload has finished.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        if status is None:
            return self.send(RELOADING=1, MONOTONIC_USEC=usec)
        return self.send(RELOADING=1, MONOTONIC_USEC=usec, STATUS=status)

    def stopping(self, status: str | None = None) -> bool:
        if status is None:
            return self.send(STOPPING=1)
        return self.send(STOPPING=1, STATUS=status)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises).

        None when no watchdog is configured or it is meant for another process: systemd sets
        WATCHDOG_PID so that children inheriting the environment do not think it is theirs.
        """
        if not self.enabled or self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def watchdog_loop(
    notifier: Notifier, healthy: Callable[[], bool], interval: float | None = None
) -> None:
    """Ping WATCHDOG=1 every *interval* (default ``notifier.watchdog_interval()``) while healthy.

    Returns at once if there is no watchdog; otherwise runs until cancelled.  While
    ``healthy()`` is false (or raises) no pings are sent, so systemd kills and restarts us
    after WatchdogSec: that is the point.  Ticks are scheduled on absolute loop time so pings
    do not drift later and later.
    """
    if interval is None:
        interval = notifier.watchdog_interval()
    if interval is None or interval <= 0 or not notifier.enabled:
        return
    loop = asyncio.get_running_loop()
    next_tick = loop.time()
    while True:
        try:
            ok = healthy()
        except Exception:
            log.exception("watchdog health check failed")
            ok = False
        if ok:
            notifier.watchdog()
        next_tick += interval
        now = loop.time()
        if next_tick < now:  # we overslept (loop was blocked): don't burst to catch up
            next_tick = now
        await asyncio.sleep(next_tick - now)


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _display(address: str | bytes) -> str:
    return "@" + address[1:].decode(errors="replace") if isinstance(address, bytes) else address
