"""Checks a run's device and Ray resources before Ray starts, so bad settings fail fast and clearly.

:func:`preflight` is called by ``python -m verl_erc.main`` before verl's entry point:

- ``trainer.device=cpu`` selects the CPU platform here and in the Ray workers
  (``VERL_PLATFORM=cpu``), refuses a machine with a visible CUDA device, and checks the settings
  the CPU backend needs (:mod:`verl_erc.cpu.checks`);
- ``trainer.device=cuda`` on a machine without a CUDA device is refused (instead of verl silently
  falling back to its nvidia platform and failing, or hanging, later);
- for every device, Ray's address follows one rule: a run starts its own Ray instance unless
  ``ray_kwargs.ray_init.address`` names a cluster (or ``auto``) explicitly (:func:`choose_ray_address`),
  never attaching to whatever cluster ``RAY_ADDRESS`` or ``/tmp/ray`` points at, maybe another user's; a private
  instance gets Ray's token authentication and a vLLM API key, fresh per run (:func:`protect_private_ray`), and
  every run's ZMQ sockets accept the Ray cluster's hosts only (:mod:`verl_erc.run.zmq_allowlist`);
- for every device, the Ray CPUs and GPUs the job will hold (TransferQueue's controller and
  storage units, verl's resource pools) are compared with what Ray will have. Ray otherwise waits
  forever for a placement group it cannot place.
"""

from __future__ import annotations

import os
import secrets

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from verl_erc.cpu import PLATFORM_ENV, activate
from verl_erc.cpu.checks import cpu_config_problems, visible_devices_problems
from verl_erc.cpu.platform import PLATFORM_NAME
from verl_erc.run import zmq_allowlist

#: CPUs verl's ResourcePoolManager puts in each pool bundle (its default max_colocate_count)
CPUS_PER_POOL_BUNDLE = 3
#: a free Ray CPU for placing verl's default actors (task runner, agent-loop and reward workers,
#: router): Ray needs one CPU available to place an actor, which then holds none
SCHEDULING_HEADROOM_CPUS = 1


class PreflightError(RuntimeError):
    """The config cannot run on this machine; the message names the keys to change."""


def preflight(config: DictConfig) -> None:
    """Validate ``config`` against this machine and Ray's resources; select the CPU platform if asked; guard the
    job's ZMQ sockets (:mod:`verl_erc.run.zmq_allowlist`)."""
    if choose_ray_address(config) == "local":
        protect_private_ray()
    guard_zmq_sockets(config)
    device = config.trainer.device
    if device == PLATFORM_NAME:
        activate()
        _require_cpu_runtime_env(config)
        problems = cpu_config_problems(config) + visible_devices_problems(config, _external_cluster(config))
        if problems:
            raise PreflightError("trainer.device=cpu cannot run as configured:\n  - " + "\n  - ".join(problems))
    elif device == "cuda" and not torch.cuda.is_available() and not _external_cluster(config):
        raise PreflightError(
            "trainer.device=cuda but torch sees no CUDA device on this machine. To run a paper recipe on CPU, "
            "rehearse it (recipes/rehearse.sh RECIPE) or set trainer.device=cpu with the settings of "
            "hydra_conf/rehearsal/laptop.yaml (+rehearsal=laptop)."
        )
    check_ray_resources(config)


def choose_ray_address(config: DictConfig) -> str:
    """Unset ``ray_kwargs.ray_init.address`` becomes ``local`` (a private instance); print and return the address
    used."""
    address = OmegaConf.select(config, "ray_kwargs.ray_init.address", default=None)
    if address in (None, ""):
        found = os.environ.get("RAY_ADDRESS")
        if found:
            print(f"verl_erc: ignoring RAY_ADDRESS={found}: pass ++ray_kwargs.ray_init.address={found} to join that "
                  "cluster", flush=True)
        with open_dict(config):
            config.ray_kwargs.ray_init.address = address = "local"
    where = {"local": "a private local instance", "auto": "the cluster Ray finds (RAY_ADDRESS or this machine's newest)"}
    print(f"verl_erc: Ray: {where.get(address, f'joining the cluster at {address}')} "
          f"(ray_kwargs.ray_init.address={address})", flush=True)
    return address


