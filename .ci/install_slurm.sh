#!/usr/bin/env bash
# Debian's Slurm for tests/test_slurm.py, which starts a real one-node slurmctld + slurmd under a
# temp dir (tests/slurm/run_slurm_test.sh). Needs root (or sudo); does nothing if already there.
set -euo pipefail
bash "$(dirname "$0")/apt_install.sh" slurmctld slurmd sbatch -- slurm-wlm slurmctld slurmd slurm-client munge
