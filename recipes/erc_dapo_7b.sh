#!/usr/bin/env bash
# ERC-DAPO on DeepSeek-R1-Distill-Qwen-7B (Table 1, Fig. 6, 8).
# Usage: recipes/erc_dapo_7b.sh [hydra overrides...]   (environment: see recipes/_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
erc_recipe erc_dapo_7b 7b "$@"
