#!/usr/bin/env bash
# DAPO on DeepSeek-R1-Distill-Qwen-7B (Table 1).
# Usage: recipes/dapo_7b.sh [hydra overrides...]   (environment: python -m verl_erc.recipes --help)
exec "${ERC_PYTHON:-python}" -m verl_erc.recipes run dapo_7b "$@"
