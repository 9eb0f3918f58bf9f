#!/usr/bin/env bash
# ERC-GPPO on DeepSeek-R1-Distill-Qwen-1.5B.
# Usage: recipes/erc_gppo_1p5b.sh [hydra overrides...]   (environment: see recipes/_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
erc_recipe erc_gppo_1p5b 1p5b "$@"
