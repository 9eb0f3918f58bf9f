#!/usr/bin/env bash
# GPPO on DeepSeek-R1-Distill-Qwen-1.5B.
# Usage: recipes/gppo_1p5b.sh [hydra overrides...]   (environment: see recipes/_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
erc_recipe gppo_1p5b 1p5b "$@"
