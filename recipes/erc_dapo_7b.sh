#!/usr/bin/env bash
# ERC-DAPO on DeepSeek-R1-Distill-Qwen-7B (Table 1, Fig. 6, 8).
# Usage: recipes/erc_dapo_7b.sh [hydra overrides...]   (environment: python -m verl_erc.recipes --help)
exec "${ERC_PYTHON:-python}" -m verl_erc.recipes run erc_dapo_7b "$@"
