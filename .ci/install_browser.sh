#!/usr/bin/env bash
# Debian's headless Chromium for tests/test_report_browser.py, which opens the compare report as a reader
# does. Needs root (or sudo); does nothing if already there.
set -euo pipefail
bash "$(dirname "$0")/apt_install.sh" chromium-headless-shell -- chromium-headless-shell
