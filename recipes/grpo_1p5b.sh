#!/usr/bin/env bash
# GRPO on DeepSeek-R1-Distill-Qwen-1.5B (Table 1).
# Usage: recipes/grpo_1p5b.sh [hydra overrides...]   (environment: see recipes/_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
erc_recipe grpo_1p5b 1p5b "$@"
