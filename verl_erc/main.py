"""``python -m verl_erc.main``: verl's PPO trainer (V1) with ERC, configured with Hydra.

Configs live in ``hydra_conf/`` (installed as ``verl_erc.hydra_conf``) and compose on top of
verl's ``ppo_trainer``; the default, ``erc_trainer``, is verl's config plus the ERC keys. The
ERC config is validated here, before Ray starts, then verl's own entry point runs the job.
"""

import os

# Ray folds worker lines that differ only in numbers into one ("[repeated Nx across cluster]"): keep
# our per-rank lines whole (e.g. which rank and host the ERC hook runs on). Read when Ray is imported.
os.environ.setdefault("RAY_DEDUP_LOGS_ALLOW_REGEX", "^verl_erc: ")

import hydra  # noqa: E402
from verl.trainer import main_ppo  # noqa: E402

from verl_erc import __version__  # noqa: E402
from verl_erc.cpu.preflight import preflight  # noqa: E402
from verl_erc.shm import removes_run_leftovers  # noqa: E402
from verl_erc.trainer import erc_enabled, validate_erc_config  # noqa: E402


@hydra.main(config_path="pkg://verl_erc.hydra_conf", config_name="erc_trainer", version_base=None)
def main(config) -> None:
    validate_erc_config(config)
    preflight(config)  # device selection and Ray resources, checked before anything starts
    erc = config.actor_rollout_ref.actor.get("erc")
    state = f"ERC on (beta_low={erc.beta_low}, beta_high={erc.beta_high})" if erc_enabled(config) else "ERC off"
    actor = config.actor_rollout_ref.actor
    print(
        f"verl_erc {__version__}: {state}, loss_mode={actor.policy_loss.loss_mode}, "
        f"clip_ratio={actor.clip_ratio_low}/{actor.clip_ratio_high}, loss_agg_mode={actor.loss_agg_mode}, "
        f"trainer_mode={config.trainer.v1.trainer_mode}",
        flush=True,
    )
    with removes_run_leftovers():  # vLLM's engine and queues can outlive Ray's SIGKILL of its actors
        main_ppo.main(config)  # hydra passes a given config straight through to verl's task function


if __name__ == "__main__":
    main()
