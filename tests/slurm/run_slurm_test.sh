#!/usr/bin/env bash
# A real Slurm (slurmctld + slurmd, under a temp dir) for the Slurm tests.
#
#   tests/slurm/run_slurm_test.sh start WORKDIR [NODES]  start the daemons, wait until every node is idle
#   tests/slurm/run_slurm_test.sh stop WORKDIR           cancel its jobs, stop the daemons started in WORKDIR
#                                                        (by PID), remove its network namespaces
#
# One node (the default): slurmctld and slurmd on localhost, under the machine's hostname.
# NODES >= 2 (root, iproute2, util-linux): every node is its own Linux network namespace with its
# own address (10.231.0.N/24, which exists only inside these namespaces), UTS namespace (hostname
# nodeN) and mount namespace (a private /dev/shm, and a private tmpfs on the folder named in
# WORKDIR/node_tmp, an /etc/hosts naming every node), joined by a bridge in one more namespace: the
# machine's own network is not touched. One more namespace on the bridge, 10.231.0.250 (named in
# WORKDIR/outside_netns), is a host outside the cluster: no Slurm, no job; the tests probe a job from it.
# Each node has ERC_TEST_NODE_CPUS (8) logical CPUs and one
# logical GPU (gres gpu:1 without a device), what the CPU backend trains one process with.
# slurmctld runs on node1; clients reach it through WORKDIR/bin (sbatch, squeue, sinfo, scontrol,
# scancel, entering node1's network namespace): put WORKDIR/bin first in PATH.
#
# Installs nothing: needs Debian's slurm-wlm (.ci/install_slurm.sh). Exit code 77 when the
# Slurm binaries (or, for NODES >= 2, root or the namespace tools) are missing. Clients need
# SLURM_CONF=WORKDIR/etc/slurm.conf (printed by start).

set -euo pipefail

