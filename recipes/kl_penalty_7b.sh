#!/usr/bin/env bash
# DAPO with a KL penalty on DeepSeek-R1-Distill-Qwen-7B (Fig. 8).
# Usage: recipes/kl_penalty_7b.sh [hydra overrides...]   (environment: python -m verl_erc.recipes --help)
exec "${ERC_PYTHON:-python}" -m verl_erc.recipes run kl_penalty_7b "$@"
