# shellcheck shell=bash
# Shared launcher of the paper recipes (sourced by recipes/*.sh; not run directly).
#
# erc_recipe CONFIG_NAME MODEL_SIZE [HYDRA_OVERRIDES...]
#   runs `python -m verl_erc.main --config-name CONFIG_NAME` with the paths below and the run
#   directory $ERC_RUNS_DIR/$ERC_RUN_NAME (default CONFIG_NAME-seed$ERC_SEED), then the given
#   overrides, unchanged (they come last, so they win). verl_erc.main checks the launch against
#   the run directory before Ray starts (verl_erc/launch.py) and records it in launches.log.
#
# Environment:
#   ERC_MODEL_1P5B / ERC_MODEL_7B  model for the recipe's size (local dir or hub id), required
#   ERC_DATA_DIR      folder with train.parquet and val.parquet (python -m verl_erc.data), required
#   ERC_RUNS_DIR      where run directories go (checkpoints, TensorBoard, metrics), required
#   ERC_SEED          seed of data order and sampling (default 1); part of the run name
#   ERC_RUN_NAME      run directory name (default CONFIG_NAME-seed$ERC_SEED; end it in -seed<N> so that
#                     python -m verl_erc.compare groups seeds)
#   ERC_PYTHON        interpreter (default: python)
#   VERL_ERC_ENTRYPOINT  command replacing "$ERC_PYTHON -m verl_erc.main" (e.g. for tests)
#   VERL_ERC_DRY_RUN=1   print the command and exit without running it

set -euo pipefail

_erc_die() {
    echo "error: $*" >&2
    exit 2
}

_erc_require() {  # NAME WHAT: the variable must be set and non-empty
    [[ -n "${!1:-}" ]] || _erc_die "$1 is not set: export $1=<$2>"
}

erc_recipe() {
    local config_name="$1" size="$2"
    shift 2
    local model_var="ERC_MODEL_${size^^}"
    local label="${size^^}"
    _erc_require "$model_var" "DeepSeek-R1-Distill-Qwen-${label/P/.} (local folder or hub id)"
    _erc_require ERC_DATA_DIR "folder with train.parquet and val.parquet from 'python -m verl_erc.data'"
    _erc_require ERC_RUNS_DIR "folder for run directories"
    # absolute paths: Ray workers do not share the launcher's working directory
    local model="${!model_var}" data_dir runs_dir
    if [[ "$model" == /* || "$model" == .* ]]; then
        [[ -d "$model" ]] || _erc_die "$model_var=$model is not a folder"
        model="$(realpath -- "$model")"
    fi
    data_dir="$(realpath -m -- "$ERC_DATA_DIR")"
    runs_dir="$(realpath -m -- "$ERC_RUNS_DIR")"
    local split
    for split in train val; do
        [[ -f "$data_dir/$split.parquet" ]] ||
            _erc_die "$data_dir/$split.parquet not found: run 'python -m verl_erc.data --out-dir $data_dir'"
    done

    local seed="${ERC_SEED:-1}"
    local run_name="${ERC_RUN_NAME:-${config_name}-seed${seed}}"
    local run_dir="$runs_dir/$run_name"
    local launch
    launch="$(date +%Y%m%d-%H%M%S)${SLURM_JOB_ID:+-job$SLURM_JOB_ID}${SLURM_RESTART_COUNT:+-restart$SLURM_RESTART_COUNT}"

    # verl's TensorBoard and file loggers read their locations from the environment of verl's task
    # runner, a Ray actor: passed in Ray's runtime env, since a cluster started apart from the driver
    # (ray start, Slurm) does not see the driver's environment. One metrics file per launch: verl's
    # file logger truncates the file it opens.
    local tensorboard_dir="$run_dir/tensorboard" metrics_file="$run_dir/metrics/$launch.jsonl"
    local entry
    read -r -a entry <<<"${VERL_ERC_ENTRYPOINT:-${ERC_PYTHON:-python} -m verl_erc.main}"
    local cmd=(
        "${entry[@]}" --config-name "$config_name"
        "actor_rollout_ref.model.path=$model"
        "data.train_files=$data_dir/train.parquet"
        "data.val_files=$data_dir/val.parquet"
        "data.seed=$seed"
        "trainer.experiment_name=$run_name"
        "trainer.default_local_dir=$run_dir/checkpoints"
        "++ray_kwargs.ray_init.runtime_env.env_vars.TENSORBOARD_DIR=$tensorboard_dir"
        "++ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH=$metrics_file"
        "$@"
    )

    echo "run directory: $run_dir (TensorBoard: $tensorboard_dir, metrics: $metrics_file)"
    echo "command: $(printf '%q ' "${cmd[@]}")"
    if [[ "${VERL_ERC_DRY_RUN:-0}" == 1 ]]; then
        return 0
    fi
    mkdir -p "$run_dir/metrics" "$tensorboard_dir"
    VERL_ERC_RUN_DIR="$run_dir" VERL_ERC_LAUNCH="$launch" exec "${cmd[@]}"
}
