#!/usr/bin/env bash
# ERC-GPPO on DeepSeek-R1-Distill-Qwen-7B (Table 3).
# Usage: recipes/erc_gppo_7b.sh [hydra overrides...]   (environment: see recipes/_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
erc_recipe erc_gppo_7b 7b "$@"
