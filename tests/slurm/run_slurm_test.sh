#!/usr/bin/env bash
# A real one-node Slurm (slurmctld + slurmd on localhost, under a temp dir) for the Slurm tests.
#
#   tests/slurm/run_slurm_test.sh start WORKDIR   start the daemons, wait for an idle node
#   tests/slurm/run_slurm_test.sh stop WORKDIR    cancel its jobs, stop the daemons started in WORKDIR (by PID)
#
# Installs nothing: needs Debian's slurm-wlm (.ci/install_slurm.sh). Exit code 77 when the
# Slurm binaries are missing. Clients need SLURM_CONF=WORKDIR/etc/slurm.conf (printed by start).

set -euo pipefail

cmd="${1:-}"
work="${2:-}"
[[ -n "$cmd" && -n "$work" ]] || { echo "usage: $0 start|stop WORKDIR" >&2; exit 2; }

stop_daemons() {
    # read every pid file first: the daemons delete theirs on exit
    local files=("$work/run/slurmctld.pid" "$work/run/slurmd.pid") pids=() f pid
    for f in "${files[@]}"; do
        [[ -s "$f" ]] && pids+=("$(cat "$f")")
    done
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 100); do
            [[ -d "/proc/$pid" ]] || break
            sleep 0.1
        done
        if [[ -d "/proc/$pid" ]]; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    echo "stopped slurm daemons: ${pids[*]:-none}"
}

if [[ "$cmd" == stop ]]; then
    # jobs first (scoped to this cluster by SLURM_CONF), so no batch script outlives its slurmd
    export SLURM_CONF="$work/etc/slurm.conf"
    if [[ -s "$work/run/slurmctld.pid" ]] && scancel --quiet --full --user="$(id -un)" 2>/dev/null; then
        for _ in $(seq 1 60); do
            [[ -z "$(squeue -h 2>/dev/null)" ]] && break
            sleep 1
        done
    fi
    stop_daemons
    exit 0
fi
[[ "$cmd" == start ]] || { echo "unknown command $cmd" >&2; exit 2; }

for bin in slurmctld slurmd sbatch squeue sinfo scontrol scancel; do
    command -v "$bin" >/dev/null 2>&1 || { echo "slurm binary '$bin' not found (run .ci/install_slurm.sh)" >&2; exit 77; }
done

host="$(hostname -s)"
mem=$(( $(free -m | awk '/^Mem:/ {print $2}') * 95 / 100 ))
cpus="$(nproc)"
mkdir -p "$work/etc" "$work/state" "$work/spool" "$work/run" "$work/log"
addr=""
getent hosts "$host" >/dev/null 2>&1 || addr="NodeAddr=127.0.0.1"
cat >"$work/etc/slurm.conf" <<EOF
ClusterName=ercslurmtest
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/run/slurmctld.pid
SlurmdPidFile=$work/run/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
SlurmctldPort=${ERC_TEST_SLURMCTLD_PORT:-16817}
SlurmdPort=${ERC_TEST_SLURMD_PORT:-16818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN $addr
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$work/etc/slurm.conf"

slurmctld
slurmd
for _ in $(seq 1 60); do
    state="$(sinfo -h -o %T 2>/dev/null | head -n 1 || true)"
    if [[ "$state" == idle* ]]; then
        echo "SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 1
done
echo "slurm node not idle after 60 s (state: '${state:-none}'); logs in $work/log" >&2
stop_daemons
exit 1
