#!/usr/bin/env bash
# Install Debian's Chromium for the browser test (tests/integration/test_web_browser.py).
# Idempotent and quiet: does nothing when /usr/bin/chromium already exists. Playwright's own
# browser download is never used; the test launches /usr/bin/chromium directly.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [[ -x "$CHROMIUM" ]]; then
    exit 0
fi

SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo -n"
    else
        echo "install-browser: $CHROMIUM is missing and this is not root (no sudo)" >&2
        exit 1
    fi
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: $CHROMIUM is missing and apt-get is not available" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# Quiet on success; the whole apt log on failure.
if ! { $SUDO apt-get update -qq && \
       $SUDO apt-get install -y -qq --no-install-recommends chromium; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "install-browser: could not install chromium with apt-get" >&2
    exit 1
fi

if [[ ! -x "$CHROMIUM" ]]; then
    echo "install-browser: apt-get finished but $CHROMIUM is still missing" >&2
    exit 1
fi