#: what turns a private instance's token authentication off (as for a Slurm job: slurm/erc_ray.sbatch)
RAY_AUTH_ENV = "ERC_RAY_AUTH"


def protect_private_ray() -> None:
    """Give the private Ray instance this process starts what slurm/erc_ray.sbatch gives a job: Ray's token
    authentication with a fresh token, and a fresh ``VLLM_API_KEY`` for verl's vLLM HTTP servers (a key or token
    already set is kept), in this process's environment, which the Ray processes it starts inherit.

    Ray (2.60) turns token authentication on for a local instance ``ray.init`` starts when ``RAY_AUTH_MODE`` is
    unset, with ``RAY_AUTH_TOKEN`` as the token (else ``~/.ray/auth_token``, made world-readable under a home folder
    that may be). The mode is read when ray is imported, so it is left to Ray; ``ERC_RAY_AUTH=0`` sets it to
    ``disabled``, with a warning."""
    choice = os.environ.get(RAY_AUTH_ENV, "1")
    if choice not in ("0", "1"):
        raise PreflightError(f"{RAY_AUTH_ENV} must be 1 (token authentication, the default) or 0 (off), got {choice!r}")
    os.environ.setdefault("VLLM_API_KEY", secrets.token_hex(32))
    if choice == "0":
        os.environ["RAY_AUTH_MODE"] = "disabled"
        print(f"verl_erc: WARNING: {RAY_AUTH_ENV}=0: Ray's token authentication is off, anyone who reaches this "
              "machine can run code in this run", flush=True)
        return
    mode = os.environ.get("RAY_AUTH_MODE", "token")
    if mode != "token":
        raise PreflightError(f"RAY_AUTH_MODE={mode}: a run's Ray instance uses token authentication; unset "
                             f"RAY_AUTH_MODE, or set {RAY_AUTH_ENV}=0 to run without it")
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))


def guard_zmq_sockets(config: DictConfig) -> None:
    """Ray's worker_process_setup_hook installs the allowlist of the cluster's hosts in every worker of the job."""
    try:
        with open_dict(config):
            off = zmq_allowlist.setup_hook_runtime_env(config.ray_kwargs.ray_init)
    except ValueError as error:
        raise PreflightError(str(error)) from None
    if off:
        print(off, flush=True)


def _external_cluster(config: DictConfig) -> bool:
    """True when ray.init will join an existing cluster: ``ray_kwargs.ray_init.address`` names one, or is
    unset / ``auto`` with RAY_ADDRESS set (Ray's order); ``local`` always starts a fresh instance."""
    address = OmegaConf.select(config, "ray_kwargs.ray_init.address", default=None)
    if address in (None, "", "auto"):
        address = os.environ.get("RAY_ADDRESS")
    return bool(address) and address != "local"


def set_ray_env_var(config: DictConfig, name: str, value: str) -> None:
    """Set ``name`` in the environment of every Ray worker of the job (``ray_kwargs.ray_init.runtime_env.env_vars``)."""
    with open_dict(config):
        ray_init = config.ray_kwargs.ray_init
        if ray_init.get("runtime_env") is None:
            ray_init.runtime_env = {}
        if ray_init.runtime_env.get("env_vars") is None:
            ray_init.runtime_env.env_vars = {}
        ray_init.runtime_env.env_vars[name] = value


def _require_cpu_runtime_env(config: DictConfig) -> None:
    """Make Ray workers select the CPU platform too (also when joining an existing Ray cluster)."""
    set_ray_env_var(config, PLATFORM_ENV, PLATFORM_NAME)


