"""Checks of systemd/warmupd.service with an offline systemd-analyze (systemd 252 on Debian 12)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "warmupd.service"
MAX_EXPOSURE = 2.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not on PATH"
)


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an existing stub, since verify checks the binary."""
    stub = tmp_path / "warmupd"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/warmupd " in text
    copy = tmp_path / "warmupd.service"
    copy.write_text(text.replace("ExecStart=/usr/local/bin/warmupd ", f"ExecStart={stub} "))
    return copy


def test_required_directives() -> None:
    d = directives(UNIT.read_text())
    one = {k: v[-1] for k, v in d.items()}
    assert one["Type"] == "notify"  # notify-reload needs systemd >= 253
    assert one["ExecStart"] == "/usr/local/bin/warmupd run --config /etc/warmupd/config.toml"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["WatchdogSec"] == "30s"
    assert one["Restart"] == "on-failure"
    assert one["DynamicUser"] == "yes"
    assert one["StateDirectory"] == "warmupd"
    assert one["RuntimeDirectory"] == "warmupd"
    assert one["RuntimeDirectoryMode"] == "0750"
    assert one["ConfigurationDirectory"] == "warmupd"
    assert one["NotifyAccess"] == "main"
    assert one["KillSignal"] == "SIGTERM"
    assert re.fullmatch(r"\d+(s|min)?", one["TimeoutStopSec"])
    assert "smtp-passwords:/etc/warmupd/secrets" in d["LoadCredential"]
    assert "#LoadCredential=alice:/etc/warmupd/secrets/alice" in UNIT.read_text()
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert one["NoNewPrivileges"] == "yes" and one["CapabilityBoundingSet"] == ""
    # The daemon needs the network: these would break it.
    assert "PrivateNetwork" not in d and "IPAddressDeny" not in d


@needs_analyze
def test_verify_passes(unit_copy: Path) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit_copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # systemd 252 only *warns* about unknown keys (e.g. directives from newer versions):
    # any line about our unit counts as a failure.
    bad = [line for line in output.splitlines() if "warmupd" in line]
    assert not bad, output


@needs_analyze
def test_security_exposure(unit_copy: Path) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit_copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert m, proc.stdout
    score = float(m.group(1))
    assert score <= MAX_EXPOSURE, proc.stdout
    # --threshold is on the 0-100 scale: the same bound enforced by systemd-analyze itself.
    strict = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=true",
            f"--threshold={int(MAX_EXPOSURE * 10)}",
            str(unit_copy),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert strict.returncode == 0, strict.stdout
