"""What defines a run: the part of its composed config that changes the experiment, hashed and compared.

Every key of the composed (resolved) config is an **experiment key** (loss, ERC knobs, optimizer,
data, model, lengths, batch shape, seed, ...) except the keys matched by :data:`RELAUNCH_KEYS`:
resources, logging, checkpoint and validation cadence, micro-batching and memory settings, which a
relaunch of the same run may change. :mod:`verl_erc.launch` refuses a launch into a run directory
whose recorded experiment keys differ from the new ones, listing each key with both values.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from fnmatch import fnmatchcase
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

#: Keys a relaunch may change without changing the experiment (fnmatch patterns on dotted keys).
RELAUNCH_KEYS = (
    # extending the run, and where it logs
    "trainer.total_training_steps", "trainer.total_epochs", "trainer.logger", "trainer.project_name",
    "trainer.experiment_name", "*.trace.project_name", "*.trace.experiment_name", "trainer.log_val_generations",
    "trainer.rollout_data_dir", "trainer.validation_data_dir", "actor_rollout_ref.actor.erc.analysis.*",
    # checkpoint and validation cadence, resume
    "trainer.save_freq", "trainer.test_freq", "trainer.val_before_train", "trainer.max_actor_ckpt_to_keep",
    "trainer.max_critic_ckpt_to_keep", "trainer.resume_mode", "trainer.resume_from_path",
    "trainer.del_local_ckpt_after_load", "trainer.default_local_dir", "trainer.default_hdfs_dir", "trainer.checkpoint_callback_class",
    # the allocation and the processes on it
    "trainer.nnodes", "trainer.n_gpus_per_node", "*.nnodes", "*.n_gpus_per_node", "ray_kwargs.*",
    "trainer.ray_wait_register_center_timeout", "*.nccl_timeout", "*.agent.num_workers", "reward.num_workers",
    "data.dataloader_num_workers", "transfer_queue.*", "global_profiler.*", "*.profiler.*", "skip.*",
    # parallelism, micro-batching and memory: the same updates, computed in other pieces
    "*.ulysses_sequence_parallel_size", "*.tensor_model_parallel_size", "*.data_parallel_size",
    "*.fsdp_config.fsdp_size", "*.turbo_config.distributed.*", "*.ppo_micro_batch_size",
    "*.ppo_micro_batch_size_per_gpu", "*.log_prob_micro_batch_size", "*.log_prob_micro_batch_size_per_gpu",
    "*.ppo_max_token_len_per_gpu", "*.log_prob_max_token_len_per_gpu", "*.use_dynamic_bsz",
    "*.log_prob_use_dynamic_bsz", "*.param_offload", "*.optimizer_offload", "*.offload_policy",
    "*.enable_gradient_checkpointing", "*.enable_activation_offload", "*.entropy_checkpointing",
    "actor_rollout_ref.actor.erc.entropy_chunk_size", "actor_rollout_ref.rollout.gpu_memory_utilization",
    "actor_rollout_ref.rollout.max_num_batched_tokens", "actor_rollout_ref.rollout.max_num_seqs",
    "actor_rollout_ref.rollout.enforce_eager", "*.checkpoint_engine.update_weights_bucket_megabytes",
    "trainer.v1.sampler.sampler_kwargs.poll_interval",
    # verl-erc's own launch switches (verl_erc.launch)
    "run_guard.*",
)
#: distributions whose versions a run records
RECORDED_VERSIONS = ("verl-erc", "verl", "vllm", "torch", "ray", "transformers")


def flat_config(config: DictConfig) -> dict[str, Any]:
    """Every leaf of ``config``, resolved, as ``{dotted.key: value}`` (lists and empty dicts are leaves)."""
    out: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict) and value:
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(OmegaConf.to_container(config, resolve=True), "")
    return out


def is_relaunch_key(key: str) -> bool:
    return any(fnmatchcase(key, pattern) for pattern in RELAUNCH_KEYS)


def experiment_keys(flat: dict[str, Any]) -> dict[str, Any]:
    """The experiment-defining part of a flat config."""
    return {key: value for key, value in flat.items() if not is_relaunch_key(key)}


def config_hash(flat: dict[str, Any]) -> str:
    """sha256 of the experiment keys and their values (key order does not matter)."""
    canonical = json.dumps(experiment_keys(flat), sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, old value, new value)`` of every experiment key both configs have, with different values."""
    old, new = experiment_keys(old), experiment_keys(new)
    return [(key, old[key], new[key]) for key in sorted(old.keys() & new.keys()) if old[key] != new[key]]


def new_and_dropped_keys(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Experiment keys only the new config has, and only the old one has: a newer or older verl or verl-erc
    (e.g. a knob added with its default), not a change of the experiment's values."""
    old, new = experiment_keys(old), experiment_keys(new)
    return sorted(new.keys() - old.keys()), sorted(old.keys() - new.keys())


def versions() -> dict[str, str | None]:
    """Installed versions of :data:`RECORDED_VERSIONS` (None if absent), and verl-erc's git commit if it is a checkout."""
    found: dict[str, str | None] = {}
    for name in RECORDED_VERSIONS:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    found["verl-erc git"] = git_commit(Path(__file__).resolve().parents[1])
    return found


def git_commit(folder: Path) -> str | None:
    """``HEAD`` of the git checkout at ``folder`` (``+dirty`` with uncommitted changes), None if it is none."""
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")
