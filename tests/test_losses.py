"""Exact tests of ERC (eq. 8-9) and GPPO (eq. 7) on hand-built tensors."""

import math
import warnings

import pytest
import torch
from verl.trainer.ppo.core_algos import get_policy_loss_fn

from verl_erc.erc.entropy import entropy_no_grad
from verl_erc.erc.equations import entropy_ratio, erc_keep_mask, gate_gradient, gppo_ratio, within_tolerance

from helpers import make_actor_config

# Every registered verl loss that is a function of the token log-probs (bypass_mode is a
# meta-mode that needs rollout-correction inputs), plus ours.
COMPOSABLE_LOSSES = ["vanilla", "gppo", "gspo", "cispo", "sapo", "gpg", "geo_mean", "dro", "dppo_tv", "dppo_kl", "clip_cov", "kl_cov"]


def _batch(seed=0, bsz=4, length=7):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(bsz, length, generator=g, dtype=torch.float64) * 2 - 0.05
    log_prob = old + (torch.rand(bsz, length, generator=g, dtype=torch.float64) - 0.5) * 0.8
    adv = torch.randn(bsz, length, generator=g, dtype=torch.float64)
    mask = torch.ones(bsz, length, dtype=torch.bool)
    mask[0, 5:] = False
    mask[2, 3:] = False
    keep = torch.rand(bsz, length, generator=g) > 0.4
    return old, log_prob, adv, mask, keep


def _loss_and_grad(loss_mode, log_prob, old, adv, mask, keep=None, **config_overrides):
    config = make_actor_config(loss_mode, **config_overrides)
    log_prob = log_prob.clone().requires_grad_(True)
    lp = log_prob if keep is None else gate_gradient(log_prob, keep)
    torch.manual_seed(0)  # clip_cov/kl_cov pick tokens at random
    loss, metrics = get_policy_loss_fn(loss_mode)(
        old_log_prob=old, log_prob=lp, advantages=adv, response_mask=mask, loss_agg_mode="token-mean", config=config
    )
    (grad,) = torch.autograd.grad(loss, log_prob)
    return loss.detach(), grad, metrics


# ---------------------------------------------------------------------------------------------
# The paper's example (section 1)
# ---------------------------------------------------------------------------------------------


def test_paper_example_entropy_ppo_clip_and_erc():
    old_p = torch.tensor([0.85, 0.0, 0.15, 0.0], dtype=torch.float64)
    new_p = torch.tensor([0.82, 0.064, 0.07, 0.046], dtype=torch.float64)
    # logits = log p; a zero probability becomes a very negative logit (exp underflows to 0)
    h_old = entropy_no_grad(torch.log(old_p.clamp(min=1e-300)).unsqueeze(0))[0]
    h_new = entropy_no_grad(torch.log(new_p).unsqueeze(0))[0]
    assert h_old.item() == pytest.approx(0.422, abs=1e-3)  # paper: 0.422
    assert h_new.item() == pytest.approx(0.666, abs=1e-3)  # paper: 0.666

    # sampled action a: importance ratio 0.82 / 0.85 lies inside PPO's [1-0.2, 1+0.28]: no clip
    old_lp = torch.log(old_p[:1]).view(1, 1)
    new_lp = torch.log(new_p[:1]).view(1, 1)
    mask = torch.ones(1, 1, dtype=torch.bool)
    for adv_sign in (1.0, -1.0):
        adv = torch.full((1, 1), adv_sign, dtype=torch.float64)
        _, grad, metrics = _loss_and_grad("vanilla", new_lp, old_lp, adv, mask)
        assert metrics["actor/pg_clipfrac"] == 0.0 and metrics["actor/pg_clipfrac_lower"] == 0.0
        assert grad.abs().item() > 0.5  # PPO-clip passes a full gradient

        # ERC: rho = 0.666 / 0.422 = 1.58 is outside (0.95, 1.05): the token is clipped
        rho = entropy_ratio(h_new, h_old, eps=1e-6)
        assert rho.item() == pytest.approx(0.666 / 0.422, abs=5e-3)
        keep = erc_keep_mask(rho, 0.05, 0.05).view(1, 1)
        assert not keep.any()
        loss_erc, grad_erc, _ = _loss_and_grad("vanilla", new_lp, old_lp, adv, mask, keep=keep)
        assert grad_erc.item() == 0.0


# ---------------------------------------------------------------------------------------------
# eq. 8-9: the ratio and the indicator
# ---------------------------------------------------------------------------------------------


def test_keep_mask_is_the_open_band_of_eq_9():
    ratio = torch.tensor([0.90, 0.95, 0.9500001, 1.0, 1.0499999, 1.05, 1.2], dtype=torch.float64)
    keep = erc_keep_mask(ratio, beta_low=0.05, beta_high=0.05)
    assert keep.tolist() == [False, False, True, True, True, False, False]
    # asymmetric band
    assert erc_keep_mask(torch.tensor([0.85, 1.15]), beta_low=0.2, beta_high=0.1).tolist() == [True, False]


