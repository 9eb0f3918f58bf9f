"""Trainer wiring: ERC inside verl's own V1 trainer modes (``sync``, ``colocate_async``, ``separate_async``).

verl compares ``trainer.v1.trainer_mode`` literally in several places (replay buffer, DAPO refill,
checkpointing, prompt dispatch), so ERC keeps verl's mode names. :func:`install_erc_trainers`
replaces each entry of verl's ``TRAINER_REGISTRY`` by a subclass of verl's class under the *same*
name, so every entry point that imports verl (``python -m verl.trainer.main_ppo`` included: the
plugin is loaded at ``import verl``) gets it:

- ERC **off**: constructing the subclass returns an instance of verl's own class
  (:meth:`ErcTrainerMixin.__new__`): the run *is* verl's trainer, nothing of ours runs in it; in a
  launch of ``python -m verl_erc.main`` (which sets ``VERL_ERC_STOP_FILE``) it is verl's class plus
  :class:`verl_erc.run.preemption.StopOnRequestMixin`, which does nothing unless the run is asked to stop.
- ERC **on**: the whole config is validated at construction (:func:`validate_erc_config`), ERC's
  loss :func:`verl_erc.erc.losses.erc_ppo_loss` is installed in every actor worker with verl's
  ``set_loss_fn`` worker API, and a one-line summary is printed per step (:func:`step_summary`); the
  stop request of :mod:`verl_erc.run.preemption` applies too.

The current entropy is switched on by the loss itself: the engine hook (:mod:`verl_erc.hooks.entropy_hook`)
sees ERC's loss on a training pass and computes it. The old-policy entropy needs no wiring: verl's
V1 trainer stores it as the field ``entropy`` in the old-log-prob pass, and it reaches the loss.
A run whose trainer did not install ERC's loss (the legacy trainer, a trainer registered after the
plugin) is stopped by the engine hook at the first actor update, before any weight changes.
"""

from __future__ import annotations

import os
from functools import partial

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from verl.trainer.distillation import is_distillation_enabled
from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY
from verl.utils.config import omega_conf_to_dataclass

from verl_erc.config import ERC_KEY, POSITIVE_NLL_KEY, ErcConfig, ErcConfigError, ErcFSDPActorConfig
from verl_erc.erc.losses import erc_ppo_loss
from verl_erc import metrics as M
from verl_erc.hooks.old_pass import ALIGNED_OLD_PASS_KEY, aligned_split_problems, update_split
from verl_erc.run.preemption import STOP_FILE_ENV, StopOnRequestMixin

#: (label, metric key, format) of the per-step summary line; keys not logged in a step are left out
SUMMARY_FIELDS = (
    ("reward", M.SCORE, ".3f"),  # over the groups DAPO kept
    ("acc_all", M.ALL_GENERATED, ".3f"),  # over every generated response (DAPO)
    ("resp_len", M.RESPONSE_LENGTH, ".1f"),
    ("at_limit", M.RESPONSE_AT_LIMIT, ".3f"),  # responses cut at max_response_length
    ("groups_dropped", M.EVICTED, ".0f"),  # dynamic sampling (DAPO)
    ("entropy", M.ENTROPY, ".3f"),
    ("pg_clipfrac", M.PG_CLIPFRAC, ".4f"),
    ("erc_clipfrac", M.ERC_CLIPFRAC, ".4f"),
    ("onpolicy", M.ERC_CLIPFRAC_ONPOLICY, ".4f"),  # on the first mini-batch, theta = theta_old: noise
    ("dlogp0", M.ONPOLICY_LOGPROB_MAXDIFF, ".3g"),  # its largest |old - new| log-prob: 0 when the passes agree
    ("dH0", M.ONPOLICY_ENTROPY_MAXDIFF, ".3g"),  # and entropy
    ("high", M.ERC_CLIPFRAC_HIGH, ".4f"),
    ("low", M.ERC_CLIPFRAC_LOW, ".4f"),
    ("rho", M.ERC_RATIO_MEAN, ".3f"),
    ("pos_nll", M.POSITIVE_NLL, ".3f"),  # the official code's extra loss (positive_nll_coef > 0)
    ("grad_norm", M.GRAD_NORM, ".3g"),
    ("step_s", M.STEP_TIME, ".1f"),
)


