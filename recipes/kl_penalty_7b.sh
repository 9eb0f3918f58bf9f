#!/usr/bin/env bash
# KL-regularised DAPO on DeepSeek-R1-Distill-Qwen-7B (Fig. 6).
# Usage: recipes/kl_penalty_7b.sh [hydra overrides...]   (environment: see recipes/_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
erc_recipe kl_penalty_7b 7b "$@"