cmd="${1:-}"
work="${2:-}"
nodes="${3:-1}"
[[ -n "$cmd" && -n "$work" && "$nodes" =~ ^[1-9]$ ]] || { echo "usage: $0 start|stop WORKDIR [NODES 1-9]" >&2; exit 2; }
[[ "$work" == /* ]] || { echo "WORKDIR must be an absolute path, got '$work'" >&2; exit 2; }
netns_prefix="erc$(printf %s "$work" | md5sum | cut -c1-6)"  # this WORKDIR's namespaces only

stop_daemons() {
    # read every pid file first: the daemons delete theirs on exit
    local pids=() f pid
    for f in "$work"/run/slurm*.pid; do
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

remove_namespaces() {
    # what still runs in a node (nothing, once its jobs tore down) is killed by PID, then the namespace goes
    local ns pid left
    [[ -s "$work/run/netns" ]] || return 0
    while read -r ns; do
        left="$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"
        if [[ -n "${left// /}" ]]; then
            echo "killing processes left in network namespace $ns: $left"
            for pid in $left; do kill -KILL "$pid" 2>/dev/null || true; done
            for _ in $(seq 1 50); do
                [[ -z "$(ip netns pids "$ns" 2>/dev/null)" ]] && break
                sleep 0.1
            done
        fi
        ip netns del "$ns" 2>/dev/null || true
    done <"$work/run/netns"
    if [[ -s "$work/node_tmp" ]]; then rmdir "$(cat "$work/node_tmp")" 2>/dev/null || true; fi
    rm -f "$work/run/netns"
    echo "removed the network namespaces of $work"
}

if [[ "$cmd" == stop ]]; then
    # jobs first (scoped to this cluster by SLURM_CONF), so no batch script outlives its slurmd
    export SLURM_CONF="$work/etc/slurm.conf"
    [[ -d "$work/bin" ]] && export PATH="$work/bin:$PATH"
    if [[ -s "$work/run/slurmctld.pid" ]] && scancel --quiet --full --user="$(id -un)" 2>/dev/null; then
        for _ in $(seq 1 60); do
            [[ -z "$(squeue -h 2>/dev/null)" ]] && break
            sleep 1
        done
    fi
    stop_daemons
    remove_namespaces
    exit 0
fi
[[ "$cmd" == start ]] || { echo "unknown command $cmd" >&2; exit 2; }

for bin in slurmctld slurmd sbatch squeue sinfo scontrol scancel; do
    command -v "$bin" >/dev/null 2>&1 || { echo "slurm binary '$bin' not found (run .ci/install_slurm.sh)" >&2; exit 77; }
done

mem=$(( $(free -m | awk '/^Mem:/ {print $2}') * 95 / 100 ))
cpus="$(nproc)"
mkdir -p "$work/etc" "$work/state" "$work/spool" "$work/run" "$work/log"
if [[ "$nodes" == 1 ]]; then
    host="$(hostname -s)"
    addr=""
    getent hosts "$host" >/dev/null 2>&1 || addr="NodeAddr=127.0.0.1"
    controller="$host"
    node_lines="NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN $addr"
    slurmd_pid="$work/run/slurmd.pid"
else
    if [[ "$(id -u)" != 0 ]] || ! command -v ip >/dev/null || ! command -v nsenter >/dev/null || ! command -v unshare >/dev/null; then
        echo "$nodes nodes need root and ip (iproute2), nsenter, unshare (util-linux)" >&2
        exit 77
    fi
    # Each node is a CPU-backend training node: ERC_TEST_NODE_CPUS logical CPUs (Ray's CPUs are logical; the
    # CPU rehearsal places 6 on its head) and one GPU as a count-only gres (no device file: a logical GPU, one
    # training process, as the CPU backend's Ray GPUs). config_overrides: slurmd takes the CPUs as configured.
    cpus="${ERC_TEST_NODE_CPUS:-8}"
    controller="node1(10.231.0.1)"
    node_lines="GresTypes=gpu"$'\n'"SlurmdParameters=config_overrides"$'\n'
    host_lines=""
    for i in $(seq 1 "$nodes"); do
        node_lines+="NodeName=node$i NodeAddr=10.231.0.$i CPUs=$cpus Gres=gpu:1 RealMemory=$((mem / nodes)) State=UNKNOWN"$'\n'
        host_lines+="10.231.0.$i node$i"$'\n'
    done
    echo "NodeName=node[1-$nodes] Name=gpu Count=1 File=/dev/null" >"$work/etc/gres.conf"
    # each node's /etc/hosts: the machine's, plus every node's name (as a cluster's DNS gives; gloo binds the
    # address its hostname resolves to)
    { grep -v -w -e 'node[0-9]' /etc/hosts; printf '%s' "$host_lines"; } >"$work/etc/hosts"
    slurmd_pid="$work/run/slurmd-%n.pid"
fi
cat >"$work/etc/slurm.conf" <<CONF
ClusterName=ercslurmtest
SlurmctldHost=$controller
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool/%n
SlurmctldPidFile=$work/run/slurmctld.pid
SlurmdPidFile=$slurmd_pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd-%n.log
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
$node_lines
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$work/etc/slurm.conf"

if [[ "$nodes" == 1 ]]; then
    mkdir -p "$work/spool/$host"
    slurmctld
    slurmd
else
    node_tmp="/tmp/ercnode_${netns_prefix#erc}"  # short: Ray's socket paths under it stay below 107 bytes
    echo "$node_tmp" >"$work/node_tmp"
    mkdir -p "$node_tmp" "$work/bin"
    : >"$work/run/netns"
    switch="${netns_prefix}sw"
    ip netns add "$switch"
    echo "$switch" >>"$work/run/netns"
    ip -n "$switch" link add br0 type bridge
    ip -n "$switch" link set br0 up
    for i in $(seq 1 "$nodes"); do
        ns="${netns_prefix}n$i"
        ip netns add "$ns"
        echo "$ns" >>"$work/run/netns"
        ip -n "$switch" link add "v$i" type veth peer name eth0 netns "$ns"
        ip -n "$switch" link set "v$i" master br0 up
        ip -n "$ns" addr add "10.231.0.$i/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
        ip -n "$ns" route add default dev eth0  # as on a real node (vLLM and Ray find their address by a route)
        mkdir -p "$work/spool/node$i"
        daemons="slurmd -N node$i"
        [[ "$i" == 1 ]] && daemons="slurmctld; $daemons"
        # nsenter, not `ip netns exec`, which remounts /sys: slurmd needs the machine's /sys/fs/cgroup
        nsenter --net="/run/netns/$ns" unshare --uts --mount --propagation private bash -c "
            set -e
            hostname node$i
            mount -t tmpfs -o size=8g tmpfs /dev/shm
            mount -t tmpfs tmpfs $node_tmp
            mount --bind $work/etc/hosts /etc/hosts
            $daemons"
    done
    outside="${netns_prefix}out"  # a host on the cluster's network that is not in the job
    ip netns add "$outside"
    echo "$outside" >>"$work/run/netns"
    ip -n "$switch" link add vout type veth peer name eth0 netns "$outside"
    ip -n "$switch" link set vout master br0 up
    ip -n "$outside" addr add 10.231.0.250/24 dev eth0
    ip -n "$outside" link set eth0 up
    ip -n "$outside" link set lo up
    echo "$outside" >"$work/outside_netns"
    for client in sbatch squeue sinfo scontrol scancel; do
        printf '#!/bin/sh\nexec nsenter --net=/run/netns/%s %s "$@"\n' "${netns_prefix}n1" "$(command -v "$client")" >"$work/bin/$client"
        chmod +x "$work/bin/$client"
    done
    export PATH="$work/bin:$PATH"
fi
states=""
for _ in $(seq 1 60); do
    states="$(sinfo -h -N -o %T 2>/dev/null || true)"
    if [[ "$(grep -c '^idle' <<<"$states" || true)" == "$nodes" ]]; then
        echo "SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 1
done
echo "slurm: not all $nodes node(s) idle after 60 s (states: ${states//$'\n'/ }); logs in $work/log" >&2
stop_daemons
remove_namespaces
exit 1