def step_summary(metrics: dict, step: int, total_steps: int) -> str:
    """One line with a training step's reward, lengths, dynamic sampling, PPO and ERC clip fractions (and validation avg@k)."""
    parts = [f"{label} {metrics[key]:{fmt}}" for label, key, fmt in SUMMARY_FIELDS if key in metrics]
    parts += [  # validation avg@k per source (verl's mean@k; its best@k/std keys are left out)
        f"{key} {value:.3f}" for key, value in sorted(metrics.items())
        if key.startswith(M.VAL_CORE_PREFIX) and key.rsplit("/", 1)[-1].startswith("mean@")
    ]
    return f"verl_erc step {step}/{total_steps} | " + " | ".join(parts)


def erc_enabled(config: DictConfig) -> bool:
    """True when the config has an ``erc`` node with ``enable: true``."""
    return bool(OmegaConf.select(config, f"{ERC_KEY}.enable", default=False))


def extends_actor_loss(config: DictConfig) -> bool:
    """True when the actor's loss must be verl-erc's (:func:`verl_erc.erc.losses.erc_ppo_loss`): ERC, or the official
    code's positive-sample NLL term (``actor_rollout_ref.actor.positive_nll_coef`` > 0)."""
    return erc_enabled(config) or bool(OmegaConf.select(config, POSITIVE_NLL_KEY, default=0.0))


def erc_trainer_modes() -> list[str]:
    """The V1 trainer modes in which ERC is wired (verl's, wrapped by :func:`install_erc_trainers`)."""
    return sorted(name for name, cls in TRAINER_REGISTRY.items() if issubclass(cls, ErcTrainerMixin))


def validate_erc_config(config: DictConfig) -> ErcFSDPActorConfig | None:
    """Check that ERC and the positive-sample NLL term, if on, will really run; raise :class:`ErcConfigError`
    naming every fix.

    Returns the actor dataclass config (which validates the ``erc`` knobs) when either is on.
    """
    if not extends_actor_loss(config):
        return None
    omega_conf_to_dataclass(OmegaConf.select(config, ERC_KEY))  # the knobs' own checks first
    what = f"{ERC_KEY}.enable=true" if erc_enabled(config) else f"{POSITIVE_NLL_KEY}>0"
    problems = []
    mode = OmegaConf.select(config, "trainer.v1.trainer_mode")
    if not config.trainer.get("use_v1", True):
        problems.append(
            "trainer.use_v1=false: verl's legacy trainer discards the old-policy entropy; set trainer.use_v1=true"
        )
    elif mode not in erc_trainer_modes():
        problems.append(
            f"trainer.v1.trainer_mode={mode} is not a verl trainer that verl_erc wires ERC into; "
            f"use one of {', '.join(erc_trainer_modes())} (check that the plugin loads: python -m verl_erc --check)"
        )
    if erc_enabled(config) and OmegaConf.select(config, "algorithm.rollout_correction.bypass_mode", default=False):
        problems.append(
            "algorithm.rollout_correction.bypass_mode=true skips the old-log-prob recompute, so there is "
            "no old-policy entropy; set it to false"
        )
    for key in ("actor_rollout_ref.model.use_fused_kernels", "actor_rollout_ref.actor.use_fused_kernels"):
        if erc_enabled(config) and OmegaConf.select(config, key, default=False):
            problems.append(f"{key}=true never materialises the logits ERC's entropy needs; set it to false")
    if erc_enabled(config) and OmegaConf.select(config, f"{ERC_KEY}.old_pass", default=ErcConfig.old_pass) == "aligned":
        problems += aligned_split_problems(config)
    if is_distillation_enabled(config.get("distillation")):
        problems.append("distillation is enabled: verl-erc's loss extends verl's ppo_loss, not distillation_ppo_loss")
    actor_cls = get_class(config.actor_rollout_ref.actor._target_)
    if not issubclass(actor_cls, ErcFSDPActorConfig):
        problems.append(
            f"actor_rollout_ref.actor._target_ builds {actor_cls.__name__}, which has no ERC field; set "
            "actor_rollout_ref.actor._target_=verl_erc.config.ErcFSDPActorConfig or compose your config on "
            "hydra_conf/erc_base.yaml"
        )
    if problems:
        raise ErcConfigError(f"{what} cannot run as configured:\n  - " + "\n  - ".join(problems))
    return omega_conf_to_dataclass(config.actor_rollout_ref.actor)


