"""Trainer wiring: ERC on verl's V1 trainers, through verl's trainer registry and worker APIs.

For every V1 trainer verl registers (``sync``, ``colocate_async``, ``separate_async``) this module
registers an ``erc_<name>`` variant (:class:`ErcTrainerMixin` + verl's class). When
``actor_rollout_ref.actor.erc.enable`` is true it:

1. validates the whole config at construction (:func:`validate_erc_config`);
2. after the workers are built, installs :func:`verl_erc.losses.erc_ppo_loss` in every actor
   worker with verl's ``set_loss_fn`` worker API;
3. flags each actor update (``batch.extra_info``) so the engine's entropy hook
   (:mod:`verl_erc.engine`) computes the current entropy.

With ERC on or off, it prints where the run's metrics and checkpoints go when training starts and
one line per training step (:func:`step_summary`), beside verl's full console metrics.

The old-policy entropy needs no wiring: verl's V1 trainer already stores it as the field
``entropy`` beside ``old_log_probs`` in the old-log-prob pass, and it reaches the loss's data.
"""

from __future__ import annotations

import logging
import os
from functools import partial

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from verl.trainer.distillation import is_distillation_enabled
from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY, register_trainer
from verl.utils.config import omega_conf_to_dataclass

from verl_erc.config import ERC_KEY, ErcConfigError, ErcFSDPActorConfig
from verl_erc.engine import ERC_CHUNK_SIZE_KEY, ERC_ENTROPY_FLAG
from verl_erc.losses import erc_ppo_loss

logger = logging.getLogger(__name__)

ERC_TRAINER_PREFIX = "erc_"


#: (label, metric key, format) of the per-step summary line; keys not logged in a step are left out
SUMMARY_FIELDS = (
    ("reward", "critic/score/mean", ".3f"),
    ("entropy", "actor/entropy", ".3f"),
    ("pg_clipfrac", "actor/pg_clipfrac", ".4f"),
    ("erc_clipfrac", "actor/erc_clipfrac", ".4f"),
    ("high", "actor/erc_clipfrac_high", ".4f"),
    ("low", "actor/erc_clipfrac_low", ".4f"),
    ("rho", "actor/erc_ratio_mean", ".3f"),
    ("grad_norm", "actor/grad_norm", ".3g"),
    ("step_s", "timing_s/step", ".1f"),
)


def step_summary(metrics: dict, step: int, total_steps: int) -> str:
    """One line with a training step's reward, entropy, PPO and ERC clip fractions (and validation scores)."""
    parts = [f"{label} {metrics[key]:{fmt}}" for label, key, fmt in SUMMARY_FIELDS if key in metrics]
    parts += [f"{key} {value:.3f}" for key, value in sorted(metrics.items()) if key.startswith("val-core/")]
    return f"verl_erc step {step}/{total_steps} | " + " | ".join(parts)


def erc_enabled(config: DictConfig) -> bool:
    """True when the config has an ``erc`` node with ``enable: true``."""
    return bool(OmegaConf.select(config, f"{ERC_KEY}.enable", default=False))


