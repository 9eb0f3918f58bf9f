"""The CPU backend's only changes to verl behaviour that no verl registry or config reaches.

Each shim is narrow, installed only on the CPU platform, and pinned by ``tests/test_cpu_shims.py``,
which fails when the verl code it works around changes (then re-check the shim, or drop it if
verl fixed the problem). Both are worth reporting upstream:

1. :func:`install_process_group_backend` -- verl's ``TrainingWorker`` initialises torch.distributed
   with ``initialize_global_process_group_ray(timeout_second=None)``, whose default backend string
   is ``f"cpu:gloo,{device}:{backend}"``; on the CPU platform that is ``"cpu:gloo,cpu:gloo"``,
   which torch rejects (duplicate device type). The shim supplies ``backend="gloo"`` at that call
   site (the name ``verl.workers.engine_workers`` calls), and changes nothing else.
2. :func:`value_model_loader_with_config_attention` -- ``verl.utils.model.load_valuehead_model``
   passes ``attn_implementation="flash_attention_2"`` to transformers regardless of the model
   config (FlashAttention is CUDA-only). Only while the CPU critic engine builds its module, the
   loader builds the same ``AutoModelForTokenClassification`` with the attention the model config
   names (``override_config.attn_implementation``, ``sdpa`` in the CPU configs).
3. :func:`keep_vllm_cpu_linear_weights` -- on the CPU, vLLM's ``UnquantizedLinearMethod``
   packs each linear weight for its GEMM kernel after loading and replaces ``layer.weight`` with an
   empty tensor (``dispatch_cpu_unquantized_gemm(layer, remove_weight=True)``). verl's weight sync
   loads the actor's new weights into those parameters in place, then re-runs the post-load step,
   so it fails on the emptied ones ("Attempted to load weight ... into parameter (torch.Size([0]))").
   The shim keeps the weight (``remove_weight=False``, as vLLM already does for embeddings), at the
   cost of one extra copy of the linear weights in the rollout's memory. Installed in vLLM's
   worker processes by :class:`verl_erc.cpu.vllm_worker.CPUColocateWorkerExtension`.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

_SHIM_FLAG = "_verl_erc_cpu_shim"


def install_process_group_backend() -> None:
    """Make ``engine_workers``' process-group init default to ``backend="gloo"`` (idempotent)."""
    from verl.workers import engine_workers

    original = engine_workers.initialize_global_process_group_ray
    if getattr(original, _SHIM_FLAG, False):
        return

    @functools.wraps(original)
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        return original(timeout_second=timeout_second, backend=backend or "gloo")

    setattr(initialize_global_process_group_ray, _SHIM_FLAG, True)
    engine_workers.initialize_global_process_group_ray = initialize_global_process_group_ray


def _load_value_model(local_path, torch_dtype, model_config, trust_remote_code):
    """``load_valuehead_model``'s token-classification path, with the config's attention implementation."""
    from transformers import AutoModelForTokenClassification

    return AutoModelForTokenClassification.from_pretrained(
        pretrained_model_name_or_path=local_path,
        torch_dtype=torch_dtype,
        config=model_config,
        trust_remote_code=trust_remote_code,
    )


@contextmanager
def value_model_loader_with_config_attention():
    """Within the block, verl's engine loads value models with the model config's attention."""
    from verl.utils import model as verl_model

    original = verl_model.load_valuehead_model
    verl_model.load_valuehead_model = _load_value_model
    try:
        yield
    finally:
        verl_model.load_valuehead_model = original


def keep_vllm_cpu_linear_weights() -> None:
    """Make vLLM's CPU linear layers keep ``weight`` after packing it, so verl can reload it (idempotent)."""
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
    from vllm.platforms import current_platform

    if getattr(UnquantizedLinearMethod.process_weights_after_loading, _SHIM_FLAG, False):
        return
    original = UnquantizedLinearMethod.process_weights_after_loading

    @functools.wraps(original)
    def process_weights_after_loading(self, layer):
        if not current_platform.is_cpu():
            return original(self, layer)
        dispatch_cpu_unquantized_gemm(layer, remove_weight=False)

    setattr(process_weights_after_loading, _SHIM_FLAG, True)
    UnquantizedLinearMethod.process_weights_after_loading = process_weights_after_loading
