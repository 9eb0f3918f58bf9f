"""With ERC off, ``python -m verl_erc.main`` runs verl's own trainer: the same program as verl's entry point.

The CPU backend runs 2 training steps twice, from the same seed: once through verl's
``python -m verl.trainer.main_ppo`` (verl's ``ppo_trainer`` config plus only the keys the CPU
backend needs, :func:`cpu_keys`, on the rehearsals' toy task) and once through
``python -m verl_erc.main`` (our ``erc_trainer`` config, ERC off) with the same keys. Neither run
prints anything of ERC's (no loss installed, no per-step line), both log the same metric names at
every step, and what follows from the data alone (the prompt lengths) agrees exactly. The sampled tokens are not compared: verl's
``rollout.full_determinism`` makes vLLM use its batch-invariant kernels, which need Triton on a
GPU (on vLLM-CPU the engine dies at the first request), and without it vLLM's sampling depends on
the order requests arrive in.

With ERC on, verl's entry point either applies ERC (through the plugin's trainer under verl's own
mode name) or refuses before Ray starts; its legacy trainer stops at the first actor update.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cpu_subprocess import removes_new_shm, skip_if_gpu_visible

from verl_erc.cpu.checks import WORKER_EXTENSION

pytestmark = pytest.mark.cpu_e2e

STEPS = 2
#: metrics that measure time, throughput or memory, not training
UNTIMED = ("timing_s/", "timing_per_token_ms/", "perf/", "actor/perf/", "training/rollout_time")
#: metrics fixed by the data alone (same prompts from the same seed)
DATA_METRICS = ("prompt_length/",)
ERC_VIA_VERL = ["actor_rollout_ref.actor._target_=verl_erc.config.ErcFSDPActorConfig",
                "+actor_rollout_ref.actor.erc._target_=verl_erc.config.ErcConfig", "+actor_rollout_ref.actor.erc.enable=true"]


def cpu_keys(assets: dict[str, str], out: Path, name: str) -> list[str]:
    """What the CPU backend needs on top of verl's ppo_trainer (see hydra_conf/rehearsal/laptop.yaml), for a short run."""
    sdpa = "+actor_rollout_ref.model.override_config.attn_implementation=sdpa"
    fp32 = [f"+actor_rollout_ref.actor.fsdp_config.mixed_precision.{k}=fp32" for k in ("param_dtype", "reduce_dtype", "buffer_dtype")]
    return [
        f"data.train_files={assets['train']}", f"data.val_files={assets['val']}",
        "data.train_batch_size=8", "data.max_prompt_length=64", "data.max_response_length=32",
        "data.dataloader_num_workers=0",
        f"actor_rollout_ref.model.path={assets['model']}", sdpa,
        "actor_rollout_ref.actor.strategy=fsdp2", "actor_rollout_ref.actor.use_torch_compile=false",
        "actor_rollout_ref.actor.fsdp_config.use_torch_compile=false", *fp32,
        "actor_rollout_ref.actor.optim.lr=3e-4", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.rollout.name=vllm", "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        "+actor_rollout_ref.rollout.enable_sleep_mode=false", "actor_rollout_ref.rollout.enforce_eager=true",
        "actor_rollout_ref.rollout.max_num_seqs=64", "actor_rollout_ref.rollout.checkpoint_engine.update_weights_bucket_megabytes=16",
        f"+actor_rollout_ref.rollout.engine_kwargs.vllm.worker_extension_cls={WORKER_EXTENSION}",
        "actor_rollout_ref.rollout.dtype=float32", "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.rollout.calculate_log_probs=true", "actor_rollout_ref.rollout.free_cache_engine=false",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=32", "actor_rollout_ref.rollout.agent.num_workers=1",
        "algorithm.adv_estimator=grpo", "reward.num_workers=1",
        "reward.custom_reward_function.path=pkg://verl_erc.reward", "reward.custom_reward_function.name=compute_score",
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
        "trainer.device=cpu", "trainer.nnodes=1", "trainer.n_gpus_per_node=1",
        f"trainer.total_training_steps={STEPS}", "trainer.val_before_train=false", "trainer.test_freq=-1",
        "trainer.save_freq=-1", "trainer.logger=[console,file]", "trainer.project_name=same_as_verl",
        f"trainer.experiment_name={name}", f"trainer.default_local_dir={out / name}",
        "ray_kwargs.ray_init.num_cpus=6", "+ray_kwargs.ray_init.num_gpus=1", "+ray_kwargs.ray_init.include_dashboard=false",
        "+ray_kwargs.ray_init.runtime_env.env_vars.VERL_PLATFORM=cpu",
        f"+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={out / (name + '.jsonl')}",
        "+ray_kwargs.ray_init.runtime_env.env_vars.TQ_NUM_THREADS='1'",
        "+ray_kwargs.ray_init.runtime_env.env_vars.VLLM_CPU_KVCACHE_SPACE='1'",
    ]


