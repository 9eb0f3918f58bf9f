#!/usr/bin/env bash
# ERC on top of GSPO on DeepSeek-R1-Distill-Qwen-7B (section 5.7).
# Usage: recipes/erc_gspo_7b.sh [hydra overrides...]   (environment: python -m verl_erc.recipes --help)
exec "${ERC_PYTHON:-python}" -m verl_erc.recipes run erc_gspo_7b "$@"
