"""End to end on CPU: ``python -m verl_erc.cpu.demo`` (DAPO and ERC-DAPO, short), then the ERC run resumed.

A real Ray cluster, verl's real V1 trainer, TransferQueue, agent loop, reward loop and naive
weight sync, with ERC's loss and entropy hook in the workers. Everything asserted here is read
from the runs' own output: verl's file logger (JSONL metrics), the checkpoint folder, the logs
and the comparison report. Select with ``pytest -m cpu_e2e``.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cpu_subprocess import skip_if_gpu_visible

from verl_erc.cpu.demo import run_command
from verl_erc.cpu.preflight import WORKER_EXTENSION
from verl_erc.shm import SHM_DIR

pytestmark = pytest.mark.cpu_e2e

ERC_METRICS = [
    "actor/erc_clipfrac",
    "actor/erc_clipfrac_high",
    "actor/erc_clipfrac_low",
    "actor/erc_ratio_mean",
    "actor/erc_ratio_min",
    "actor/erc_ratio_max",
]
# a short run: fewer prompts per step, no validation, a checkpoint after step 2
SHORT = [
    "data.train_batch_size=8",
    "actor_rollout_ref.rollout.n=4",
    "actor_rollout_ref.actor.ppo_mini_batch_size=2",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=32",
    "trainer.val_before_train=false",
    "trainer.test_freq=-1",
    "trainer.save_freq=2",
]


def run(cmd: list[str], cwd: Path, cache: Path) -> str:
    env = {**os.environ, "VERL_ERC_CACHE_DIR": str(cache)}
    env.pop("VERL_PLATFORM", None)  # trainer.device=cpu in the config selects the platform
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-20000:]
    return log


def metrics(path: Path) -> dict[int, dict]:
    """Training steps of verl's file logger (the JSONL its Tracking writes), by step."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["step"]: r["data"] for r in records if "actor/pg_loss" in r["data"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    skip_if_gpu_visible()
    cwd, cache = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("cache")
    out = cwd / "demo"
    demo_log = run([sys.executable, "-m", "verl_erc.cpu.demo", "--out", str(out), *SHORT,
                    "trainer.total_training_steps=2"], cwd, cache)
    first = metrics(out / "erc_dapo.jsonl")
    checkpoints = sorted(p.name for p in (out / "erc_dapo" / "checkpoints").iterdir())
    resumed_log = run(run_command("cpu_demo", "erc_dapo", out, [*SHORT, "trainer.total_training_steps=3"]), cwd, cache)
    return {"out": out, "demo_log": demo_log, "first_log": (out / "logs" / "erc_dapo.log").read_text(),
            "baseline_log": (out / "logs" / "dapo.log").read_text(), "first": first,
            "baseline": metrics(out / "dapo.jsonl"), "checkpoints": checkpoints,
            "resumed_log": resumed_log, "resumed": metrics(out / "erc_dapo.jsonl")}


def test_erc_loss_was_installed_in_the_workers(runs):
    assert "ERC loss installed in the actor workers" in runs["first_log"]
    assert "ERC loss installed" not in runs["baseline_log"]


def test_each_step_prints_a_summary_line_and_the_run_says_where_its_outputs_go(runs):
    out = runs["out"]
    assert f"metrics: {out / 'erc_dapo.jsonl'}; checkpoints: {out / 'erc_dapo' / 'checkpoints'}" in runs["first_log"]
    for step in (1, 2):
        line = next(l for l in runs["first_log"].splitlines() if f"verl_erc step {step}/2 |" in l)
        for label in ("reward", "entropy", "pg_clipfrac", "erc_clipfrac"):
            assert f"| {label} " in line, (label, line)
    # ERC off: verl's own trainer ran (its console line per step, nothing of ours)
    assert "verl_erc step" not in runs["baseline_log"] and "verl_erc: training steps" not in runs["baseline_log"]
    assert "step:2 - " in runs["baseline_log"]