def test_ratio_is_finite_when_old_entropy_is_zero():
    new = torch.tensor([0.0, 1e-9, 0.3, 0.2])
    old = torch.tensor([0.0, 0.0, 0.0, 0.1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division warnings either
        rho = entropy_ratio(new, old, eps=1e-6)
    assert torch.isfinite(rho).all()
    assert rho[0].item() == 1.0  # deterministic before and after: kept
    keep = erc_keep_mask(rho, 0.05, 0.05)
    assert keep.tolist() == [True, True, False, False]  # zero-entropy token gaining entropy: clipped above
    assert rho[3].item() == pytest.approx(2.0, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# ERC composes with every base loss: same value, zero gradient when clipped, base gradient kept
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_mode", COMPOSABLE_LOSSES)
def test_erc_gradients_exact_for_every_base_loss(loss_mode):
    old, log_prob, adv, mask, keep = _batch(seed=1)
    loss_base, grad_base, _ = _loss_and_grad(loss_mode, log_prob, old, adv, mask)
    loss_erc, grad_erc, _ = _loss_and_grad(loss_mode, log_prob, old, adv, mask, keep=keep)

    assert torch.equal(loss_erc, loss_base)  # forward value unchanged
    assert torch.equal(grad_erc[~keep], torch.zeros_like(grad_erc[~keep]))  # clipped: exactly zero
    assert torch.equal(grad_erc[keep], grad_base[keep])  # kept: exactly the base gradient
    assert grad_base[keep & mask].abs().sum() > 0 and grad_base[~keep & mask].abs().sum() > 0  # test has teeth


def test_erc_on_dapo_matches_hand_computed_eq_9():
    """Token-mean DAPO: grad of a kept in-range token is -A r / N, N counting clipped tokens too."""
    old, log_prob, adv, mask, keep = _batch(seed=2)
    _, grad, _ = _loss_and_grad("vanilla", log_prob, old, adv, mask, keep=keep)
    ratio = torch.exp(log_prob - old)
    in_range = (ratio > 0.8) & (ratio < 1.28)
    n_tokens = mask.sum()  # the normaliser of eq. 9: sum |y_i|, clipped tokens included
    expected = torch.where(keep & mask & in_range, -adv * ratio / n_tokens, torch.zeros_like(adv))
    sel = mask & (in_range | ~keep)
    torch.testing.assert_close(grad[sel], expected[sel], rtol=1e-12, atol=0)
    assert (keep & mask & in_range).sum() >= 5


# ---------------------------------------------------------------------------------------------
# GPPO (eq. 7)
# ---------------------------------------------------------------------------------------------


def test_gppo_ratio_value_and_gradient():
    log_r = torch.log(torch.tensor([0.5, 0.9, 1.1, 1.6], dtype=torch.float64)).requires_grad_(True)
    ratio = torch.exp(log_r)
    out = gppo_ratio(ratio, 0.2, 0.2)
    assert out.tolist() == pytest.approx([0.8, 0.9, 1.1, 1.2], abs=1e-15)
    (grad,) = torch.autograd.grad(out.sum(), log_r)
    # d/dlog r: clip bound outside the range (1-eps_l, 1+eps_h), r inside
    assert grad.tolist() == pytest.approx([0.8, 0.9, 1.1, 1.2], abs=1e-12)


def test_gppo_forward_equals_ppo_clip():
    for seed in range(5):
        old, log_prob, adv, mask, _ = _batch(seed=seed, bsz=6, length=9)
        loss_ppo, _, m_ppo = _loss_and_grad("vanilla", log_prob, old, adv, mask)
        loss_gppo, _, m_gppo = _loss_and_grad("gppo", log_prob, old, adv, mask)
        torch.testing.assert_close(loss_gppo, loss_ppo, rtol=1e-14, atol=0)
        assert m_gppo == pytest.approx(m_ppo)


def test_gppo_gradients_match_eq_7_out_of_range():
    eps_l, eps_h, clip_c = 0.2, 0.2, 3.0
    ratios = torch.tensor([[1.5, 0.5, 0.5, 1.5, 4.0, 1.0]], dtype=torch.float64)
    adv = torch.tensor([[1.0, -2.0, 1.0, -1.0, -1.0, 0.5]], dtype=torch.float64)
    old = torch.full_like(ratios, -1.0)
    log_prob = old + torch.log(ratios)
    mask = torch.ones_like(ratios, dtype=torch.bool)
    n = int(mask.sum())
    _, g_gppo, metrics = _loss_and_grad("gppo", log_prob, old, adv, mask, clip_ratio_low=eps_l, clip_ratio_high=eps_h)
    _, g_ppo, _ = _loss_and_grad("vanilla", log_prob, old, adv, mask, clip_ratio_low=eps_l, clip_ratio_high=eps_h)
    expected = torch.tensor(
        [
            [
                -1.0 * (1 + eps_h) / n,  # A>0, r>1+eps: clipped, gradient kept at scale 1+eps_h
                2.0 * (1 - eps_l) / n,  # A<0, r<1-eps: clipped, gradient kept at scale 1-eps_l
                -1.0 * 0.5 / n,  # A>0, r<1-eps: not clipped (min picks r A)
                1.0 * 1.5 / n,  # A<0, r>1+eps: not clipped
                0.0,  # A<0, r>clip_ratio_c: dual-clip constant, as in vanilla
                -0.5 * 1.0 / n,  # in range
            ]
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(g_gppo, expected, rtol=1e-12, atol=1e-15)
    # PPO-clip zeroes the two clipped tokens, and agrees elsewhere
    assert g_ppo[0, 0] == 0 and g_ppo[0, 1] == 0
    torch.testing.assert_close(g_gppo[0, 2:], g_ppo[0, 2:], rtol=1e-12, atol=0)
    assert metrics["actor/pg_clipfrac"] == pytest.approx(2 / 6)
    assert clip_c == make_actor_config("gppo").clip_ratio_c


def test_gppo_rollout_is_weights_scale_like_vanilla():
    old, log_prob, adv, mask, _ = _batch(seed=3)
    weights = torch.rand_like(adv) + 0.5
    config = make_actor_config("gppo")
    results = {}
    for mode in ("vanilla", "gppo"):
        lp = log_prob.clone().requires_grad_(True)
        loss, _ = get_policy_loss_fn(mode)(
            old_log_prob=old, log_prob=lp, advantages=adv, response_mask=mask, loss_agg_mode="token-mean",
            config=config, rollout_is_weights=weights,
        )
        results[mode] = (loss, torch.autograd.grad(loss, lp)[0])
    torch.testing.assert_close(results["gppo"][0], results["vanilla"][0], rtol=1e-14, atol=0)
    ratio = torch.exp(log_prob - old)
    in_range = (ratio > 0.8) & (ratio < 1.28) & mask
    torch.testing.assert_close(results["gppo"][1][in_range], results["vanilla"][1][in_range], rtol=1e-12, atol=0)
    assert not math.isclose(results["gppo"][1].abs().sum().item(), results["vanilla"][1].abs().sum().item())


def test_entropy_atol_keeps_noise_but_not_a_real_jump():
    """eq. 9 OR |dH| <= atol: a confident token whose entropy really jumps (0.01 -> 0.5 nats, the paper's upper
    clips) is clipped with or without the tolerance; one moved by rounding (1e-5 -> 1.3e-5) is kept only with it."""
    old = torch.tensor([0.01, 1e-5, 2.0])
    new = torch.tensor([0.5, 1.3e-5, 2.02])
    band = erc_keep_mask(entropy_ratio(new, old, 1e-6), 0.05, 0.05)
    assert band.tolist() == [False, False, True]
    for atol in (0.0, 1e-3, 1e-2):
        keep = band | within_tolerance(new, old, atol)
        assert keep.tolist() == [False, atol > 0, True], atol


# ---------------------------------------------------------------------------------------------
# The official code's positive-sample NLL term (positive_nll_coef)
# ---------------------------------------------------------------------------------------------


def test_positive_nll_values_on_a_hand_built_micro_batch():
    from verl_erc.erc.equations import positive_tokens
    from verl_erc.erc.losses import micro_batch_share, positive_nll

    log_prob = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0], [-4.0, -4.0, -4.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    reward = torch.tensor([1.0, 1.0, 0.999], dtype=torch.float64)  # exactly 1 counts; 0.999 (an overlong penalty) not
    positive = positive_tokens(mask, reward)
    assert positive.tolist() == [[True, True, True], [True, True, False], [False, False, False]]
    # token-mean over the 5 positive tokens; seq-mean-token-mean over the 2 positive responses
    assert positive_nll(log_prob, positive, "token-mean").item() == pytest.approx((1 + 2 + 3 + 0.5 + 0.5) / 5)
    assert positive_nll(log_prob, positive, "seq-mean-token-mean").item() == pytest.approx((2.0 + 0.5) / 2)
    none = positive_tokens(mask, torch.tensor([0.0, -1.0, -0.5], dtype=torch.float64))
    lp = log_prob.clone().requires_grad_(True)
    zero = positive_nll(lp, none, "token-mean")
    assert zero.item() == 0.0 and torch.autograd.grad(zero, lp)[0].abs().sum() == 0  # no positive: 0, no gradient
    # 4 rows of a mini-batch of 64 responses on 8 ranks: 4 / (64 / 8) = 0.5 of the rank's mini-batch
    assert micro_batch_share(4, 8, 64) == 0.5
