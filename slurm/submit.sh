#!/usr/bin/env bash
# Submit a paper recipe as a multi-node Slurm job (Ray on Slurm, slurm/erc_ray.sbatch).
#
#   slurm/submit.sh [options] RECIPE [hydra overrides...]
#   e.g. slurm/submit.sh -N 2 -p gpu -t 2-00:00:00 erc_dapo_7b trainer.total_training_steps=500
#        slurm/submit.sh --rehearse -N 2 -g 1 erc_dapo_7b   (its CPU rehearsal, one training process per node)
#
# Options (flag, or the environment variable in brackets):
#   -N, --nodes N            nodes                          [ERC_SLURM_NODES, default 1]
#   -g, --gpus-per-node G    GPUs per node, 0 for none      [ERC_SLURM_GPUS_PER_NODE, default 8]
#   -c, --cpus-per-node C    CPUs per node                  [ERC_SLURM_CPUS_PER_NODE, default: Slurm's]
#   -p, --partition P        partition                      [ERC_SLURM_PARTITION]
#   -t, --time T             time limit                     [ERC_SLURM_TIME, default 2-00:00:00]
#   -l, --log-dir DIR        job logs (%x-%j.out)           [ERC_SLURM_LOG_DIR, default ./slurm-logs]
#   -r, --requeue-margin S   S seconds before the time limit, ask the trainer to finish its step, save a
#                            checkpoint and stop, then requeue if the run advanced; 0 to disable. Leave a
#                            step and a save: a 7B step of the paper's shape takes minutes
#                                                           [ERC_SLURM_REQUEUE_MARGIN, default 1800]
#   -R, --rehearse           run the recipe's laptop-scale rehearsal (recipes/rehearse.sh) on CPU nodes;
#                            -g G then counts training processes per node (Slurm GPUs or gres)
#   -n, --dry-run            print the sbatch command only
#       --check              check the job against the allocation and stop: the exact config it will run
#                            through verl's and ERC's start-up checks and what verl asserts only on the GPU
#                            workers, the data, model and run directory, memory per GPU (python -m
#                            verl_erc.cluster.submit_check); every submission runs it first
#       --no-check           submit without it
#       --gpu-mem GiB        GPU memory for the check's estimate    [ERC_SLURM_GPU_MEM, default 80]
# Any other sbatch option: ERC_SLURM_EXTRA_ARGS="--account=abc --qos=high".
# The recipe reads its paths from the environment (python -m verl_erc.recipes --help); sbatch passes it on.

set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() { sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

nodes="${ERC_SLURM_NODES:-1}"
gpus="${ERC_SLURM_GPUS_PER_NODE:-8}"
cpus="${ERC_SLURM_CPUS_PER_NODE:-}"
partition="${ERC_SLURM_PARTITION:-}"
time_limit="${ERC_SLURM_TIME:-2-00:00:00}"
log_dir="${ERC_SLURM_LOG_DIR:-$PWD/slurm-logs}"
margin="${ERC_SLURM_REQUEUE_MARGIN:-1800}"
dry_run=0
rehearse=0
check=1
gpu_mem="${ERC_SLURM_GPU_MEM:-80}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        -N | --nodes) nodes="$2"; shift 2 ;;
        -g | --gpus-per-node) gpus="$2"; shift 2 ;;
        -c | --cpus-per-node) cpus="$2"; shift 2 ;;
        -p | --partition) partition="$2"; shift 2 ;;
        -t | --time) time_limit="$2"; shift 2 ;;
        -l | --log-dir) log_dir="$2"; shift 2 ;;
        -r | --requeue-margin) margin="$2"; shift 2 ;;
        -R | --rehearse) rehearse=1; shift ;;
        -n | --dry-run) dry_run=1; shift ;;
        --check) check=only; shift ;;
        --no-check) check=0; shift ;;
        --gpu-mem) gpu_mem="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) break ;;
    esac
