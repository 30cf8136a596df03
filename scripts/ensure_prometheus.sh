#!/usr/bin/env bash
# Install a real Prometheus server (Debian/Ubuntu package `prometheus`) if it is missing.
#
# Why: tests/integration/test_prometheus.py runs the dashboard's PromQL against a live Prometheus
# that scrapes convserve, and fails (does not skip) without one. CI calls this before `make test`.
# Idempotent: does nothing when /usr/bin/prometheus (or PROMETHEUS_BIN) already runs.
set -euo pipefail

BIN="${PROMETHEUS_BIN:-/usr/bin/prometheus}"
if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then
    echo "ensure_prometheus: $("$BIN" --version 2>&1 | head -n 1)"
    exit 0
fi
bash "$(dirname "$0")/apt_install.sh" "ensure_prometheus (set PROMETHEUS_BIN to a Prometheus >= 2.x otherwise)" prometheus
# The package starts a system service on some hosts; the tests run their own instance.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    $([ "$(id -u)" -ne 0 ] && echo sudo) systemctl stop prometheus || true
fi
echo "ensure_prometheus: installed $("$BIN" --version 2>&1 | head -n 1)"
