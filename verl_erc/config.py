"""ERC's knobs as typed verl dataclass configs, validated when Hydra's config is converted.

The actor config node ``actor_rollout_ref.actor`` is instantiated through its ``_target_``;
``hydra_conf/erc_trainer.yaml`` points it at :class:`ErcFSDPActorConfig`, which is verl's
``FSDPActorConfig`` plus one field, ``erc`` (:class:`ErcConfig`). Every ERC key is therefore a
first-class config key with a default (no ``+`` needed), e.g.::

    actor_rollout_ref.actor.erc.enable=true
    actor_rollout_ref.actor.erc.beta_low=0.05 actor_rollout_ref.actor.erc.beta_high=0.05

It also registers the OmegaConf resolvers ``erc.floordiv`` (``${erc.floordiv:a,b}`` is ``a // b``) and
``erc.mul`` (``a * b``), with which a config states one setting as a multiple of another, e.g. DAPO's
overlong buffer as a quarter of the response budget (``hydra_conf/method/dapo.yaml``), and ``erc.default``
(:func:`actor_default`), with which ``hydra_conf/erc_base.yaml`` takes these dataclasses' defaults.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Optional

from omegaconf import OmegaConf
from verl.base_config import BaseConfig
from verl.workers.config import FSDPActorConfig

from verl_erc.erc.entropy import DEFAULT_CHUNK_SIZE
from verl_erc.hooks.after_import import FAILED
from verl_erc.hooks.old_pass import OLD_PASS_MODES

ERC_KEY = "actor_rollout_ref.actor.erc"
POSITIVE_NLL_KEY = "actor_rollout_ref.actor.positive_nll_coef"

OmegaConf.register_new_resolver("erc.floordiv", lambda a, b: int(a) // int(b), replace=True)
OmegaConf.register_new_resolver("erc.mul", lambda a, b: int(a) * int(b), replace=True)


class ErcConfigError(ValueError):
    """A bad ERC setting; the message names the config key and the fix."""


@dataclass
class ErcAnalysisConfig(BaseConfig):
    """Token-level sampling of what ERC does, for the paper's Figures 1a, 3 and 4 (off by default).

    Args:
        enable: sample tokens from the loss computation and append them to ``path``.
        every_n_updates: sample on one ERC loss call (one micro-batch, counted per process) out of
            this many: with k micro-batches per mini-batch, ``k * m`` samples every m mini-batches.
        max_tokens: at most this many response tokens per sampled call (per rank).
        max_records: stop writing once the file holds this many tokens (per rank): bounded size.
        path: output file (JSONL), written from the actor workers, so best absolute; ``{rank}`` is
            replaced by the ``torch.distributed`` rank (quote the value on the Hydra command line:
            Hydra's parser rejects an unquoted ``{``).
    """

    enable: bool = False
    every_n_updates: int = 10
    max_tokens: int = 256
    max_records: int = 200_000
    path: Optional[str] = None

    def __post_init__(self):
        if not self.enable:
            return
        if self.every_n_updates < 1:
            raise ErcConfigError(f"{ERC_KEY}.analysis.every_n_updates must be >= 1, got {self.every_n_updates}")
        if self.max_tokens < 1 or self.max_records < 1:
            raise ErcConfigError(f"{ERC_KEY}.analysis.max_tokens and max_records must be >= 1")
        if not self.path:
            raise ErcConfigError(f"{ERC_KEY}.analysis.enable=true needs {ERC_KEY}.analysis.path (a JSONL file)")


@dataclass
class ErcConfig(BaseConfig):
    """Entropy Ratio Clipping (arXiv 2512.05591, eq. 8-9).

    Token t keeps its policy-gradient term only when
    ``1 - beta_low < rho_t < 1 + beta_high`` with ``rho_t = H(pi_theta, t) / H(pi_old, t)``.

    Args:
        enable: turn ERC on. It composes with any registered ``policy_loss.loss_mode``.
        beta_low: lower band width, ``0 <= beta_low < 1`` (paper: 0.05).
        beta_high: upper band width, ``beta_high >= 0`` (paper: 0.05).
        entropy_eps: the ratio is computed as ``(H_new + eps) / (H_old + eps)``: finite
            everywhere, equal to 1 when both entropies are ~0 (a token that stays deterministic
            keeps its gradient), large when a ~0-entropy token gains entropy (clipped above).
            At typical entropies (>= 1e-3 nats) the shift from the paper's plain ratio is
            below ``eps / H_old``.
        entropy_atol: nats; a token whose ratio leaves the band is still kept when its entropy
            changed by at most this much, ``|H_new - H_old| <= entropy_atol``: a change at the
            numerical noise floor of the two passes (packing, kernels, bf16 logits) is no change.
            0 (default): the paper's eq. 9 exactly. See docs/erc_noise_floor.md for measured values.
        entropy_chunk_size: rows of logits per chunk when computing the current entropy
            without an autograd graph (memory: one ``[chunk x vocab]`` block).
        old_pass: how the old-policy pass packs the batch. ``aligned`` (default): on the update's own
            micro-batches (same mini-batch split, shuffle, token budget and entropy function,
            :mod:`verl_erc.hooks.old_pass`), so at theta = theta_old both passes compute bit-identical
            log-probs and entropies and ERC clips policy drift only. ``verl``: verl's own packing
            (``rollout.log_prob_max_token_len_per_gpu``), as the paper's official code ran: on GPUs in
            bf16 the kernels then differ between the passes and ERC also clips rounding
            (docs/erc_noise_floor.md).
        analysis: token-level analysis output (see :class:`ErcAnalysisConfig`).
    """

    enable: bool = False
    beta_low: float = 0.05
    beta_high: float = 0.05
    entropy_eps: float = 1e-6
    entropy_atol: float = 0.0
    entropy_chunk_size: int = DEFAULT_CHUNK_SIZE
    old_pass: str = "aligned"
    analysis: ErcAnalysisConfig = field(default_factory=ErcAnalysisConfig)

    def __post_init__(self):
        if not isinstance(self.enable, bool):
            raise ErcConfigError(f"{ERC_KEY}.enable must be true or false, got {self.enable!r}")
        if self.enable and FAILED:
            raise ErcConfigError(
                f"{ERC_KEY}.enable=true, but verl-erc could not register itself into verl in this process: "
                + "; ".join(f"after {name}: {why}" for name, why in FAILED.items())
                + ". Is this verl version supported (see README)?"
            )
        if not 0.0 <= self.beta_low < 1.0:
            raise ErcConfigError(
                f"{ERC_KEY}.beta_low must satisfy 0 <= beta_low < 1 (the band's lower edge 1 - beta_low "
                f"must stay positive), got {self.beta_low}"
            )
        if not self.beta_high >= 0.0:
            raise ErcConfigError(f"{ERC_KEY}.beta_high must be >= 0, got {self.beta_high}")
        if not self.entropy_eps > 0.0:
            raise ErcConfigError(f"{ERC_KEY}.entropy_eps must be > 0, got {self.entropy_eps}")
        if not self.entropy_atol >= 0.0:
            raise ErcConfigError(f"{ERC_KEY}.entropy_atol must be >= 0 (nats), got {self.entropy_atol}")
        if self.entropy_chunk_size < 1:
            raise ErcConfigError(f"{ERC_KEY}.entropy_chunk_size must be >= 1, got {self.entropy_chunk_size}")
        if self.old_pass not in OLD_PASS_MODES:
            raise ErcConfigError(f"{ERC_KEY}.old_pass must be one of {', '.join(OLD_PASS_MODES)}, got {self.old_pass!r}")


@dataclass
class ErcFSDPActorConfig(FSDPActorConfig):
    """verl's FSDP actor config with verl-erc's fields.

    Args:
        erc: Entropy Ratio Clipping (:class:`ErcConfig`).
        positive_nll_coef: the official ERC code's extra loss (``postive_loss_coeff``, 0.1 in its recipes, not in
            the paper's text): this coefficient times the negative log-likelihood of the responses whose reward is
            exactly 1, aggregated per micro-batch with ``loss_agg_mode`` and weighted by the micro-batch's share of
            the mini-batch, added to the policy loss outside the PPO clip and the ERC mask (no ratio, no advantage;
            :func:`verl_erc.erc.losses.positive_nll`). Composes with any loss mode, ERC on or off. 0 (default): off,
            the loss is computed exactly as without the key.
    """

    erc: ErcConfig = field(default_factory=ErcConfig)
    positive_nll_coef: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if not self.positive_nll_coef >= 0.0:
            raise ErcConfigError(f"{POSITIVE_NLL_KEY} must be >= 0, got {self.positive_nll_coef}")
        if not self.erc.enable:
            return
        if self.use_fused_kernels:
            raise ErcConfigError(
                f"{ERC_KEY}.enable=true needs the logits to compute the current entropy, but "
                "actor_rollout_ref.actor.use_fused_kernels=true never materialises them: set it to false"
            )
        if self.strategy not in ("fsdp", "fsdp2"):
            raise ErcConfigError(
                f"{ERC_KEY}.enable=true is implemented for the FSDP actor (strategy fsdp/fsdp2), "
                f"got strategy={self.strategy!r}"
            )


def actor_default(path: str) -> Any:
    """The dataclass default of ``actor_rollout_ref.actor.<path>`` for verl-erc's fields (``erc.beta_low``,
    ``positive_nll_coef``, ...): ``${erc.default:<path>}`` in ``hydra_conf/erc_base.yaml`` reads it, so the defaults
    are written here only."""
    cls, value = ErcFSDPActorConfig, None
    for name in path.split("."):
        spec = {f.name: f for f in fields(cls)}[name]
        value = spec.default if spec.default is not MISSING else spec.default_factory()
        cls = type(value)
    return value


OmegaConf.register_new_resolver("erc.default", actor_default, replace=True)
