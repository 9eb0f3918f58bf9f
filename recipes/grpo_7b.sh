#!/usr/bin/env bash
# GRPO on DeepSeek-R1-Distill-Qwen-7B (Table 1).
# Usage: recipes/grpo_7b.sh [hydra overrides...]   (environment: see recipes/_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
erc_recipe grpo_7b 7b "$@"
