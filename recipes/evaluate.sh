#!/usr/bin/env bash
# A recipe's validation only (verl's trainer.val_only): its validation set, the paper's benchmarks at their avg@k,
# for a model or a run's checkpoint, into a run directory that python -m verl_erc.compare reads like any run.
# Usage: recipes/evaluate.sh [--step N] [--laptop] RECIPE MODEL [hydra overrides...] (in any order)
#   MODEL   base           the recipe's own model (ERC_MODEL_1P5B / ERC_MODEL_7B): Table 1's first row
#           a run directory  its newest complete checkpoint (or --step N), exported first into the evaluation's
#                          run directory (python -m verl_erc.export, verl's model merger)
#           a Hugging Face model folder or hub id
#   --laptop  as recipes/rehearse.sh: +rehearsal=laptop, the toy task, base = the tiny local model
# Run directory: $ERC_RUNS_DIR/$ERC_RUN_NAME, by default eval_<model folder name> for a model, and for a run
# <recipe>-seed<S> at step N: <recipe>_step<N>_eval-seed<S> (so compare groups seeds and pairs erc_ with its
# baseline). An evaluated directory is not evaluated again (remove it to). Environment: recipes/_common.sh.
# Under Slurm: slurm/submit.sh [options] evaluate RECIPE MODEL [overrides].
set -euo pipefail

recipes="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
die() {
    echo "error: $*" >&2
    exit 2
}
usage="usage: recipes/evaluate.sh [--step N] [--laptop] RECIPE MODEL [hydra overrides...] (MODEL: base, a run directory, a model folder or hub id)"
# RECIPE and MODEL are the first two words that are not Hydra overrides (key=value, ~key): the Slurm
# launcher puts its own overrides before the arguments it was given
step="" laptop=0 words=() overrides=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --step) [[ "${2:-}" =~ ^[0-9]+$ ]] || die "--step needs a step number; $usage"; step="$2"; shift 2 ;;
        --laptop) laptop=1; shift ;;
        -*) die "unknown option $1; $usage" ;;
        *=* | ~*) overrides+=("$1"); shift ;;
        *) words+=("$1"); shift ;;
    esac
done
[[ ${#words[@]} -eq 2 ]] || die "$usage"
recipe="${words[0]}" target="${words[1]}"
[[ "$recipe" != _* && "$recipe" != rehearse && "$recipe" != evaluate && -f "$recipes/$recipe.sh" ]] ||
    die "no recipe '$recipe'; $usage"
size="$(sed -n 's/^erc_recipe [^ ]* \([^ ]*\) .*/\1/p' "$recipes/$recipe.sh")"
model_var="ERC_MODEL_${size^^}"
python="${ERC_PYTHON:-python}"

profile=()
if [[ "$laptop" == 1 ]]; then
    assets="$("$python" -m verl_erc.cpu.assets)"  # model=... data=...
    export "$model_var=$(sed -n 's/^model=//p' <<<"$assets")"
    export ERC_DATA_DIR="${ERC_DATA_DIR:-$(sed -n 's/^data=//p' <<<"$assets")}"
    export ERC_RUNS_DIR="${ERC_RUNS_DIR:-outputs/rehearsals}"
    profile=(+rehearsal=laptop)
fi
[[ -n "${ERC_RUNS_DIR:-}" ]] || die "ERC_RUNS_DIR is not set: export ERC_RUNS_DIR=<folder for run directories>"
runs_dir="$(realpath -m -- "$ERC_RUNS_DIR")"

export_from=""
if [[ "$target" == base ]]; then
    [[ -n "${!model_var:-}" ]] || die "$model_var is not set: export $model_var=<the recipe's model folder or hub id>"
    [[ -z "$step" ]] || die "--step is for a run directory"
    name="eval_$(basename -- "${!model_var}")"
elif [[ -d "$target" && ( -f "$target/identity.json" || -d "$target/checkpoints" ) ]]; then
    export_from="$(realpath -- "$target")"
    folder="$("$python" -m verl_erc.export "$export_from" ${step:+--step "$step"} --which)"  # .../global_step_N/actor
    step_name="$(basename -- "$(dirname -- "$folder")")"
    run_name="$(basename -- "$export_from")"
    if [[ "$run_name" =~ ^(.+)[-_]seed([0-9]+)$ ]]; then
        name="${BASH_REMATCH[1]}_step${step_name#global_step_}_eval-seed${BASH_REMATCH[2]}"
    else
        name="${run_name}_step${step_name#global_step_}_eval"
    fi
else
    [[ -z "$step" ]] || die "--step is for a run directory; $target is not one (no identity.json or checkpoints/)"
    [[ "$target" != /* && "$target" != .* ]] || [[ -d "$target" ]] || die "$target is not a folder"
    export "$model_var=$target"
    name="eval_$(basename -- "$target")"
fi
run_dir="$runs_dir/${ERC_RUN_NAME:-$name}"
if compgen -G "$run_dir/metrics/*.jsonl" >/dev/null && grep -qs '"val-core/' "$run_dir"/metrics/*.jsonl; then
    die "$run_dir already holds this evaluation's scores; remove it to evaluate again"
fi
if [[ -n "$export_from" && "${VERL_ERC_DRY_RUN:-0}" == 1 && ! -d "$run_dir/model" ]]; then
    echo "would export: $folder -> $run_dir/model"
    export "$model_var=$folder/huggingface"  # the exported folder's config and tokenizer, for slurm/submit.sh --check
elif [[ -n "$export_from" ]]; then
    if [[ ! -d "$run_dir/model" ]]; then  # exported into model.partial, renamed once whole and checked
        rm -rf -- "$run_dir/model.partial"
        "$python" -m verl_erc.export "$export_from" --step "${step_name#global_step_}" --out "$run_dir/model.partial"
        mv -- "$run_dir/model.partial" "$run_dir/model"
    fi
    export "$model_var=$run_dir/model"
fi
export ERC_RUN_NAME="${ERC_RUN_NAME:-$name}" ERC_RUNS_DIR="$runs_dir"
exec "$recipes/$recipe.sh" "${profile[@]}" trainer.val_only=true trainer.val_before_train=true "${overrides[@]}"
