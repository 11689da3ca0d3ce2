#!/usr/bin/env bash
# What the browser tests (pytest -m browser) need: Debian's Chromium and Python Playwright.
# Idempotent and quick when both are present. Playwright's own browser download is not used
# (it cannot reach its CDN here): the tests launch /usr/bin/chromium.
set -euo pipefail

PYTHON="${PYTHON:-python}"

if [ ! -x /usr/bin/chromium ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q chromium
fi

if ! "$PYTHON" -c "import playwright.sync_api" 2>/dev/null; then
    "$PYTHON" -m pip install -q "playwright>=1.40"
fi

echo "browser tests: $(/usr/bin/chromium --version 2>/dev/null | head -n 1);" \
    "playwright $("$PYTHON" -c 'from importlib.metadata import version; print(version("playwright"))')"
