#!/usr/bin/env bash
# ERC-GPPO on DeepSeek-R1-Distill-Qwen-7B (Table 3).
# Usage: recipes/erc_gppo_7b.sh [hydra overrides...]   (environment: python -m verl_erc.recipes --help)
exec "${ERC_PYTHON:-python}" -m verl_erc.recipes run erc_gppo_7b "$@"
