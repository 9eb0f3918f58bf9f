#!/usr/bin/env bash
# Debian's Slurm for tests/test_slurm.py, which starts a real one-node slurmctld + slurmd under a
# temp dir (tests/slurm/run_slurm_test.sh). Needs root (or sudo); does nothing if already there.
set -euo pipefail
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null; then
    echo "slurm already installed: $(slurmctld -V)"
    exit 0
fi
SUDO=""
[[ "$(id -u)" == 0 ]] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends slurm-wlm slurmctld slurmd slurm-client munge
echo "installed: $(slurmctld -V)"
