#!/usr/bin/env bash
# Install what the integration tests need:
#   - Debian orthanc + orthanc-dicomweb: tests/test_pacs_orthanc.py starts a real Orthanc with the
#     DICOMweb plugin on loopback;
#   - Debian chromium: tests/test_app_e2e.py drives the web app in headless Chromium through
#     Playwright (the `test` extra of pyproject.toml), pointed at /usr/bin/chromium;
#     `playwright install`, which downloads its own browsers, is never run.
# Idempotent and non-interactive: packages already installed are skipped; the package lists are
# refreshed only when something is missing.
#
# Usage: scripts/install-test-deps.sh        (as root, or with sudo available)
set -euo pipefail

PACKAGES=(orthanc orthanc-dicomweb chromium)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        echo "already installed: $pkg"
    else
        missing+=("$pkg")
    fi
done


if [ "${#missing[@]}" -eq 0 ]; then
    echo "all Debian test packages are installed"
    echo "done"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "error: need root (or sudo) to install: ${missing[*]}" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
echo "installing: ${missing[*]}"
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"

# The Debian package registers an Orthanc service; the tests start their own instance on free
# loopback ports with authentication on, so a system service is not needed. Stop it where a
# service manager runs (containers usually have none), leaving it installed.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet orthanc 2>/dev/null; then
    $SUDO systemctl stop orthanc || true
fi
echo "done"