def validate_erc_config(config: DictConfig) -> ErcFSDPActorConfig | None:
    """Check that ERC, if enabled, will really run; raise :class:`ErcConfigError` naming every fix.

    Returns the actor dataclass config (which validates the ``erc`` knobs) when ERC is enabled.
    """
    if not erc_enabled(config):
        return None
    omega_conf_to_dataclass(OmegaConf.select(config, ERC_KEY))  # the knobs' own checks first
    problems = []
    if not config.trainer.get("use_v1", True):
        problems.append(
            "trainer.use_v1=false: verl's legacy trainer discards the old-policy entropy; set trainer.use_v1=true"
        )
    elif not str(OmegaConf.select(config, "trainer.v1.trainer_mode")).startswith(ERC_TRAINER_PREFIX):
        mode = OmegaConf.select(config, "trainer.v1.trainer_mode")
        problems.append(
            f"trainer.v1.trainer_mode={mode} does not install ERC's loss in the workers; "
            f"set trainer.v1.trainer_mode={ERC_TRAINER_PREFIX}{mode}"
        )
    if OmegaConf.select(config, "algorithm.rollout_correction.bypass_mode", default=False):
        problems.append(
            "algorithm.rollout_correction.bypass_mode=true skips the old-log-prob recompute, so there is "
            "no old-policy entropy; set it to false"
        )
    for key in ("actor_rollout_ref.model.use_fused_kernels", "actor_rollout_ref.actor.use_fused_kernels"):
        if OmegaConf.select(config, key, default=False):
            problems.append(f"{key}=true never materialises the logits ERC's entropy needs; set it to false")
    if is_distillation_enabled(config.get("distillation")):
        problems.append("distillation is enabled: ERC composes with verl's ppo_loss, not distillation_ppo_loss")
    actor_cls = get_class(config.actor_rollout_ref.actor._target_)
    if not issubclass(actor_cls, ErcFSDPActorConfig):
        problems.append(
            f"actor_rollout_ref.actor._target_ builds {actor_cls.__name__}, which has no ERC field; compose your "
            "config on hydra_conf/erc_trainer.yaml (_target_: verl_erc.config.ErcFSDPActorConfig)"
        )
    if problems:
        raise ErcConfigError(f"{ERC_KEY}.enable=true cannot run as configured:\n  - " + "\n  - ".join(problems))
    return omega_conf_to_dataclass(config.actor_rollout_ref.actor)


class ErcTrainerMixin:
    """ERC wiring for a verl V1 ``PPOTrainer`` subclass (put it first in the bases)."""

    def __init__(self, config: DictConfig):
        self._erc_actor_config = validate_erc_config(config)
        super().__init__(config)

    def _setup(self):
        super()._setup()
        if self._erc_actor_config is not None:
            self.actor_rollout_wg.set_loss_fn(partial(erc_ppo_loss, config=self._erc_actor_config))
            erc = self._erc_actor_config.erc
            logger.warning(
                "verl_erc: ERC loss installed in the actor workers (beta_low=%s, beta_high=%s, base loss_mode=%s)",
                erc.beta_low,
                erc.beta_high,
                self._erc_actor_config.policy_loss.loss_mode,
            )

    def on_train_begin(self):
        super().on_train_begin()
        file_logger = self.logger.logger.get("file")
        metrics_file = os.path.abspath(file_logger.filepath) if file_logger else "not written (add 'file' to trainer.logger)"
        print(
            f"verl_erc: training steps {self.global_steps}..{self.total_training_steps}; metrics: {metrics_file}; "
            f"checkpoints: {os.path.abspath(self.config.trainer.default_local_dir)} "
            f"(every {self.config.trainer.save_freq} steps, resume_mode={self.config.trainer.resume_mode})",
            flush=True,
        )

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        super()._compute_metrics(batch, metrics, timing_raw, global_steps=global_steps, epoch=epoch)
        print(step_summary(metrics, global_steps, self.total_training_steps), flush=True)

    def _update_actor(self, batch, metrics):
        if self._erc_actor_config is not None:
            batch.extra_info.update(
                {ERC_ENTROPY_FLAG: True, ERC_CHUNK_SIZE_KEY: self._erc_actor_config.erc.entropy_chunk_size}
            )
        return super()._update_actor(batch, metrics)


def register_erc_trainers() -> None:
    """Register ``erc_<name>`` for every V1 trainer verl has registered (idempotent)."""
    for name, cls in list(TRAINER_REGISTRY.items()):
        if name.startswith(ERC_TRAINER_PREFIX) or ERC_TRAINER_PREFIX + name in TRAINER_REGISTRY:
            continue
        register_trainer(ERC_TRAINER_PREFIX + name)(type(f"Erc{cls.__name__}", (ErcTrainerMixin, cls), {}))
