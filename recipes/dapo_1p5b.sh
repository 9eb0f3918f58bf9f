#!/usr/bin/env bash
# DAPO on DeepSeek-R1-Distill-Qwen-1.5B (Table 1).
# Usage: recipes/dapo_1p5b.sh [hydra overrides...]   (environment: see recipes/_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
erc_recipe dapo_1p5b 1p5b "$@"
