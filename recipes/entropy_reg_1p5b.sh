#!/usr/bin/env bash
# Entropy-regularised DAPO on DeepSeek-R1-Distill-Qwen-1.5B (Fig. 7).
# Usage: recipes/entropy_reg_1p5b.sh [hydra overrides...]   (environment: python -m verl_erc.recipes --help)
exec "${ERC_PYTHON:-python}" -m verl_erc.recipes run entropy_reg_1p5b "$@"
