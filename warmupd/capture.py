"""Local capture SMTP server for the demo: every message lands as an .eml file.

    python -m warmupd.capture --host 127.0.0.1 --port 2525 --dir var/outbox

Accepts any AUTH credentials (or none), so the demo accounts work unchanged.
Each message is written atomically to ``<dir>/<UTC timestamp>-<short id>.eml``
and logged as one line on stdout. SIGTERM / SIGINT stop it cleanly.
Needs aiosmtpd (``pip install 'warmupd[demo]'``); it is imported lazily.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

EX_UNAVAILABLE = 69  # sysexits.h: a required service (here: a dependency) is missing
MISSING_AIOSMTPD = "warmupd.capture needs aiosmtpd: pip install 'warmupd[demo]'"


def save_message(outdir: Path, data: bytes) -> Path:
    """Write ``data`` to a new .eml in ``outdir``: temp file + rename, so readers never see half."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    final = outdir / f"{stamp}-{secrets.token_hex(4)}.eml"
    tmp = outdir / f".{final.name}.tmp"  # dot-file: ignored by `ls *.eml` watchers
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return final


class CaptureHandler:
    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        path = save_message(self.outdir, envelope.original_content or b"")
        rcpts = ",".join(envelope.rcpt_tos)
        print(f"saved {path} from={envelope.mail_from} to={rcpts}", flush=True)
        return f"250 2.0.0 OK: saved as {path.name}"


async def serve(host: str, port: int, outdir: Path) -> None:
    from aiosmtpd.smtp import SMTP, AuthResult

    def accept_any(*_args: Any) -> AuthResult:  # the demo's passwords are not secrets
        return AuthResult(success=True)

    handler = CaptureHandler(outdir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            hostname="warmupd-capture",
            decode_data=False,
            authenticator=accept_any,
            auth_required=False,
            auth_require_tls=False,  # local demo only: plaintext AUTH is fine
        ),
        host,
        port,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()
    print(f"warmupd.capture listening on {bound[0]}:{bound[1]}, saving to {outdir}", flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()
    print("warmupd.capture stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m warmupd.capture", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--dir", default="var/outbox", help="where .eml files are written")
    args = parser.parse_args(argv)
    try:
        import aiosmtpd  # noqa: F401
    except ImportError:
        print(MISSING_AIOSMTPD, file=sys.stderr)
        return EX_UNAVAILABLE
    outdir = Path(args.dir)
    outdir.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(serve(args.host, args.port, outdir))
    except OSError as exc:  # e.g. the port is taken
        print(f"warmupd.capture: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
