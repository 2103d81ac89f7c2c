#!/usr/bin/env bash
# Install what the deployment checks need: systemd's tools (systemd-analyze, systemctl,
# systemd-sysusers: tests/unit/test_deploy_units.py, test_deploy_install.py) and redis-server
# (tests/unit/test_deploy_redis.py: the production config and a Sentinel failover). Those tests
# skip where the tools are missing; CI runs this first so they run. Nothing is started:
# systemd's tools work on unit files and directories without a running systemd.
# Idempotent and quiet: does nothing when every tool is there.
set -euo pipefail

missing=()
for tool in systemd-analyze systemctl systemd-sysusers; do
    command -v "$tool" >/dev/null 2>&1 || { missing+=(systemd); break; }
done
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
((${#missing[@]})) || exit 0

SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo -n"
    else
        echo "install-deploy-tools: ${missing[*]} missing and this is not root (no sudo)" >&2
        exit 1
    fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deploy-tools: ${missing[*]} missing and apt-get is not available" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# Quiet on success; the whole apt log on failure.
if ! { $SUDO apt-get update -qq && \
       $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "install-deploy-tools: could not install ${missing[*]} with apt-get" >&2
    exit 1
fi
