#!/usr/bin/env bash
# Debian's headless Chromium for tests/test_report_browser.py, which opens the compare report as a reader
# does. Needs root (or sudo); does nothing if already there.
set -euo pipefail
if command -v chromium-headless-shell >/dev/null; then
    echo "chromium-headless-shell already installed: $(chromium-headless-shell --version 2>/dev/null || true)"
    exit 0
fi
SUDO=""
[[ "$(id -u)" == 0 ]] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium-headless-shell
echo "installed: $(chromium-headless-shell --version 2>/dev/null || true)"
