#!/usr/bin/env bash
# The laptop rehearsal of a paper recipe: the recipe's own config, script and launcher, at toy scale on CPU.
# Usage: recipes/rehearse.sh RECIPE [hydra overrides...]     e.g. recipes/rehearse.sh erc_dapo_7b
#
# Runs recipes/RECIPE.sh with `+rehearsal=laptop` (hydra_conf/rehearsal/laptop.yaml: what a laptop
# forces, nothing else) and these defaults for the recipe's environment (see recipes/_common.sh):
#   ERC_MODEL_1P5B, ERC_MODEL_7B  the tiny local Qwen2 (built on first use, verl_erc/cpu/assets.py)
#   ERC_DATA_DIR                  the toy task in the paper's schema, from python -m verl_erc.data
#   ERC_RUNS_DIR                  outputs/rehearsals, unless set
# Run directory, launches.log, metrics, checkpoints and resume are the recipe's: rerunning the
# command resumes an unfinished run from its newest checkpoint and refuses a finished one (docs/run_life.md).
set -euo pipefail

recipes="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ $# -lt 1 || "$1" == _* || ! -f "$recipes/$1.sh" || "$1" == rehearse || "$1" == evaluate ]]; then
    names=$(cd "$recipes" && ls -- *.sh | grep -v -e '^_' -e '^rehearse.sh$' -e '^evaluate.sh$' | sed 's/\.sh$//' | tr '\n' ' ')
    echo "usage: recipes/rehearse.sh RECIPE [hydra overrides...]; RECIPE is one of: $names" >&2
    exit 2
fi
recipe="$1"
shift

assets="$("${ERC_PYTHON:-python}" -m verl_erc.cpu.assets)"  # model=... data=...
model="$(sed -n 's/^model=//p' <<<"$assets")"
data="$(sed -n 's/^data=//p' <<<"$assets")"
export ERC_MODEL_1P5B="$model" ERC_MODEL_7B="$model" ERC_DATA_DIR="$data"
export ERC_RUNS_DIR="${ERC_RUNS_DIR:-outputs/rehearsals}"
exec "$recipes/$recipe.sh" +rehearsal=laptop "$@"
