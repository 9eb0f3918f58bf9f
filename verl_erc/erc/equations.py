"""ERC's and GPPO's equations (arXiv 2512.05591) as pure functions on tensors: torch only, no verl.

- :func:`entropy_ratio` (eq. 8), :func:`erc_keep_mask` (the indicator of eq. 9),
  :func:`within_tolerance` (our ``entropy_atol``: a change at the numerical noise floor is no change),
  :func:`gate_gradient` (how eq. 9's indicator is applied), :func:`gppo_ratio` (eq. 7).
- :func:`positive_tokens`: the tokens of the official code's extra loss (not in the paper's text): the
  response tokens of responses whose reward is exactly 1.

How eq. 9 is applied: a token outside the band has its log-prob replaced by a detached copy before the policy
loss sees it. Its forward value, and the loss normaliser (sum of |y_i| for token-mean), are unchanged; its
policy-gradient contribution is exactly zero.
"""

from __future__ import annotations

import torch


def entropy_ratio(new_entropy: torch.Tensor, old_entropy: torch.Tensor, eps: float) -> torch.Tensor:
    """rho_t = H(pi_theta, t) / H(pi_old, t)  (eq. 8), smoothed by ``eps`` so it is always finite."""
    return (new_entropy + eps) / (old_entropy + eps)


def erc_keep_mask(ratio: torch.Tensor, beta_low: float, beta_high: float) -> torch.Tensor:
    """I_t = 1 if 1 - beta_low < rho_t < 1 + beta_high else 0  (eq. 9), as a bool tensor."""
    return (ratio > 1.0 - beta_low) & (ratio < 1.0 + beta_high)


def within_tolerance(new_entropy: torch.Tensor, old_entropy: torch.Tensor, atol: float) -> torch.Tensor:
    """|H(pi_theta, t) - H(pi_old, t)| <= atol: the entropy did not change beyond the numerical noise floor.

    ERC keeps a token when its ratio is in the band *or* this holds (``erc.entropy_atol``; 0: eq. 9 exactly).
    """
    return (new_entropy - old_entropy).abs() <= atol


def gate_gradient(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``x`` with its gradient stopped where ``keep`` is False; values are unchanged."""
    return torch.where(keep, x, x.detach())


def gppo_ratio(ratio: torch.Tensor, clip_low: float, clip_high: float) -> torch.Tensor:
    """clip(r, (1-eps_l)/sg(r) * r, (1+eps_h)/sg(r) * r)  (eq. 7).

    Value: clip(r, 1-eps_l, 1+eps_h), exactly. Gradient: d r inside the range, and
    (1-eps_l or 1+eps_h) * d log pi outside it (instead of zero as in PPO-clip).
    """
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    return clipped.detach() + (ratio - ratio.detach()) * (clipped / ratio).detach()


def positive_tokens(response_mask: torch.Tensor, sequence_reward: torch.Tensor, positive_reward: float = 1.0) -> torch.Tensor:
    """``[bsz, response_len]`` bool: the response tokens of the responses whose summed reward equals
    ``positive_reward`` exactly (the official ERC code's positive samples, ``sum(token_level_rewards) == 1.0``)."""
    return response_mask.bool() & (sequence_reward == positive_reward).unsqueeze(-1)
