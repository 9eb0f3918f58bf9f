#!/usr/bin/env bash
# GPU check for one H100/H200, at most 8 minutes: ERC's overhead at the DeepSeek-R1-Distill-Qwen-1.5B
# shape (28 layers, 151,936-token vocabulary) in bf16 with gradient checkpointing, at 8k and 16k
# tokens: ERC vs DAPO vs the naive entropy (time: median of 3 interleaved rounds; peak memory:
# torch.cuda.max_memory_allocated in a fresh process per variant). Results: benchmarks/results/.
#
#   bash benchmarks/gpu_check.sh [OUT_JSON]
#
# Needs torch with CUDA, transformers, and verl 0.9.1 importable (the benchmark uses verl's own loss
# code; `import verl` imports Ray). Status: prepared, NOT YET RUN on a GPU (no GPU was lent to the
# sessions so far). Trainer steps on the GPU are not part of it: they need vLLM and Ray, which do
# not fit the GPU test machine's 64 MiB per transfer.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/erc_overhead_gpu.json}

python - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check.sh: torch sees no CUDA device")
import verl  # noqa: F401  (fails here, before any GPU time is spent, if verl or Ray is missing)
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, verl {verl.__version__}", flush=True)
PY
# 420 s for the benchmark leaves a minute of the 8 for start-up and the check above
timeout 420 python benchmarks/erc_overhead.py --device cuda --dtype bfloat16 --layers 28 --grad-ckpt \
  --tokens 8192 16384 --repeats 3 --json-out "$OUT"