def test_baseline_runs_without_erc_and_the_report_pairs_the_runs(runs):
    assert sorted(runs["baseline"]) == [1, 2]
    for data in runs["baseline"].values():
        assert not [key for key in data if key.startswith("actor/erc_")]
    report = (runs["out"] / "report" / "report.md").read_text()
    assert "`erc_dapo` → `dapo`" in report
    for png in ("entropy.png", "erc_clipfrac.png", "pg_clipfrac.png"):
        assert (runs["out"] / "report" / png).stat().st_size > 1000, png
    assert "report.html" in runs["demo_log"]


def test_every_step_logs_erc_metrics_computed_from_both_entropies(runs):
    assert sorted(runs["first"]) == [1, 2]
    for step, data in runs["first"].items():
        for key in ERC_METRICS:
            assert key in data and math.isfinite(data[key]), (step, key)
        # the ratio H_new / H_old was computed from real entropies (the loss raises without the old one)
        assert 0 < data["actor/erc_ratio_min"] <= data["actor/erc_ratio_mean"] <= data["actor/erc_ratio_max"]
        assert 0 <= data["actor/erc_clipfrac"] <= 1
        assert data["actor/entropy"] > 0 and "actor/pg_clipfrac" in data and "critic/score/mean" in data


def test_rollout_weights_follow_the_actor(runs):
    # step 2 samples with the weights synced after step 1's update: rollout and actor log-probs agree
    assert runs["first"][2]["training/rollout_probs_diff_max"] < 1e-3


def test_rollout_is_verls_vllm_and_the_run_removes_the_shared_memory_it_left(runs):
    log = runs["first_log"]
    assert "vLLMHttpServer" in log and WORKER_EXTENSION in log  # verl's vLLM server, with the CPU worker extension
    removed = re.findall(r"removed the shared memory the run left in /dev/shm: (.*)", log)
    assert len(removed) == 1, "no /dev/shm clean-up line"
    names = re.findall(r"(psm_\w+) \(\d+ MiB\)", removed[0])
    assert names and not [name for name in names if (SHM_DIR / name).exists()]


def test_checkpoint_written_and_resumed_run_continues_the_global_step(runs):
    assert "global_step_2" in runs["checkpoints"]
    assert "Resuming from" in runs["resumed_log"] and "setting global step to 2" in runs["resumed_log"]
    assert sorted(runs["resumed"]) == [3]  # verl's file logger restarts its file: only the new step
    data = runs["resumed"][3]
    assert all(key in data for key in ERC_METRICS)
    assert data["training/rollout_probs_diff_max"] < 1e-3  # the restored weights reached the rollout


def test_two_fsdp2_ranks_with_critic_and_reference_model(tmp_path_factory):
    """The switches cpu_demo_base.yaml documents: 2 FSDP2 ranks, a GAE critic, a KL loss to the ref model, with ERC."""
    skip_if_gpu_visible()
    cwd, cache = tmp_path_factory.mktemp("run2"), tmp_path_factory.mktemp("cache2")
    out = cwd / "out"
    out.mkdir()  # verl's file logger opens VERL_FILE_LOGGER_PATH without creating its folder (the demo does)
    cmd = run_command("cpu_demo", "erc_dapo", out, [
        *SHORT, "trainer.total_training_steps=2", "trainer.save_freq=-1",
        "trainer.n_gpus_per_node=2", "ray_kwargs.ray_init.num_cpus=9",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4", "critic.ppo_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16", "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16",
        "actor_rollout_ref.actor.use_kl_loss=true", "critic.enable=true", "algorithm.adv_estimator=gae",
    ])
    log = run(cmd, cwd, cache)
    assert "ERC loss installed in the actor workers" in log
    steps = metrics(out / "erc_dapo.jsonl")
    assert sorted(steps) == [1, 2]
    for step, data in steps.items():
        for key in [*ERC_METRICS, "critic/vf_loss", "actor/kl_loss"]:
            assert key in data and math.isfinite(data[key]), (step, key)
        assert data["training/rollout_probs_diff_max"] < 1e-3