done
if [[ $# -lt 1 ]]; then
    usage >&2
    exit 2
fi
recipe="${1%.sh}"
recipe="${recipe##*/}"
shift
# a recipe, or evaluate RECIPE MODEL (recipes/evaluate.sh); which names are recipes: python -m verl_erc.recipes
if [[ "$recipe" == evaluate ]]; then
    [[ $# -ge 2 ]] || { echo "error: usage: slurm/submit.sh [options] evaluate RECIPE MODEL [hydra overrides...]" >&2; exit 2; }
    "${ERC_PYTHON:-python}" -m verl_erc.recipes validate "$1" || exit 2
else
    "${ERC_PYTHON:-python}" -m verl_erc.recipes validate "$recipe" || exit 2
fi
[[ "$nodes" =~ ^[1-9][0-9]*$ ]] || { echo "error: --nodes must be a positive integer, got '$nodes'" >&2; exit 2; }
[[ "$gpus" =~ ^[0-9]+$ ]] || { echo "error: --gpus-per-node must be an integer >= 0, got '$gpus'" >&2; exit 2; }

time_seconds() {  # Slurm time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
    local t="$1" days=0 a b c
    if [[ "$t" == *-* ]]; then
        days="${t%%-*}"
        t="${t#*-}"
        IFS=: read -r a b c <<<"$t"
        echo $(( ((10#$days * 24 + 10#$a) * 60 + 10#${b:-0}) * 60 + 10#${c:-0} ))
        return
    fi
    IFS=: read -r a b c <<<"$t"
    if [[ -n "$c" ]]; then echo $(( (10#$a * 60 + 10#$b) * 60 + 10#$c ))
    elif [[ -n "$b" ]]; then echo $(( 10#$a * 60 + 10#$b ))
    else echo $(( 10#$a * 60 ))
    fi
}
[[ "$time_limit" =~ ^([0-9]+-)?[0-9]+(:[0-9]+){0,2}$ ]] || { echo "error: --time '$time_limit' is not a Slurm time limit" >&2; exit 2; }
if [[ "$margin" -gt 0 && $(( 2 * margin )) -ge "$(time_seconds "$time_limit")" ]]; then
    echo "error: --requeue-margin ${margin}s is not well below --time $time_limit; lower it or pass -r 0" >&2
    exit 2
fi

if [[ "$check" != 0 ]]; then
    if [[ "$rehearse" == 1 ]]; then
        echo "check: skipped for a rehearsal (the laptop profile on CPU nodes)"
    elif ! "${ERC_PYTHON:-python}" -m verl_erc.cluster.submit_check "$recipe" --nodes "$nodes" --gpus-per-node "$gpus" \
        --gpu-mem "$gpu_mem" "$@"; then
        echo "error: not submitted: the job would fail on ${nodes} node(s) x ${gpus} GPU(s) (above); fix it, or submit with --no-check" >&2
        exit 1
    fi
    [[ "$check" == only ]] && exit 0
fi

job_name="erc-$recipe"
[[ "$rehearse" == 1 ]] && job_name+="-rehearsal"
args=(
    --job-name="$job_name"
    --nodes="$nodes"
    --ntasks-per-node=1
    --time="$time_limit"
    --output="$log_dir/%x-%j.out"
    --error="$log_dir/%x-%j.out"
    --export="ALL,VERL_ERC_ROOT=$ROOT,ERC_GPUS_PER_NODE=$gpus,ERC_REHEARSE=$rehearse,ERC_REQUEUE_MARGIN=$margin"
)
[[ "$gpus" -gt 0 ]] && args+=(--gpus-per-node="$gpus" --exclusive)
[[ -n "$cpus" ]] && args+=(--cpus-per-task="$cpus")
[[ -n "$partition" ]] && args+=(--partition="$partition")
[[ "$margin" -gt 0 ]] && args+=(--signal="B:USR1@$margin")
if [[ -n "${ERC_SLURM_EXTRA_ARGS:-}" ]]; then
    read -r -a extra <<<"$ERC_SLURM_EXTRA_ARGS"
    args+=("${extra[@]}")
fi

cmd=(sbatch "${args[@]}" "$ROOT/slurm/erc_ray.sbatch" "$recipe" "$@")
echo "submit: $(printf '%q ' "${cmd[@]}")"
if [[ "$dry_run" == 1 ]]; then
    exit 0
fi
mkdir -p "$log_dir"
exec "${cmd[@]}"
