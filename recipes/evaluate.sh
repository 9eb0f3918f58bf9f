#!/usr/bin/env bash
# A recipe's validation only (verl's trainer.val_only), for a model or a run's checkpoint, into a run directory that
# python -m verl_erc.compare reads like any run.
# Usage: recipes/evaluate.sh [--step N] [--laptop] RECIPE MODEL [hydra overrides...]   (in any order; MODEL: base,
# a run directory, a model folder or hub id). Details and the environment: python -m verl_erc.evaluate (its module).
exec "${ERC_PYTHON:-python}" -m verl_erc.evaluate "$@"
