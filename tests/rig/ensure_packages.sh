#!/usr/bin/env bash
# Make sure the Debian packages behind the tests' real servers and tools are installed:
#   dovecot-imapd, dovecot-lmtpd  the IMAP/LMTP mail rig (tests/rig/mailrig.py)
#   faketime                      libfaketime, to start a daemon at a chosen moment (rollover, DST)
#   nsd, dnsutils                 an authoritative DNS server for the domain checks (tests/rig/dns_server.py), dig
#   chromium                      a real headless browser for the report tests (tests/test_report_browser.py)
#
# Idempotent: installs only what is missing, with one apt-get call.
# Packaged services must never start (the stock Dovecot would take port 143, the
# stock nsd port 53, and neither is what the rigs run): if no /usr/sbin/policy-rc.d exists, a temporary
# one that exits 101 is put in place for the install and removed afterwards.
set -euo pipefail

# package:file-that-shows-it-is-there
WANT=(
    "dovecot-imapd:/usr/sbin/dovecot"
    "dovecot-lmtpd:/usr/lib/dovecot/lmtp"
    "faketime:/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
    "nsd:/usr/sbin/nsd"
    "dnsutils:/usr/bin/dig"
    "chromium:/usr/bin/chromium"
)

missing=()
for item in "${WANT[@]}"; do
    pkg=${item%%:*}
    file=${item#*:}
    if [ ! -e "$file" ]; then
        missing+=("$pkg")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "ensure_packages: all there ($(dovecot --version 2>/dev/null || echo dovecot))" >&2
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_packages: ${missing[*]} missing and installing needs root (apt-get)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_packages: ${missing[*]} missing and apt-get is not available; install them by hand" >&2
    exit 1
fi

POLICY=/usr/sbin/policy-rc.d
created_policy=0
cleanup() {
    if [ "$created_policy" -eq 1 ]; then
        rm -f "$POLICY"
    fi
}
trap cleanup EXIT
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# temporary, from tests/rig/ensure_packages.sh\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    created_policy=1
fi

export DEBIAN_FRONTEND=noninteractive
install() {
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

echo "ensure_packages: installing ${missing[*]}" >&2
if ! install; then
    echo "ensure_packages: install failed, running apt-get update and retrying" >&2
    apt-get update -q || true
    if ! install; then
        echo "ensure_packages: could not install ${missing[*]} with apt-get" >&2
        exit 1
    fi
fi
for item in "${WANT[@]}"; do
    file=${item#*:}
    if [ ! -e "$file" ]; then
        echo "ensure_packages: ${item%%:*} installed but $file is not there" >&2
        exit 1
    fi
done
echo "ensure_packages: $(dovecot --version 2>/dev/null || echo installed)" >&2
