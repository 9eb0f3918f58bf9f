#!/usr/bin/env bash
# ERC-GPPO on DeepSeek-R1-Distill-Qwen-1.5B.
# Usage: recipes/erc_gppo_1p5b.sh [hydra overrides...]   (environment: python -m verl_erc.recipes --help)
exec "${ERC_PYTHON:-python}" -m verl_erc.recipes run erc_gppo_1p5b "$@"
