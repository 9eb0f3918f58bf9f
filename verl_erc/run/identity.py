"""What defines a run: the part of its composed config that changes the experiment, and its inputs' contents.

Every key of the composed (resolved) config is an **experiment key** (loss, ERC knobs, optimizer,
data, model, lengths, batch shape, seed, workers' environment, ...) except the keys matched by
:data:`RELAUNCH_KEYS`: resources, logging, checkpoint and validation cadence, micro-batching and memory
settings, which a relaunch of the same run may change. ``trainer.total_training_steps`` (and
``total_epochs``) is one of those unless a learning-rate schedule depends on it (:func:`schedule_depends_on_steps`).
What the config does not show, the contents behind its paths, is :func:`input_fingerprints`: the training
and validation files and the model folder. :mod:`verl_erc.run.launch` refuses a launch into a run directory
whose recorded experiment keys or inputs differ from the new ones, listing each with both values.
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
    # the allocation and the processes on it (not the workers' interpreter or other environment: experiment keys)
    "trainer.nnodes", "trainer.n_gpus_per_node", "*.nnodes", "*.n_gpus_per_node", "ray_kwargs.ray_init.num_cpus",
    "ray_kwargs.ray_init.num_gpus", "ray_kwargs.ray_init.address", "ray_kwargs.ray_init.include_dashboard",
    "ray_kwargs.timeline_json_file", *(f"ray_kwargs.ray_init.runtime_env.env_vars.{name}" for name in (
        "TENSORBOARD_DIR", "VERL_FILE_LOGGER_PATH", "VERL_ERC_STOP_FILE", "TQ_NUM_THREADS", "VLLM_CPU_KVCACHE_SPACE",
        "VERL_ERC_ZMQ_ALLOW")), "ray_kwargs.ray_init.runtime_env.worker_process_setup_hook",
    "trainer.ray_wait_register_center_timeout", "*.nccl_timeout", "*.agent.num_workers", "reward.num_workers",
    "data.dataloader_num_workers", "transfer_queue.*", "global_profiler.*", "*.profiler.*",
    # parallelism, micro-batching and memory: the same updates, computed in other pieces
    "*.ulysses_sequence_parallel_size", "*.tensor_model_parallel_size", "*.data_parallel_size",
    "*.fsdp_config.fsdp_size", "*.turbo_config.distributed.fsdp_plan.num_to_*_prefetch", "*.ppo_micro_batch_size",
    "*.ppo_micro_batch_size_per_gpu", "*.log_prob_micro_batch_size", "*.log_prob_micro_batch_size_per_gpu",
    "*.ppo_max_token_len_per_gpu", "*.log_prob_max_token_len_per_gpu", "*.use_dynamic_bsz",
    "*.log_prob_use_dynamic_bsz", "*.param_offload", "*.optimizer_offload", "*.offload_policy",
    "*.enable_gradient_checkpointing", "*.enable_activation_offload", "*.entropy_checkpointing",
    "actor_rollout_ref.actor.erc.entropy_chunk_size", "actor_rollout_ref.rollout.gpu_memory_utilization",
    "actor_rollout_ref.rollout.max_num_batched_tokens", "actor_rollout_ref.rollout.max_num_seqs",
    "actor_rollout_ref.rollout.enforce_eager", "*.checkpoint_engine.update_weights_bucket_megabytes",
    "trainer.v1.sampler.sampler_kwargs.poll_interval",
    # verl-erc's own launch switches (verl_erc.run.launch)
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


#: the optimizers whose learning-rate schedule may depend on the run's total steps
OPTIMIZERS = ("actor_rollout_ref.actor.optim", "critic.optim")
#: the keys that set the run's total steps (verl passes them to the optimizers' schedules)
TOTAL_STEPS_KEYS = ("trainer.total_training_steps", "trainer.total_epochs")


def schedule_depends_on_steps(flat: dict[str, Any]) -> list[str]:
    """Why the learning-rate schedule of ``flat`` depends on the run's total steps (empty: it does not).

    verl builds each schedule from the total steps (``_build_lr_scheduler``): a cosine decay spans them, and a
    warm-up given as a ratio (``lr_warmup_steps`` <= 0, ``lr_warmup_steps_ratio`` > 0) is a share of them."""
    reasons = []
    for optim in OPTIMIZERS:
        if optim == "critic.optim" and not flat.get("critic.enable"):
            continue
        if flat.get(f"{optim}.lr_scheduler_type") == "cosine":
            reasons.append(f"{optim}.lr_scheduler_type=cosine decays over the total steps")
        if (flat.get(f"{optim}.lr_warmup_steps") or 0) <= 0 and (flat.get(f"{optim}.lr_warmup_steps_ratio") or 0) > 0:
            reasons.append(f"{optim}.lr_warmup_steps_ratio={flat[f'{optim}.lr_warmup_steps_ratio']} is a share of the total steps")
    return reasons


#: config nodes whose keys are the user's (a worker environment variable): one set or unset is a change of the
#: experiment, not a key another verl version added (:func:`new_and_dropped_keys`)
FREE_FORM = ("ray_kwargs.ray_init.runtime_env.env_vars.",)
#: how :func:`differences` shows a free-form key one of the configs does not set
NOT_SET = "<not set>"


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, old value, new value)`` of every experiment key both configs have, with different values, and of
    every free-form key (:data:`FREE_FORM`) one of them sets; the total steps too when the schedule depends on them
    (:func:`schedule_depends_on_steps`)."""
    old_keys, new_keys = experiment_keys(old).keys(), experiment_keys(new).keys()
    changed = [(key, old.get(key, NOT_SET), new.get(key, NOT_SET)) for key in sorted(old_keys | new_keys)
               if (key in old_keys and key in new_keys and old[key] != new[key])
               or ((key in old_keys) != (key in new_keys) and key.startswith(FREE_FORM))]
    if schedule_depends_on_steps(old) or schedule_depends_on_steps(new):
        changed += [(key, old[key], new[key]) for key in TOTAL_STEPS_KEYS
                    if key in old and key in new and old[key] != new[key]]
    return changed


