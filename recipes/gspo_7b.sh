#!/usr/bin/env bash
# GSPO on DeepSeek-R1-Distill-Qwen-7B (Fig. 8).
# Usage: recipes/gspo_7b.sh [hydra overrides...]   (environment: see recipes/_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
erc_recipe gspo_7b 7b "$@"
