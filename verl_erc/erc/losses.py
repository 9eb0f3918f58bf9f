"""ERC and GPPO losses.

- The math, as pure functions a reader can check against the paper (arXiv 2512.05591), lives in
  :mod:`verl_erc.erc.equations` (torch only).
- ``gppo``: gradient-preserving clipping (eq. 7), registered in verl's policy-loss registry.
- :func:`erc_ppo_loss`: the actor loss the trainer installs: verl's ``ppo_loss`` with ERC applied to the
  policy-gradient term of whatever ``policy_loss.loss_mode`` is configured (vanilla/DAPO, gppo, gspo, cispo,
  ...), and the official code's positive-sample NLL term where ``positive_nll_coef`` > 0.

How eq. 9 is applied: a token outside the band has its log-prob replaced by a detached copy
before the policy loss sees it. Its forward value, and the loss normaliser (sum of |y_i| for
token-mean), are unchanged; its policy-gradient contribution is exactly zero; every kept token
gets exactly the base loss's gradient (the partial derivatives of the base loss at the same point).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from verl.trainer.ppo.core_algos import agg_loss, kl_penalty, register_policy_loss
from verl.utils import tensordict_utils as tu
from verl.utils import torch_functional as verl_F
from verl.utils.metric import AggregationType, Metric
from verl.workers.utils.losses import ppo_loss
from verl.workers.utils.padding import no_padding_2_padding

from verl_erc.config import ERC_KEY
from verl_erc.erc.equations import (
    entropy_ratio,
    erc_keep_mask,
    gate_gradient,
    gppo_ratio,
    positive_tokens,
    within_tolerance,
)
from verl_erc import metrics as M

#: model_output key under which the entropy hook (verl_erc.hooks.entropy_hook) puts the current entropy.
CURRENT_ENTROPY_KEY = "erc_entropy"
#: update-batch field holding the old-policy entropy (written by verl's old-log-prob pass).
OLD_ENTROPY_KEY = "entropy"
#: non-tensor batch key the entropy hook sets on the step's first mini-batch (theta = theta_old)
ERC_ONPOLICY_FLAG = "erc_onpolicy"


class ErcInputError(RuntimeError):
    """ERC is enabled but an input it needs is missing: never train without the constraint."""


# --------------------------------------------------------------------------------------------
# GPPO as a verl policy loss
# --------------------------------------------------------------------------------------------


@register_policy_loss("gppo")
def compute_policy_loss_gppo(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Optional[Any] = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """GPPO (Klear-Reasoner, eq. 7): PPO-clip's value, with gradients kept outside the clip range.

    ``clip_ratio_low/high`` set the range; dual-clip (``clip_ratio_c``) and ``rollout_is_weights``
    act as in verl's ``vanilla`` loss. Metrics have the same names as ``vanilla``'s.
    """
    assert config is not None
    clip_low = config.clip_ratio_low if config.clip_ratio_low is not None else config.clip_ratio
    clip_high = config.clip_ratio_high if config.clip_ratio_high is not None else config.clip_ratio
    clip_ratio_c = config.get("clip_ratio_c", 3.0)
    if not clip_ratio_c > 1.0:
        raise ValueError(f"clip_ratio_c (dual-clip lower bound) must be > 1.0, got {clip_ratio_c}")

    negative_approx_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)

    pg_losses1 = -advantages * ratio
    pg_losses2 = -advantages * gppo_ratio(ratio, clip_low, clip_high)
    is_clipped = pg_losses2 > pg_losses1
    clip_pg_losses1 = torch.where(is_clipped, pg_losses2, pg_losses1)  # = max(pg_losses1, pg_losses2)

    pg_losses3 = -advantages * clip_ratio_c  # dual-clip, as in verl's vanilla loss
    clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
    pg_losses = torch.where(advantages < 0, clip_pg_losses2, clip_pg_losses1)
    if rollout_is_weights is not None:
        pg_losses = pg_losses * rollout_is_weights

    pg_loss = agg_loss(
        loss_mat=pg_losses, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **config.global_batch_info
    )
    metrics = {
        M.PG_CLIPFRAC: verl_F.masked_mean(is_clipped.float(), response_mask).item(),
        M.PPO_KL: verl_F.masked_mean(-negative_approx_kl, response_mask).detach().item(),
        "actor/pg_clipfrac_lower": verl_F.masked_mean(
            torch.gt(clip_pg_losses1, pg_losses3) * (advantages < 0).float(), response_mask
        ).item(),
    }
    return pg_loss, metrics


# --------------------------------------------------------------------------------------------
# ERC around verl's actor loss
# --------------------------------------------------------------------------------------------


#: ``entropy_ratio`` clamped to [0, RATIO_CLIP] for ``actor/erc_ratio_clipped_mean``: one token moves it by at
#: most RATIO_CLIP / tokens, where a ratio of 1e5 (an entropy from ~1e-9 to ~1e-4) dominates the plain mean
RATIO_CLIP = 2.0
#: a negative entropy above -NEGATIVE_ENTROPY_ATOL nats is float rounding (clamped to 0); below it, a bug
NEGATIVE_ENTROPY_ATOL = 1e-3


def onpolicy_maxdiff(old: torch.Tensor, new: torch.Tensor, response_mask: torch.Tensor) -> Metric:
    """max |old - new| over response tokens (0 with none), MAX-aggregated: on the step's first mini-batch,
    where theta = theta_old, 0 means the old pass and the update computed bit-identical values."""
    diff = (old.float() - new.float()).abs()[response_mask.bool()]
    return Metric(AggregationType.MAX, diff.max().item() if diff.numel() else 0.0)


def erc_metrics(ratio, keep, kept_by_atol, clamped, response_mask, beta_low, beta_high, batch_num_tokens: int,
                dp_size: int, onpolicy: bool):
    """ERC's metrics for one micro-batch, aggregated by verl into exact token fractions of the mini-batch.

    ``batch_num_tokens`` is the mini-batch's response-token count over all DP ranks (verl's loss
    normaliser). The fractions (clipped; clipped above, below the band; kept only by ``entropy_atol``;
    entropies clamped at 0) and the means of the ratio (plain, and clamped to [0, RATIO_CLIP]) are this
    micro-batch's token sums times ``dp_size / batch_num_tokens`` with SUM aggregation: verl sums them
    over micro-batches and averages over DP ranks, which gives sums over every response token of the
    mini-batch divided by ``batch_num_tokens``. Min/max are over response tokens; a micro-batch with
    none (verl's padding samples) adds 0 to the sums and +inf/-inf to min/max. On the step's first
    mini-batch (``onpolicy``: theta = theta_old) the clip fraction is also ``actor/erc_clipfrac_onpolicy``.
    """
    mask = response_mask.bool()
    valid = ratio[mask]
    scale = dp_size / batch_num_tokens if batch_num_tokens else 0.0
    share = lambda t: Metric(AggregationType.SUM, t[mask].float().sum().item() * scale)  # noqa: E731
    clipped = ~keep
    metrics = {
        M.ERC_CLIPFRAC: share(clipped),
        M.ERC_CLIPFRAC_HIGH: share(clipped & (ratio >= 1.0 + beta_high)),
        M.ERC_CLIPFRAC_LOW: share(clipped & (ratio <= 1.0 - beta_low)),
        M.ERC_KEPT_BY_ATOL: share(kept_by_atol),
        M.ERC_ENTROPY_CLAMPED: share(clamped),
        M.ERC_RATIO_MEAN: share(ratio),
        M.ERC_RATIO_CLIPPED_MEAN: share(ratio.clamp(0.0, RATIO_CLIP)),
        M.ERC_RATIO_MIN: Metric(AggregationType.MIN, valid.min().item() if valid.numel() else float("inf")),
        M.ERC_RATIO_MAX: Metric(AggregationType.MAX, valid.max().item() if valid.numel() else float("-inf")),
    }
    if onpolicy:
        metrics[M.ERC_CLIPFRAC_ONPOLICY] = share(clipped)
    return metrics


def checked_entropy(entropy: torch.Tensor, response_mask: torch.Tensor, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``entropy`` with rounding below 0 clamped to 0, and where it was; raises :class:`ErcInputError` on a
    non-finite entropy or one below ``-NEGATIVE_ENTROPY_ATOL`` on a response token (``which``: the pass)."""
    mask = response_mask.bool()
    values = entropy[mask]
    bad = ~torch.isfinite(values)
    if bad.any():
        raise ErcInputError(
            f"{int(bad.sum())} of {values.numel()} response tokens have a non-finite {which} entropy "
            f"({int(values.isnan().sum())} NaN, {int(values.isinf().sum())} inf): ERC cannot tell whether they left the "
            "band. Check the logits of that pass (a diverged model, an overflow in bf16)"
        )
    if (values < -NEGATIVE_ENTROPY_ATOL).any():
        raise ErcInputError(
            f"{int((values < -NEGATIVE_ENTROPY_ATOL).sum())} response tokens have a {which} entropy below "
            f"-{NEGATIVE_ENTROPY_ATOL} nats (min {values.min().item():.3g}): not rounding, an entropy is >= 0"
        )
    clamped = mask & (entropy < 0)
    return entropy.clamp(min=0.0), clamped


def _missing(what: str, fix: str) -> ErcInputError:
    return ErcInputError(f"{ERC_KEY}.enable=true but {what}. ERC refuses to train without its constraint: {fix}")


def _scatter_to_no_padding(keep: torch.Tensor, response_mask: torch.Tensor, data, total_nnz: int) -> torch.Tensor:
    """Inverse of verl's ``no_padding_2_padding`` for a ``[bsz, resp_len]`` bool tensor.

    Returns a flat ``[total_nnz]`` mask aligned with the model output's values, True off-response.
    verl's own mapping is reused by sending flat positions through ``no_padding_2_padding``.
    """
    positions = no_padding_2_padding(torch.arange(total_nnz, device=keep.device), data)
    flat = torch.ones(total_nnz, dtype=torch.bool, device=keep.device)
    flat[positions[response_mask]] = keep[response_mask]
    return flat


#: update-batch fields that hold a response's reward per token, in the order they are read (verl's V1 trainer writes
#: token_level_rewards only with a KL penalty in the reward; without one they equal rm_scores)
REWARD_FIELDS = ("token_level_rewards", "rm_scores")


def erc_ppo_loss(config, model_output: dict, data, dp_group=None):
    """verl-erc's actor loss: verl's ``ppo_loss``, with ERC (``erc.enable``, :func:`ppo_loss_with_erc`) and the
    official code's positive-sample NLL term (``positive_nll_coef`` > 0, :func:`positive_nll_term`)."""
    if config.erc.enable:
        loss, metrics = ppo_loss_with_erc(config, model_output, data, dp_group)
    else:
        loss, metrics = ppo_loss(config=config, model_output=model_output, data=data, dp_group=dp_group)
    if config.positive_nll_coef:
        term, nll = positive_nll_term(config, model_output, data)
        loss = loss + term
        metrics[M.POSITIVE_NLL] = Metric(AggregationType.MEAN, nll)
    return loss, metrics


def positive_nll(log_prob: torch.Tensor, positive: torch.Tensor, loss_agg_mode: str) -> torch.Tensor:
    """The official code's extra loss on one micro-batch: -log pi on the ``positive`` tokens, aggregated by
    ``loss_agg_mode`` within the micro-batch (its ``agg_loss`` without global batch sizes); 0 when there are none."""
    if not positive.any():
        return log_prob.sum() * 0.0
    return agg_loss(loss_mat=-log_prob, loss_mask=positive, loss_agg_mode=loss_agg_mode)


def micro_batch_share(rows: int, dp_size: int, global_batch_size: int) -> float:
    """A micro-batch's weight in its mini-batch as the official code (verl 0.5's actor) weights every loss term: its
    rows / the rank's rows in the mini-batch (``global_batch_size / dp_size``); FSDP averages the ranks in both."""
    return rows * dp_size / global_batch_size


def positive_nll_term(config, model_output: dict, data) -> tuple[torch.Tensor, float]:
    """``positive_nll_coef`` x :func:`positive_nll` x :func:`micro_batch_share`, on the log-probs as the model gave
    them: outside the PPO clip and ERC's mask, no ratio, no advantage. Returns (term, the micro-batch's NLL)."""
    field = next((key for key in REWARD_FIELDS if key in data.keys()), None)
    if field is None:
        raise ErcInputError(
            f"actor_rollout_ref.actor.positive_nll_coef={config.positive_nll_coef} needs each response's reward in the "
            f"update batch ({' or '.join(REWARD_FIELDS)}), and it has none: run verl's V1 trainer with a reward"
        )
    padded = data.select("response_mask", field).to_padded_tensor()
    positive = positive_tokens(padded["response_mask"], padded[field].sum(-1))
    nll = positive_nll(no_padding_2_padding(model_output["log_probs"], data), positive, config.loss_agg_mode)
    share = micro_batch_share(len(data), data["dp_size"], data["global_batch_size"])
    return config.positive_nll_coef * share * nll, nll.detach().item()


def ppo_loss_with_erc(config, model_output: dict, data, dp_group=None):
    """verl's ``ppo_loss`` with ERC's indicator I_t (eq. 9) applied to the policy-gradient term.

    Inputs: ``model_output["erc_entropy"]`` (current entropy, no graph, from the entropy hook)
    and ``data["entropy"]`` (old-policy entropy from verl's old-log-prob pass). Either missing, or
    non-finite or clearly negative on a response token, raises :class:`ErcInputError`. A token is kept
    when its ratio is in the band, or (``erc.entropy_atol > 0``) its entropy changed by at most
    ``entropy_atol`` nats. The KL-loss and entropy-bonus terms are not gated.
    """
    erc = config.erc

    if model_output.get(CURRENT_ENTROPY_KEY) is None:
        raise _missing(
            "the current-policy entropy is missing from the actor's model output",
            "the actor engine must include verl_erc's entropy hook (verl_erc.hooks.entropy_hook.ErcEntropyMixin); "
            "check that `import verl_erc` succeeds in the workers (python -m verl_erc --check) and that the "
            "trainer is started with python -m verl_erc.main",
        )
    if OLD_ENTROPY_KEY not in data.keys():
        raise _missing(
            "the old-policy entropy is missing from the update batch",
            "use verl's V1 trainer (trainer.use_v1=true) with the old-log-prob recompute on "
            "(algorithm.rollout_correction.bypass_mode=false)",
        )

    padded = data.select("response_mask", OLD_ENTROPY_KEY).to_padded_tensor()
    response_mask = padded["response_mask"].bool()
    old_entropy = padded[OLD_ENTROPY_KEY].float()
    new_entropy = no_padding_2_padding(model_output[CURRENT_ENTROPY_KEY], data).float()
    if new_entropy.shape != old_entropy.shape:
        raise ErcInputError(f"ERC entropy shapes differ: current {tuple(new_entropy.shape)} vs old {tuple(old_entropy.shape)}")
    onpolicy = bool(tu.get_non_tensor_data(data=data, key=ERC_ONPOLICY_FLAG, default=False))
    if onpolicy:  # theta = theta_old: any difference between the passes is numerics, not policy drift
        old_log_prob = data.select("old_log_probs").to_padded_tensor()["old_log_probs"]
        onpolicy_diffs = {
            M.ONPOLICY_LOGPROB_MAXDIFF: onpolicy_maxdiff(
                old_log_prob, no_padding_2_padding(model_output["log_probs"], data).detach(), response_mask),
            M.ONPOLICY_ENTROPY_MAXDIFF: onpolicy_maxdiff(old_entropy, new_entropy, response_mask),
        }
    old_entropy, old_clamped = checked_entropy(old_entropy, response_mask, "old-policy (verl's old-log-prob pass)")
    new_entropy, new_clamped = checked_entropy(new_entropy, response_mask, "current (the update's forward pass)")

    ratio = entropy_ratio(new_entropy, old_entropy, erc.entropy_eps)
    keep = erc_keep_mask(ratio, erc.beta_low, erc.beta_high)
    kept_by_atol = torch.zeros_like(keep)
    if erc.entropy_atol > 0:
        kept_by_atol = ~keep & within_tolerance(new_entropy, old_entropy, erc.entropy_atol)
        keep = keep | kept_by_atol

    log_probs = model_output["log_probs"]
    flat_keep = _scatter_to_no_padding(keep, response_mask, data, log_probs.values().shape[0])
    gated_values = gate_gradient(log_probs.values(), flat_keep)
    gated = torch.nested.nested_tensor_from_jagged(gated_values, log_probs.offsets())

    loss, metrics = ppo_loss(config=config, model_output={**model_output, "log_probs": gated}, data=data, dp_group=dp_group)

    if config.use_kl_loss:
        # eq. 9 gates the policy-gradient term only: give the KL term back its gradient on
        # clipped tokens (the added term is exactly 0 in value).
        ref = data.select("ref_log_prob").to_padded_tensor()["ref_log_prob"]
        kl_full = kl_penalty(logprob=no_padding_2_padding(log_probs, data), ref_logprob=ref, kl_penalty=config.kl_loss_type)
        kl_gated = kl_penalty(logprob=no_padding_2_padding(gated, data), ref_logprob=ref, kl_penalty=config.kl_loss_type)
        restore = agg_loss(
            loss_mat=kl_full - kl_gated,
            loss_mask=response_mask,
            loss_agg_mode=config.loss_agg_mode,
            **config.global_batch_info,
        )
        loss = loss + config.kl_loss_coef * restore

    metrics.update(
        erc_metrics(ratio, keep, kept_by_atol, old_clamped | new_clamped, response_mask, erc.beta_low, erc.beta_high,
                    data["batch_num_tokens"], data["dp_size"], onpolicy)
    )
    if onpolicy:
        metrics.update(onpolicy_diffs)
    if erc.analysis.enable:
        from verl_erc.erc.token_analysis import record_tokens

        fields = data.select("old_log_probs", "advantages").to_padded_tensor()
        record_tokens(
            erc.analysis,
            log_prob=no_padding_2_padding(log_probs, data).detach(),
            old_log_prob=fields["old_log_probs"],
            advantages=fields["advantages"],
            old_entropy=old_entropy,
            new_entropy=new_entropy,
            entropy_ratio=ratio,
            keep=keep,
            response_mask=response_mask,
            clip_ratio_low=config.clip_ratio_low,
            clip_ratio_high=config.clip_ratio_high,
            beta_low=erc.beta_low,
            beta_high=erc.beta_high,
        )
    return loss, metrics