def new_and_dropped_keys(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Experiment keys only the new config has, and only the old one has: a newer or older verl or verl-erc
    (e.g. a knob added with its default), not a change of the experiment's values."""
    old, new = experiment_keys(old), experiment_keys(new)
    return ([key for key in sorted(new.keys() - old.keys()) if not key.startswith(FREE_FORM)],
            [key for key in sorted(old.keys() - new.keys()) if not key.startswith(FREE_FORM)])


#: files of a model folder whose contents are fingerprinted (small); weight files are fingerprinted by size
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.jinja")
#: input files up to this size are hashed; larger ones are fingerprinted by size (a weight shard, a huge dataset)
HASH_LIMIT_BYTES = 512 << 20


def file_fingerprint(path: Path) -> str:
    """``sha256:<hex>`` of a file up to :data:`HASH_LIMIT_BYTES`, else ``bytes:<size>``."""
    size = path.stat().st_size
    if size > HASH_LIMIT_BYTES:
        return f"bytes:{size}"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def model_fingerprint(folder: Path) -> dict[str, str]:
    """A model folder's identity, cheaply: its config, tokenizer and weight index files hashed, every weight file's
    size (a 15 GB checkpoint is not read)."""
    found = {name: file_fingerprint(folder / name) for name in MODEL_FILES if (folder / name).is_file()}
    for path in sorted(folder.glob("*.index.json")):
        found[path.name] = file_fingerprint(path)
    for path in sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin"), *folder.glob("*.pt")]):
        found[path.name] = f"bytes:{path.stat().st_size}"
    return found


def input_fingerprints(config: DictConfig) -> dict[str, Any]:
    """``{what: fingerprint}`` of the run's inputs: each local training and validation file, and the local model
    folder (``actor_rollout_ref.model.path``). Paths that are not local (a hub id, hdfs://) are left out."""
    found: dict[str, Any] = {}
    for key in ("data.train_files", "data.val_files"):
        paths = OmegaConf.select(config, key, default=None)
        for path in [paths] if isinstance(paths, str) else list(paths or []):
            if Path(path).is_file():
                found[f"{key}: {path}"] = file_fingerprint(Path(path))
    model = OmegaConf.select(config, "actor_rollout_ref.model.path", default=None)
    if model and Path(model).is_dir():
        found[f"actor_rollout_ref.model.path: {model}"] = model_fingerprint(Path(model))
    return found


def changed_inputs(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(input, old fingerprint, new fingerprint)`` of every input both record, with different contents; for a
    model folder, the files that differ."""
    changed = []
    for name in sorted(old.keys() & new.keys()):
        if old[name] == new[name]:
            continue
        if isinstance(old[name], dict) and isinstance(new[name], dict):
            files = sorted(f for f in old[name].keys() | new[name].keys() if old[name].get(f) != new[name].get(f))
            changed.append((name, {f: old[name].get(f) for f in files}, {f: new[name].get(f) for f in files}))
        else:
            changed.append((name, old[name], new[name]))
    return changed


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