def train(module: str, keys: list[str], cwd: Path, cache: Path, ok: bool = True) -> str:
    env = {**os.environ, "VERL_ERC_CACHE_DIR": str(cache), "VERL_PLATFORM": "cpu"}  # verl's entry point has no preflight
    proc = subprocess.run([sys.executable, "-m", module, *keys], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert (proc.returncode == 0) == ok, log[-20000:]
    return log


def training_metrics(path: Path) -> dict[int, dict[str, float]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return {
        r["step"]: {k: v for k, v in r["data"].items() if not k.startswith(UNTIMED) and isinstance(v, (int, float))}
        for r in records
        if "actor/pg_loss" in r["data"]
    }


@pytest.fixture(scope="module")
def assets(rehearsal_cache):
    skip_if_gpu_visible()
    from verl_erc.laptop.assets import asset_paths

    return rehearsal_cache, {name: str(path) for name, path in asset_paths().items()}


@pytest.fixture(scope="module")
def runs(assets, tmp_path_factory):
    """name -> (Future of the run's log, its output folder): this module's four trainer runs, all started at its
    first test, two at a time (a run leaves a core idle much of its start-up), in the order the tests read them."""
    cache, paths = assets
    out = tmp_path_factory.mktemp("same_as_verl")
    plans = {
        "verl": ("verl.trainer.main_ppo", cpu_keys(paths, out, "verl"), True),
        "ours": ("verl_erc.main", ["--config-name", "erc_trainer", *cpu_keys(paths, out, "ours")], True),
        "verl_erc_on": ("verl.trainer.main_ppo", [*cpu_keys(paths, out, "verl_erc_on"), *ERC_VIA_VERL], True),
        # verl's legacy trainer never installs ERC's loss: the engine hook must stop the first actor update
        "legacy": ("verl.trainer.main_ppo", [*cpu_keys(paths, out, "legacy"), *ERC_VIA_VERL, "trainer.use_v1=false"],
                   False),
    }
    pool = ThreadPoolExecutor(max_workers=2)
    futures = {name: pool.submit(train, module, keys, out, cache, ok) for name, (module, keys, ok) in plans.items()}
    pool.shutdown(wait=False)
    with removes_new_shm():  # verl's entry point leaves vLLM's queues in /dev/shm: removed once all runs ended
        yield {name: (future, out) for name, future in futures.items()}
        for future in futures.values():
            future.exception()


def test_erc_off_is_verls_trainer_step_for_step(runs):
    (verl, out), (ours, _) = runs["verl"], runs["ours"]
    verl_log, ours_log = verl.result(), ours.result()
    assert "verl_erc 0" in ours_log and "ERC off" in ours_log  # our entry point ran
    for log in (verl_log, ours_log):
        assert "ERC loss installed" not in log and "verl_erc step" not in log
    verl, ours = training_metrics(out / "verl.jsonl"), training_metrics(out / "ours.jsonl")
    assert sorted(verl) == sorted(ours) == list(range(1, STEPS + 1))
    for step in verl:
        assert ours[step].keys() == verl[step].keys(), step
        assert not [k for k in verl[step] if k.startswith("actor/erc_")]
        data = {k: (verl[step][k], ours[step][k]) for k in verl[step] if k.startswith(DATA_METRICS)}
        assert len(data) >= 3 and all(a == b for a, b in data.values()), (step, data)
        for key in ("actor/pg_loss", "actor/grad_norm", "actor/pg_clipfrac", "actor/entropy"):
            assert key in verl[step] and math.isfinite(ours[step][key])
    for run in (verl, ours):
        # real, varying training: the steps differ (not the score alone: 2 steps of 32 responses at ~15 % right
        # score alike often, e.g. 6/32 twice in a run here)
        assert len({(run[s]["critic/score/mean"], run[s]["response_length/mean"], run[s]["actor/pg_loss"]) for s in run}) > 1


def test_verl_entry_point_with_erc_on_applies_it(runs):
    """python -m verl.trainer.main_ppo, ERC on: the plugin's trainer (mode 'sync') runs ERC."""
    future, out = runs["verl_erc_on"]
    assert "verl_erc: verl-erc's loss installed in the actor workers: " in future.result()
    steps = training_metrics(out / "verl_erc_on.jsonl")
    assert sorted(steps) == list(range(1, STEPS + 1))
    assert all("actor/erc_clipfrac" in data and "actor/erc_ratio_mean" in data for data in steps.values())


def test_verl_entry_point_refuses_erc_it_cannot_apply(runs, assets, tmp_path):
    cache, paths = assets
    # verl's own actor config has no ERC field: refused at verl's config check, before Ray starts
    log = train("verl.trainer.main_ppo", [*cpu_keys(paths, tmp_path, "a"), "+actor_rollout_ref.actor.erc.enable=true"],
                tmp_path, cache, ok=False)
    assert "unexpected keyword argument 'erc'" in log and "ray init kwargs" not in log
    # verl's legacy trainer never installs ERC's loss: the engine hook stops the first actor update
    future, out = runs["legacy"]
    assert "the trainer did not install ERC" in future.result()
    assert not (out / "legacy.jsonl").exists() or "actor/pg_loss" not in (out / "legacy.jsonl").read_text()
