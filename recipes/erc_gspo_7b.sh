#!/usr/bin/env bash
# ERC on top of GSPO on DeepSeek-R1-Distill-Qwen-7B (section 5.7).
# Usage: recipes/erc_gspo_7b.sh [hydra overrides...]   (environment: see recipes/_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
erc_recipe erc_gspo_7b 7b "$@"
