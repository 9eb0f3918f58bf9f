#!/usr/bin/env bash
# GSPO on DeepSeek-R1-Distill-Qwen-7B (section 5.7).
# Usage: recipes/gspo_7b.sh [hydra overrides...]   (environment: python -m verl_erc.recipes --help)
exec "${ERC_PYTHON:-python}" -m verl_erc.recipes run gspo_7b "$@"
