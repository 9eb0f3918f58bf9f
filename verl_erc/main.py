"""``python -m verl_erc.main``: verl's PPO trainer (V1) with ERC, configured with Hydra.

Configs live in ``hydra_conf/`` (installed as ``verl_erc.hydra_conf``) and compose on top of
verl's ``ppo_trainer``; the default, ``erc_trainer``, is verl's config plus the ERC keys. Before
Ray starts, the ERC config and the machine are checked (:mod:`verl_erc.run.preflight`) and the
launch is checked against its run directory (:mod:`verl_erc.run.launch`: identity, resume point,
finished runs); then verl's own entry point runs the job, which SIGTERM/SIGUSR1 stop after the
step in progress with a checkpoint (:mod:`verl_erc.run.preemption`, exit code 75).
"""

import os

# Ray folds worker lines that differ only in numbers into one ("[repeated Nx across cluster]"): keep
# our per-rank lines whole (e.g. which rank and host the ERC hook runs on). Read when Ray is imported.
os.environ.setdefault("RAY_DEDUP_LOGS_ALLOW_REGEX", "^verl_erc: ")

import sys  # noqa: E402

import hydra  # noqa: E402
from verl.trainer import main_ppo  # noqa: E402

from verl_erc import __version__  # noqa: E402
from verl_erc.run.preflight import preflight  # noqa: E402
from verl_erc.run.launch import LaunchRefused, finish_launch, prepare_launch  # noqa: E402
from verl_erc.run.preemption import EXIT_STOPPED, stops_gracefully  # noqa: E402
from verl_erc.run.cleanup import removes_run_leftovers  # noqa: E402
from verl_erc.hooks.trainer import erc_enabled, validate_erc_config  # noqa: E402


@hydra.main(config_path="pkg://verl_erc.hydra_conf", config_name="erc_trainer", version_base=None)
def main(config) -> None:
    validate_erc_config(config)
    preflight(config)  # device selection and Ray resources, checked before anything starts
    erc = config.actor_rollout_ref.actor.get("erc")
    state = f"ERC on (beta_low={erc.beta_low}, beta_high={erc.beta_high})" if erc_enabled(config) else "ERC off"
    if config.actor_rollout_ref.actor.get("positive_nll_coef"):
        state += f", positive_nll_coef={config.actor_rollout_ref.actor.positive_nll_coef}"
    actor = config.actor_rollout_ref.actor
    print(
        f"verl_erc {__version__}: {state}, loss_mode={actor.policy_loss.loss_mode}, "
        f"clip_ratio={actor.clip_ratio_low}/{actor.clip_ratio_high}, loss_agg_mode={actor.loss_agg_mode}, "
        f"trainer_mode={config.trainer.v1.trainer_mode}",
        flush=True,
    )
    try:
        launch = prepare_launch(config)
    except LaunchRefused as refused:  # a refusal, not a crash: the message says what to do, no traceback
        print(f"verl_erc: refused: {refused}", file=sys.stderr, flush=True)
        sys.exit(2)
    error = None
    try:
        with stops_gracefully(launch.stop_file), removes_run_leftovers():  # vLLM's leftovers outlive Ray's SIGKILL
            main_ppo.main(config)  # hydra passes a given config straight through to verl's task function
    except BaseException as raised:
        error = raised
        raise
    finally:
        outcome = finish_launch(launch, error)
    if outcome == "stopped":
        sys.exit(EXIT_STOPPED)


if __name__ == "__main__":
    main()
