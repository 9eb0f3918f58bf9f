#!/usr/bin/env bash
# The GPU checks, one script for one H100/H200 (about 8 minutes): every claim verl-erc makes about GPUs that a
# machine with torch and transformers alone can check, then the ones that need verl where it imports.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          (default benchmarks/results; writes *_gpu.json there)
#
# 1. ERC at the noise floor with cuBLAS's own kernels (benchmarks/erc_noise_floor.py --kernel native), at the
#    DeepSeek-R1-Distill-Qwen-1.5B shape (28 layers, 151,936-token vocabulary, random weights), 16 x 1024
#    tokens, bf16 / bf16 body with fp32 logits / fp32. Claims checked: with verl's packing (the old pass in one
#    forward, the update in two, the recipes' 2:1) bf16 puts tokens outside ERC's band at theta = theta_old, fp32
#    does not; the aligned old pass (the update's micro-batches; the update in train mode with autograd) gives
#    bit-identical entropies (0 outside the band). Needs torch and transformers only (~1-2 min).
# 2. ERC's overhead (benchmarks/erc_overhead.py) at the 1.5B shape in bf16 with gradient checkpointing, 8k and 16k
#    tokens: ERC vs DAPO vs the naive entropy. Needs verl 0.9.1 importable (`import verl` imports Ray): skipped,
#    with a message, where it is not.
# Trainer steps (verl's engine with the aligned pass, vLLM) need verl, Ray and vLLM on the GPU machine: not here.
# Status: prepared, NOT YET RUN on a GPU (no GPU has been lent to a session so far).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results}
mkdir -p "$OUT"

python - <<'PY'
import sys, torch, transformers
if not torch.cuda.is_available():
    sys.exit("gpu_check.sh: torch sees no CUDA device")
print(f"gpu_check.sh: torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name(0)}",
      flush=True)
PY

echo "== 1. ERC at the noise floor, cuBLAS kernels, 1.5B shape"
timeout 240 python benchmarks/erc_noise_floor.py --device cuda --kernel native --hidden 1536 --intermediate 8960 \
  --layers 28 --heads 12 --kv-heads 2 --sequences 16 --seq-len 1024 \
  --json-out "$OUT/erc_noise_floor_gpu.json" --plot "$OUT/erc_noise_floor_gpu.png"

echo "== 2. ERC's overhead, 1.5B shape, bf16, gradient checkpointing"
if python -c "import verl" 2>/dev/null; then
  timeout 300 python benchmarks/erc_overhead.py --device cuda --dtype bfloat16 --layers 28 --grad-ckpt \
    --tokens 8192 16384 --repeats 3 --json-out "$OUT/erc_overhead_gpu.json"
else
  echo "gpu_check.sh: skipped: verl 0.9.1 does not import here (it needs Ray); install verl-erc's [gpu] set to run it"
fi
