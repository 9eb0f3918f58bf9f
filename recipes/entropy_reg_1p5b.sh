#!/usr/bin/env bash
# Entropy-regularised DAPO on DeepSeek-R1-Distill-Qwen-1.5B (Fig. 7).
# Usage: recipes/entropy_reg_1p5b.sh [hydra overrides...]   (environment: see recipes/_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
erc_recipe entropy_reg_1p5b 1p5b "$@"
