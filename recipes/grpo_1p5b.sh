#!/usr/bin/env bash
# GRPO on DeepSeek-R1-Distill-Qwen-1.5B (Table 1).
# Usage: recipes/grpo_1p5b.sh [hydra overrides...]   (environment: python -m verl_erc.recipes --help)
exec "${ERC_PYTHON:-python}" -m verl_erc.recipes run grpo_1p5b "$@"
