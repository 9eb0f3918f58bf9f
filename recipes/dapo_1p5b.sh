#!/usr/bin/env bash
# DAPO on DeepSeek-R1-Distill-Qwen-1.5B (Table 1).
# Usage: recipes/dapo_1p5b.sh [hydra overrides...]   (environment: python -m verl_erc.recipes --help)
exec "${ERC_PYTHON:-python}" -m verl_erc.recipes run dapo_1p5b "$@"
