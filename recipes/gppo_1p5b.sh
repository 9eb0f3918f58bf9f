#!/usr/bin/env bash
# GPPO on DeepSeek-R1-Distill-Qwen-1.5B.
# Usage: recipes/gppo_1p5b.sh [hydra overrides...]   (environment: python -m verl_erc.recipes --help)
exec "${ERC_PYTHON:-python}" -m verl_erc.recipes run gppo_1p5b "$@"
