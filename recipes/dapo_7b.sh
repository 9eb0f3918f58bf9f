#!/usr/bin/env bash
# DAPO on DeepSeek-R1-Distill-Qwen-7B (Table 1).
# Usage: recipes/dapo_7b.sh [hydra overrides...]   (environment: see recipes/_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
erc_recipe dapo_7b 7b "$@"
