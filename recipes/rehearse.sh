#!/usr/bin/env bash
# The laptop rehearsal of a paper recipe: the recipe's own config and launcher, at toy scale on CPU.
# Usage: recipes/rehearse.sh RECIPE [hydra overrides...]     e.g. recipes/rehearse.sh erc_dapo_7b
#
# The recipe's command (python -m verl_erc.recipes) with `+rehearsal=laptop` (hydra_conf/rehearsal/laptop.yaml:
# what a laptop forces, nothing else), the tiny local Qwen2 as the model and the toy task as the data (built on
# first use, verl_erc/laptop/assets.py), run directories under $ERC_RUNS_DIR (default outputs/rehearsals).
# Run directory, launches.log, metrics, checkpoints and resume are the recipe's: rerunning the command resumes an
# unfinished run from its newest checkpoint and refuses a finished one (docs/run_life.md).
exec "${ERC_PYTHON:-python}" -m verl_erc.recipes rehearse "$@"
