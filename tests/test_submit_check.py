"""``slurm/submit.sh --check`` (verl_erc.cluster.submit_check) before the queue: the paper's shapes pass, the shapes and
inputs verl would refuse only once the job runs fail naming the key.

The model folders hold the config of DeepSeek-R1-Distill-Qwen-1.5B / -7B (tests/fixtures/model_shapes: their
published shapes, no weights) beside the rehearsals' tokenizer; the data are the rehearsals' parquet files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf
from helpers import OFFICIAL, OLD_PASS_SCRIPT, RUNS, SHORT

from verl_erc.laptop import assets
from verl_erc.recipes import OFFICIAL_VAL
from verl_erc.cluster.submit_check import (GiB, check, compose_job_config, job_command, memory_rows, model_problems,
                                   shape_problems, verl_problems)

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "tests" / "fixtures" / "model_shapes"
PAPER_SHAPE = {"1p5b": (1, 8), "7b": (2, 8)}  # nodes x GPUs of the paper's runs


@pytest.fixture(scope="module")
def cluster_env(tmp_path_factory, rehearsal_cache):
    """The recipes' environment with the 1.5B and 7B shaped model folders and the rehearsals' data."""
    tmp = tmp_path_factory.mktemp("submit_check")
    paths = assets.ensure_assets()
    env = {}
    for size, shape in (("1P5B", "r1_distill_qwen_1p5b"), ("7B", "r1_distill_qwen_7b")):
        folder = tmp / shape
        folder.mkdir()
        shutil.copy(SHAPES / f"{shape}.json", folder / "config.json")
        for tokenizer_file in paths["model"].glob("tokenizer*"):
            shutil.copy(tokenizer_file, folder)
        env[f"ERC_MODEL_{size}"] = str(folder)
    data = tmp / "data"  # the rehearsals' data; the toy's held-out set also stands in for the official AIME files
    data.mkdir()
    for split, source in (("train", "train"), ("val", "val"), *((name, "val") for name in OFFICIAL_VAL)):
        shutil.copy(paths[source], data / f"{split}.parquet")
    env.update(ERC_DATA_DIR=str(data), ERC_RUNS_DIR=str(tmp / "runs"))
    return env, tmp


@pytest.fixture
def environ(cluster_env, monkeypatch):
    env, tmp = cluster_env
    for key in [k for k in os.environ if k.startswith(("ERC_", "VERL_ERC_"))]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return tmp


@pytest.mark.parametrize("recipe", [*RUNS, *OFFICIAL])
def test_every_recipe_fits_the_papers_allocation(environ, recipe, capsys):
    nodes, gpus = PAPER_SHAPE[RUNS[OFFICIAL.get(recipe, recipe)][0]]
    assert check(recipe, nodes, gpus, 80, []) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "verl_erc.cluster.submit_check: ok" in out and "memory per GPU" in out


def test_the_memory_estimate_is_the_fsdp_states_sharded_over_all_gpus_beside_vllms_share(environ):
    name, overrides, _ = job_command("erc_dapo_7b", 2, 8, [])
    cfg = compose_job_config(name, overrides)
    _, model = model_problems(os.environ["ERC_MODEL_7B"])
    assert model.parameters == 7_615_616_512  # Qwen2-7B's shape: embeddings and lm_head untied
    rows = dict(memory_rows(cfg, model, 80))
    per_gpu = model.parameters / 16 / GiB
    assert rows["actor parameters (fp32, 1/16 each)"] == pytest.approx(4 * per_gpu)
    assert rows["actor gradients"] == pytest.approx(4 * per_gpu)
    assert rows["actor AdamW moments (2 x fp32)"] == pytest.approx(8 * per_gpu)
    assert rows["vLLM (gpu_memory_utilization 0.7)"] == pytest.approx(56.0)
    assert "reference model" not in rows  # no KL term: verl builds no reference model
    kl = compose_job_config(*job_command("kl_penalty_7b", 2, 8, [])[:2])
    assert dict(memory_rows(kl, model, 80))["reference model"] == 0.0  # offloaded between uses


@pytest.mark.parametrize(
    "recipe, nodes, gpus, overrides, key, why",
    [
        # verl pads the batch, not the mini-batch: 16 x 8 = 128 responses over 24 / sp 2 = 12 ranks
        ("erc_dapo_7b", 3, 8, [], "actor_rollout_ref.actor.ppo_mini_batch_size=16",
         "do not split over the 12 data-parallel ranks"),
        ("grpo_1p5b", 1, 6, [], "actor_rollout_ref.actor.ppo_mini_batch_size=16", "6 data-parallel ranks"),
        ("erc_dapo_7b", 2, 8, ["actor_rollout_ref.actor.ulysses_sequence_parallel_size=3"],
         "actor_rollout_ref.actor.ulysses_sequence_parallel_size=3", "does not divide the 16 GPUs"),
        ("erc_dapo_7b", 1, 8, ["actor_rollout_ref.actor.ulysses_sequence_parallel_size=8"],
         "actor_rollout_ref.actor.ulysses_sequence_parallel_size=8", "the model's 28 attention heads"),
        ("erc_dapo_7b", 2, 8, ["actor_rollout_ref.rollout.tensor_model_parallel_size=3"],
         "actor_rollout_ref.rollout.tensor_model_parallel_size=3", "does not tile 2 node(s) of 8 GPUs"),
        ("erc_dapo_1p5b", 1, 8, ["actor_rollout_ref.rollout.max_model_len=8192"],
         "actor_rollout_ref.rollout.max_model_len=8192", "exceed vLLM's max_model_len 8192"),
        ("erc_dapo_1p5b", 1, 8, ["actor_rollout_ref.actor.ppo_max_token_len_per_gpu=16384"],
         "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=16384", "fewer tokens than one sequence (18432)"),
        ("erc_dapo_7b", 1, 1, ["actor_rollout_ref.actor.ulysses_sequence_parallel_size=1"],
         "trainer.n_gpus_per_node x trainer.nnodes=1 x 1", "exceeds the GPU's 80 GiB"),
        ("erc_dapo_7b", 2, 0, [], "trainer.n_gpus_per_node=0", "the recipes train and generate on GPUs"),
        ("erc_dapo_7b", 2, 8, ["actor_rollout_ref.actor.erc.beta_low=1.5"], "config=(as composed)",
         "ErcConfigError: actor_rollout_ref.actor.erc.beta_low must satisfy 0 <= beta_low < 1"),
    ],
)
def test_a_shape_verl_would_refuse_on_its_workers_fails_naming_the_key(environ, capsys, recipe, nodes, gpus,
                                                                       overrides, key, why):
    assert check(recipe, nodes, gpus, 80, overrides) == 1
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  - ")]
    assert any(line.startswith(f"  - {key}: ") and why in line and "Fix: " in line for line in problems), problems


def test_inputs_are_checked_data_columns_model_tokenizer_and_the_run_directory(environ, capsys, monkeypatch):
    # a parquet without the reward's ground truth
    data = environ / "bad_data"
    data.mkdir(exist_ok=True)
    table = pq.read_table(Path(os.environ["ERC_DATA_DIR"]) / "train.parquet")
    pq.write_table(table.drop(["reward_model"]), data / "train.parquet")
    shutil.copy(Path(os.environ["ERC_DATA_DIR"]) / "val.parquet", data / "val.parquet")
    # a model folder without a tokenizer
    model = environ / "no_tokenizer"
    model.mkdir(exist_ok=True)
    shutil.copy(SHAPES / "r1_distill_qwen_7b.json", model / "config.json")
    monkeypatch.setenv("ERC_DATA_DIR", str(data))
    monkeypatch.setenv("ERC_MODEL_7B", str(model))
    assert check("erc_dapo_7b", 2, 8, 80, []) == 1
    out = capsys.readouterr().out
    assert f"  - data.train_files={data}/train.parquet: no column 'reward_model'" in out, out
    assert f"  - actor_rollout_ref.model.path={model}: no tokenizer in the model folder" in out, out


def test_a_run_the_launch_would_refuse_is_refused_before_the_queue(environ, capsys):
    """A finished run and a run whose experiment the job changes (verl_erc.run.launch would refuse both at start)."""
    name, overrides, run_dir = job_command("erc_dapo_1p5b", 1, 8, [])
    cfg = compose_job_config(name, overrides)
    run_dir.mkdir(parents=True)
    (run_dir / "identity.json").write_text("{}")
    OmegaConf.save(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), run_dir / "config.yaml")
    assert check("erc_dapo_1p5b", 1, 8, 80, []) == 0, capsys.readouterr().out  # the same experiment: it resumes
    capsys.readouterr()
    assert check("erc_dapo_1p5b", 1, 8, 80, ["actor_rollout_ref.actor.optim.lr=2e-6"]) == 1
    out = capsys.readouterr().out
    assert "the launch would be refused:" in out and "actor_rollout_ref.actor.optim.lr: 1e-06 -> 2e-06" in out, out
    step = Path(cfg.trainer.default_local_dir) / f"global_step_{cfg.trainer.total_training_steps}"
    (step / "actor").mkdir(parents=True)
    torch.save({}, step / "data.pt")
    assert check("erc_dapo_1p5b", 1, 8, 80, []) == 1
    assert "already finished at step 1000 of 1000" in capsys.readouterr().out
    shutil.rmtree(run_dir)


def submit(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ERC_PYTHON=sys.executable, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run(["bash", str(ROOT / "slurm" / "submit.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.process
def test_submit_checks_before_every_submission_and_check_alone_stops_there(environ):
    """Dry runs (-n): no Slurm needed, sbatch is never called."""
    bad = submit("-n", "-N", "3", "erc_dapo_7b")
    assert bad.returncode == 1 and "not submitted: the job would fail on 3 node(s) x 8 GPU(s)" in bad.stderr
    assert "ppo_mini_batch_size=16" in bad.stdout and "submit: " not in bad.stdout
    unchecked = submit("-n", "--no-check", "-N", "3", "erc_dapo_7b")
    assert unchecked.returncode == 0 and "submit: sbatch" in unchecked.stdout and "submit_check" not in unchecked.stdout
    good = submit("--check", "-N", "2", "erc_dapo_7b", "trainer.total_training_steps=500")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "verl_erc.cluster.submit_check: ok" in good.stdout and "submit: " not in good.stdout  # checked, not submitted
    assert "erc_dapo_7b (config erc_dapo_7b) on 2 node(s) x 8 GPU(s) of 80 GiB" in good.stdout


@pytest.mark.process
def test_the_mini_batch_split_it_refuses_is_what_verl_asserts_on_its_workers(rehearsal_cache):
    """The laptop profile's 2 prompts x 8 rollouts per mini-batch on 3 training ranks: the check predicts the
    failure; verl accepts the config at start-up (its validate_config does not check it), and its training worker
    asserts it at the update: verl's TrainingWorker.train_mini_batch, run for real on 3 gloo ranks after the
    old-log-prob pass (tests/old_pass_script.py: 16 responses per rank, one mini-batch of 16)."""
    from cpu_subprocess import run_cpu_ranks

    three = ["trainer.n_gpus_per_node=3", "ray_kwargs.ray_init.num_cpus=12", "trainer.total_training_steps=1"]
    paths = assets.ensure_assets()
    cfg = compose_job_config("dapo_7b", [f"actor_rollout_ref.model.path={paths['model']}",
                                         f"data.train_files={paths['train']}", f"data.val_files={paths['val']}",
                                         "+rehearsal=laptop", *SHORT, *three])
    _, model = model_problems(str(paths["model"]))
    predicted = [str(problem) for problem in shape_problems(cfg, model)]
    assert len(predicted) == 1 and predicted[0].startswith("actor_rollout_ref.actor.ppo_mini_batch_size=2: x rollout.n 8 "
                                                           "= 16 responses per mini-batch do not split over the 3 "
                                                           "data-parallel ranks"), predicted
    assert verl_problems(cfg) == []
    case = {"three_ranks": {"old_pass": "verl", "dynamic": True, "shuffle": False, "mini_batches": 3, "dtype": "fp32",
                            "kernel": "native"}}
    with pytest.raises(AssertionError) as failed:
        run_cpu_ranks(OLD_PASS_SCRIPT, 3, env={"VERL_ERC_CACHE_DIR": str(rehearsal_cache), "CASES": json.dumps(case)})
    assert "AssertionError: Got mini_batch_size=16 and self.engine.get_data_parallel_size()=3" in str(failed.value)
    assert "in train_mini_batch" in str(failed.value)