def _config_argument(args: tuple, kwargs: dict) -> DictConfig:
    return kwargs["config"] if "config" in kwargs else args[0]


class ErcTrainerMixin:
    """ERC wiring for a verl V1 ``PPOTrainer`` subclass (first in the bases); ``_verl_cls`` is verl's class."""

    _verl_cls: type
    _stoppable_cls: type  # verl's class with StopOnRequestMixin: ERC off, launched by verl_erc.main

    def __new__(cls, *args, **kwargs):
        if not extends_actor_loss(_config_argument(args, kwargs)):
            # ERC (and the NLL term) off: verl's own trainer. Python skips cls.__init__ since the object is not a cls.
            return (cls._stoppable_cls if os.environ.get(STOP_FILE_ENV) else cls._verl_cls)(*args, **kwargs)
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        self._erc_actor_config = validate_erc_config(_config_argument(args, kwargs))
        super().__init__(*args, **kwargs)

    def _setup(self):
        super()._setup()
        self.actor_rollout_wg.set_loss_fn(partial(erc_ppo_loss, config=self._erc_actor_config))
        actor = self._erc_actor_config
        erc = actor.erc
        parts = [f"ERC (beta_low={erc.beta_low}, beta_high={erc.beta_high}, old_pass={erc.old_pass})" if erc.enable
                 else "ERC off", f"positive_nll_coef={actor.positive_nll_coef}"]
        # printed, not logged: verl's vLLM server module raises the root handler to ERROR in this process
        print(f"verl_erc: verl-erc's loss installed in the actor workers: {', '.join(parts)}, base "
              f"loss_mode={actor.policy_loss.loss_mode}", flush=True)

    def _compute_old_log_prob(self, batch, metrics):
        """verl's old-log-prob pass; with ``erc.old_pass=aligned``, on the update's micro-batches (:mod:`verl_erc.hooks.old_pass`)."""
        erc = self._erc_actor_config.erc
        if not erc.enable or erc.old_pass != "aligned":
            return super()._compute_old_log_prob(batch, metrics)
        batch.extra_info[ALIGNED_OLD_PASS_KEY] = update_split(self.config, erc.entropy_chunk_size)
        try:
            result = super()._compute_old_log_prob(batch, metrics)
        finally:  # the actor's old pass only: not the reference model's pass, not the update
            batch.extra_info.pop(ALIGNED_OLD_PASS_KEY, None)
        result.extra_info.pop(ALIGNED_OLD_PASS_KEY, None)
        return result

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


def install_erc_trainers() -> None:
    """Replace each of verl's V1 trainers in ``TRAINER_REGISTRY`` by its ERC subclass, same name (idempotent).

    verl's ``register_trainer`` refuses to re-register a name, so the entry is replaced in verl's
    registry dict directly; ``get_trainer_cls(name)`` then returns the subclass.
    """
    for name, cls in list(TRAINER_REGISTRY.items()):
        if issubclass(cls, ErcTrainerMixin):
            continue
        stoppable = type(f"Stoppable{cls.__name__}", (StopOnRequestMixin, cls), {})
        TRAINER_REGISTRY[name] = type(f"Erc{cls.__name__}", (ErcTrainerMixin, StopOnRequestMixin, cls),
                                      {"_verl_cls": cls, "_stoppable_cls": stoppable})


install_erc_trainers()  # the plugin imports this module right after verl's V1 trainers (verl_erc.hooks.after_import)
