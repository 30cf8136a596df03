#!/usr/bin/env bash
# Install Debian packages for the test tools (sudo when not root): apt_install.sh WHY PACKAGE...
# WHY names the caller in the error when apt-get is missing. --no-install-recommends: only what the
# package itself needs.
set -euo pipefail
WHY="$1"
shift
if ! command -v apt-get >/dev/null 2>&1; then
    echo "$WHY: apt-get is not available to install $*; install it by hand" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q --no-install-recommends "$@" >/dev/null
