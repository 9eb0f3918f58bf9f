"""The ``verl.plugins`` entry point: registers verl-erc's pieces in verl's registries.

verl imports this module in every process that imports verl, Ray workers included, so they all
get the ``gppo`` policy loss, the FSDP engine's entropy hook, ERC inside verl's V1 trainer modes
(same names, :func:`verl_erc.trainer.install_erc_trainers`) and the CPU backend's registrations (:mod:`verl_erc.cpu`, active only when selected).
verl swallows plugin import errors: ``python -m verl_erc --check`` shows whether it loaded.
"""

import logging

import verl

import verl_erc.cpu.platform  # noqa: F401  (first: the "cpu" platform must exist before verl's engine module resolves the device)
from verl_erc import SUPPORTED_VERL_VERSIONS, __version__
from verl_erc import engine, losses, trainer  # noqa: F401  (importing registers gppo and the entropy hook)

logger = logging.getLogger(__name__)

if verl.__version__ not in SUPPORTED_VERL_VERSIONS:
    logger.warning(
        "verl_erc %s supports verl %s, found verl %s", __version__, ", ".join(SUPPORTED_VERL_VERSIONS), verl.__version__
    )
trainer.install_erc_trainers()
logger.info(
    "verl_erc %s loaded: policy loss 'gppo', ERC entropy hook, ERC in trainer modes %s",
    __version__,
    ", ".join(trainer.erc_trainer_modes()),
)