def ray_resource_needs(config: DictConfig) -> dict[str, dict[str, float]]:
    """Ray CPUs/GPUs the job holds, per consumer: ``{consumer: {"CPU": n, "GPU": n}}``."""
    from verl.trainer.ppo.utils import need_teacher_policy

    sel = OmegaConf.select
    bundles = config.trainer.n_gpus_per_node * config.trainer.nnodes
    needs = {
        f"verl resource pool (trainer.nnodes x trainer.n_gpus_per_node = {bundles} bundles of "
        f"{CPUS_PER_POOL_BUNDLE} CPUs + 1 GPU)": {"CPU": CPUS_PER_POOL_BUNDLE * bundles, "GPU": bundles}
    }
    if sel(config, "reward.reward_model.enable_resource_pool", default=False):
        rm = config.reward.reward_model.n_gpus_per_node * config.reward.reward_model.nnodes
        needs["reward model pool"] = {"CPU": CPUS_PER_POOL_BUNDLE * rm, "GPU": rm}
    if need_teacher_policy(config):
        teacher = config.distillation.n_gpus_per_node * config.distillation.nnodes
        needs["distillation teacher pool"] = {"CPU": CPUS_PER_POOL_BUNDLE * teacher, "GPU": teacher}
    needs["TransferQueue controller"] = {"CPU": 1, "GPU": 0}
    if sel(config, "transfer_queue.backend.storage_backend", default="SimpleStorage") == "SimpleStorage":
        units = sel(config, "transfer_queue.backend.SimpleStorage.num_data_storage_units", default=1)
        needs[
            f"TransferQueue storage units (transfer_queue.backend.SimpleStorage.num_data_storage_units={units}, 1 CPU each)"
        ] = {"CPU": units, "GPU": 0}
    needs["free CPU to place verl's other actors"] = {"CPU": SCHEDULING_HEADROOM_CPUS, "GPU": 0}
    return needs


def ray_resources_available(config: DictConfig) -> dict[str, float] | None:
    """CPUs/GPUs Ray will have: the running cluster's, else what ``ray.init`` will get from the config."""
    import ray

    if ray.is_initialized():
        resources = ray.cluster_resources()
        return {"CPU": resources.get("CPU", 0), "GPU": resources.get("GPU", 0) + resources.get("NPU", 0)}
    if _external_cluster(config):
        return None  # an existing cluster: unknown until connected; verl's own check applies
    ray_init = config.ray_kwargs.ray_init
    cpus = ray_init.get("num_cpus") or os.cpu_count()
    gpus = ray_init.get("num_gpus")
    if gpus is None:
        gpus = torch.cuda.device_count()
    return {"CPU": cpus, "GPU": gpus}


def check_ray_resources(config: DictConfig) -> None:
    """Raise :class:`PreflightError` listing every consumer when Ray would not have enough CPUs or GPUs."""
    available = ray_resources_available(config)
    if available is None:
        return
    needs = ray_resource_needs(config)
    totals = {r: sum(n[r] for n in needs.values()) for r in ("CPU", "GPU")}
    if all(totals[r] <= available[r] for r in totals):
        return
    lines = [f"{name}: {n['CPU']:g} CPU, {n['GPU']:g} GPU" for name, n in needs.items()]
    gpu_hint = (
        " On the CPU backend the GPUs are Ray logical resources, one per training process: set "
        "ray_kwargs.ray_init.num_gpus to trainer.n_gpus_per_node."
        if config.trainer.device == PLATFORM_NAME
        else ""
    )
    raise PreflightError(
        "Ray would not have the resources this job holds, and would wait for them forever: it needs "
        + ", ".join(f"{totals[r]:g} {r}" for r in totals)
        + f" but has {available['CPU']:g} CPU, {available['GPU']:g} GPU.\n  - "
        + "\n  - ".join(lines)
        + "\nRaise ray_kwargs.ray_init.num_cpus (Ray's CPUs are logical: more than the machine's cores is fine), "
        "or lower the consumers above."
        + gpu_hint
    )
