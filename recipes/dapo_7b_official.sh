#!/usr/bin/env bash
# DAPO on DeepSeek-R1-Distill-Qwen-7B as the official code ran it.
# Usage: recipes/dapo_7b_official.sh [hydra overrides...]   (environment: python -m verl_erc.recipes --help)
exec "${ERC_PYTHON:-python}" -m verl_erc.recipes run dapo_7b_official "$@"
