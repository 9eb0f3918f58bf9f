#!/usr/bin/env bash
# bash .ci/apt_install.sh COMMAND... -- PACKAGE...: install Debian's PACKAGEs unless every COMMAND is
# already on PATH. Needs root (or sudo).
set -euo pipefail
commands=()
while [[ $# -gt 0 && "$1" != "--" ]]; do commands+=("$1"); shift; done
shift || { echo "usage: $0 COMMAND... -- PACKAGE..." >&2; exit 2; }
missing=0
for c in "${commands[@]}"; do command -v "$c" >/dev/null || missing=1; done
if [[ "$missing" == 0 ]]; then
    echo "already installed: ${commands[*]}"
    exit 0
fi
SUDO=""
[[ "$(id -u)" == 0 ]] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "$@"
echo "installed: $*"
