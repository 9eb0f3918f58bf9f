"""Stand-in for ``python -m verl_erc.main`` in the recipe and Slurm tests: prints its arguments and
the logging environment verl's task runner would get (the ``ray_kwargs.ray_init.runtime_env``
overrides) and, when RAY_ADDRESS is set (the Slurm job's cluster), joins that Ray cluster as
verl's driver would and reports what it sees (the alive nodes and the addresses they registered).

It follows verl_erc.main's launch protocol with the Slurm job: it writes the launch state
(``$VERL_ERC_LAUNCH_STATE``: checkpoint folder, start step) and, on SIGUSR1 (the job's stop
request), exits 75 after saving a checkpoint (a complete ``global_step_<start+1>`` folder) when
FAKE_TRAINER_SAVES=1, without one otherwise.

With FAKE_TRAINER_HOLD=1 the first launch of a job (SLURM_RESTART_COUNT unset or 0) then waits
to be cancelled, requeued or asked to stop; a relaunch exits at once.
"""

import json
import os
import signal
import sys
import time
import zipfile
from pathlib import Path

from verl_erc.run.checkpoints import newest_complete_step

restart = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
RUNTIME_ENV = "++ray_kwargs.ray_init.runtime_env.env_vars."
actor_env = dict(arg[len(RUNTIME_ENV):].split("=", 1) for arg in sys.argv[1:] if arg.startswith(RUNTIME_ENV))
checkpoints = Path(next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("trainer.default_local_dir=")), "ckpt"))
start_step = newest_complete_step(checkpoints)


def stop(signum, frame):
    if os.environ.get("FAKE_TRAINER_SAVES") == "1":
        folder = checkpoints / f"global_step_{start_step + 1}"
        (folder / "actor").mkdir(parents=True)
        with zipfile.ZipFile(folder / "data.pt", "w") as archive:
            archive.writestr("data.pkl", b"state")
    print(f"FAKE_TRAINER stop requested: saved={os.environ.get('FAKE_TRAINER_SAVES') == '1'}", flush=True)
    sys.exit(75)


signal.signal(signal.SIGUSR1, stop)
if os.environ.get("VERL_ERC_LAUNCH_STATE"):
    Path(os.environ["VERL_ERC_LAUNCH_STATE"]).write_text(json.dumps(
        {"checkpoint_dir": str(checkpoints), "start_step": start_step, "total_steps": None}))
seen, node_ips = "no-ray", "none"
if os.environ.get("RAY_ADDRESS"):
    import ray

    ray.init(logging_level="ERROR", log_to_driver=False)
    alive = [n for n in ray.nodes() if n.get("Alive")]
    seen = f"address={os.environ['RAY_ADDRESS']} nodes={len(alive)}"
    node_ips = ",".join(sorted(n["NodeManagerAddress"] for n in alive))
    ray.shutdown()
print(
    f"FAKE_TRAINER connected {seen} auth={os.environ.get('RAY_AUTH_MODE', 'disabled')} restart={restart} node_ips={node_ips} "
    f"tensorboard={actor_env.get('TENSORBOARD_DIR')} metrics={actor_env.get('VERL_FILE_LOGGER_PATH')} "
    f"run_dir={os.environ.get('VERL_ERC_RUN_DIR')} launch={os.environ.get('VERL_ERC_LAUNCH')} start_step={start_step} "
    f"args={sys.argv[1:]}",
    flush=True,
)
if os.environ.get("FAKE_TRAINER_HOLD") == "1" and restart == 0:
    print("FAKE_TRAINER holding", flush=True)
    time.sleep(3600)
print("FAKE_TRAINER done", flush=True)
