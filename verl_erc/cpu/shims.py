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
