"""The ``verl.plugins`` entry point: registers verl-erc's pieces in verl's registries.

verl imports this module in every process that imports verl, Ray workers included. It registers
the ``cpu`` platform at once, and each of the rest right after the verl module it registers into
is imported, in the processes that import it (:mod:`verl_erc.hooks.after_import`): the ``gppo`` policy
loss (:mod:`verl_erc.erc.losses`, on verl's ``core_algos``), the FSDP engine's entropy hook
(:mod:`verl_erc.hooks.engine`, on ``verl.workers.engine``) and ERC inside verl's V1 trainer modes (same
names, :func:`verl_erc.hooks.trainer.install_erc_trainers`, on ``verl.trainer.ppo.v1``).
The CPU backend's registrations (:mod:`verl_erc.cpu`) are active only when selected.
verl swallows plugin import errors: ``python -m verl_erc --check`` shows whether it loaded.
"""

import importlib
import logging

import verl

import verl_erc.cpu.platform  # noqa: F401  (first: the "cpu" platform must exist before verl's engine module resolves the device)
from verl_erc import SUPPORTED_VERL_VERSIONS, __version__
from verl_erc.hooks.after_import import after_import

logger = logging.getLogger(__name__)

if verl.__version__ not in SUPPORTED_VERL_VERSIONS:
    logger.warning(
        "verl_erc %s supports verl %s, found verl %s", __version__, ", ".join(SUPPORTED_VERL_VERSIONS), verl.__version__
    )
# importing each module registers it (gppo, the entropy hook, verl's trainers wrapped)
after_import("verl.trainer.ppo.core_algos", lambda: importlib.import_module("verl_erc.erc.losses"))
after_import("verl.workers.engine", lambda: importlib.import_module("verl_erc.hooks.engine"))
after_import("verl.trainer.ppo.v1", lambda: importlib.import_module("verl_erc.hooks.trainer"))
logger.info("verl_erc %s loaded: gppo, the entropy hook and ERC trainers register on import of verl's modules", __version__)
