#!/usr/bin/env bash
# GRPO on DeepSeek-R1-Distill-Qwen-7B (Table 1).
# Usage: recipes/grpo_7b.sh [hydra overrides...]   (environment: python -m verl_erc.recipes --help)
exec "${ERC_PYTHON:-python}" -m verl_erc.recipes run grpo_7b "$@"
