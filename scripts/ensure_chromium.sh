#!/usr/bin/env bash
# Install Debian's Chromium and its matching chromedriver (packages `chromium`, `chromium-driver`) if missing.
#
# Why: tests/integration/test_console_browser.py drives the browser console in a real headless
# Chromium through selenium, and fails (does not skip) without one. `make test` calls this first.
# Idempotent: does nothing when both binaries (or CHROMIUM_BIN / CHROMEDRIVER_BIN) already run.
set -euo pipefail

BROWSER="${CHROMIUM_BIN:-/usr/bin/chromium}"
DRIVER="${CHROMEDRIVER_BIN:-/usr/bin/chromedriver}"
if [ -x "$BROWSER" ] && [ -x "$DRIVER" ] && "$DRIVER" --version >/dev/null 2>&1; then
    echo "ensure_chromium: $("$DRIVER" --version 2>&1 | head -n 1)"
    exit 0
fi
bash "$(dirname "$0")/apt_install.sh" "ensure_chromium (set CHROMIUM_BIN and CHROMEDRIVER_BIN otherwise)" chromium chromium-driver
echo "ensure_chromium: installed $("$DRIVER" --version 2>&1 | head -n 1)"
