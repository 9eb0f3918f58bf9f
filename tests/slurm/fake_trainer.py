"""Stand-in for ``python -m verl_erc.main`` in the recipe and Slurm tests: prints its arguments and
the logging environment verl's task runner would get (the ``ray_kwargs.ray_init.runtime_env``
overrides) and, when RAY_ADDRESS is set (the Slurm job's cluster), joins that Ray cluster as
verl's driver would and reports what it sees (the alive nodes and the addresses they registered).

With FAKE_TRAINER_HOLD=1 the first launch of a job (SLURM_RESTART_COUNT unset or 0) then waits
to be cancelled or requeued; a relaunch exits at once.
"""

import os
import sys
import time

restart = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
RUNTIME_ENV = "++ray_kwargs.ray_init.runtime_env.env_vars."
actor_env = dict(arg[len(RUNTIME_ENV):].split("=", 1) for arg in sys.argv[1:] if arg.startswith(RUNTIME_ENV))
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
    f"args={sys.argv[1:]}",
    flush=True,
)
if os.environ.get("FAKE_TRAINER_HOLD") == "1" and restart == 0:
    print("FAKE_TRAINER holding", flush=True)
    time.sleep(3600)
print("FAKE_TRAINER done", flush=True)
