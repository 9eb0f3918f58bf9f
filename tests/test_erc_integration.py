"""ERC through verl's real engine code paths with a tiny Qwen2 on CPU.

The actor engine's own ``prepare_model_inputs`` / ``prepare_model_outputs`` (with our entropy
hook mixed in) run a real forward; the old-policy entropy comes from an "old" forward through
verl's ``calculate_entropy`` path, cut to response tokens with verl's ``response_from_nested``
exactly as the V1 trainer's old-log-prob pass does; then ``erc_ppo_loss`` and backward.
(FSDP wrapping, Ray and the trainer are covered by the CPU end-to-end test.)
"""


import pytest
import torch
from verl.trainer.ppo.core_algos import get_policy_loss_fn, kl_penalty, agg_loss
from verl.utils import tensordict_utils as tu
from verl.utils import torch_functional as verl_F
from verl.utils.metric import AggregationType, Metric
from verl.workers.utils.padding import no_padding_2_padding

from verl_erc.hooks.entropy_hook import ERC_ENTROPY_FLAG
from verl_erc.erc.equations import entropy_ratio, erc_keep_mask, gate_gradient
from verl_erc.erc.losses import ErcInputError, erc_ppo_loss

from helpers import (
    PROMPT_LENS,
    RESPONSE_LENS,
    forward,
    make_actor_config,
    make_batch,
    make_engine,
    nested,
    old_pass,
    perturb,
    tiny_qwen2,
)

LAYOUTS = [
    pytest.param(dict(use_remove_padding=True), id="no-padding-packed"),
    pytest.param(dict(use_remove_padding=True, pad_to_length=True), id="no-padding-packed-static-pad"),
    pytest.param(dict(use_remove_padding=False), id="no-padding-unpacked"),
]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_on_policy_ratio_is_exactly_one(layout):
    model = tiny_qwen2()
    engine = make_engine(model, pad_to_length=layout.get("pad_to_length", False))
    batch = make_batch(layout["use_remove_padding"])
    old_pass(engine, batch)
    out = forward(engine, batch, calculate_entropy=False, **{ERC_ENTROPY_FLAG: True})
    assert not out["erc_entropy"].values().requires_grad
    assert "entropy" not in out  # verl's graph-carrying entropy is not computed
    _, metrics = erc_ppo_loss(make_actor_config("vanilla"), out, batch)
    assert metrics["actor/erc_clipfrac"].aggregate() == 0.0
    assert metrics["actor/erc_ratio_min"].aggregate() == pytest.approx(1.0, abs=1e-6)
    assert metrics["actor/erc_ratio_max"].aggregate() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("loss_mode", ["vanilla", "gppo"])
def test_erc_update_gradients_match_reference(layout, loss_mode):
    model = tiny_qwen2()
    engine = make_engine(model, pad_to_length=layout.get("pad_to_length", False))
    batch = make_batch(layout["use_remove_padding"])
    old_pass(engine, batch)
    perturb(model)
    config = make_actor_config(loss_mode)

    # ERC as the plugin runs it
    out = forward(engine, batch, calculate_entropy=False, **{ERC_ENTROPY_FLAG: True})
    loss, metrics = erc_ppo_loss(config, out, batch)
    model.zero_grad()
    loss.backward()
    grads_erc = [p.grad.clone() for p in model.parameters()]

    # Reference: entropy from verl's own calculate_entropy path, mask by eq. 8-9, base loss on
    # gated log-probs, computed by hand on padded tensors
    out_ref = forward(engine, batch, calculate_entropy=True, **{ERC_ENTROPY_FLAG: False})
    assert "erc_entropy" not in out_ref
    torch.testing.assert_close(out["erc_entropy"].values(), out_ref["entropy"].values().detach(), rtol=1e-6, atol=1e-6)
    padded = batch.select("response_mask", "entropy", "old_log_probs", "advantages").to_padded_tensor()
    mask = padded["response_mask"].bool()
    new_h = no_padding_2_padding(out_ref["entropy"], batch).detach()
    keep = erc_keep_mask(entropy_ratio(new_h, padded["entropy"], 1e-6), 0.05, 0.05)
    log_prob = no_padding_2_padding(out_ref["log_probs"], batch)
    config.global_batch_info.update(dp_size=1, batch_num_tokens=sum(RESPONSE_LENS), global_batch_size=len(PROMPT_LENS))
    ref_loss, _ = get_policy_loss_fn(loss_mode)(
        old_log_prob=padded["old_log_probs"], log_prob=gate_gradient(log_prob, keep), advantages=padded["advantages"],
        response_mask=mask, loss_agg_mode="token-mean", config=config,
    )
    model.zero_grad()
    ref_loss.backward(retain_graph=True)  # the base-loss check below reuses this graph
    for g_erc, p in zip(grads_erc, model.parameters()):
        torch.testing.assert_close(g_erc, p.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss.detach(), ref_loss.detach(), rtol=1e-6, atol=1e-8)

    # the perturbation moved some tokens out of the band and left others in: the test has teeth
    frac = metrics["actor/erc_clipfrac"].aggregate()
    assert 0.1 < frac < 0.9, frac
    assert metrics["actor/erc_clipfrac_high"].aggregate() > 0 and metrics["actor/erc_clipfrac_low"].aggregate() > 0
    assert frac == pytest.approx(1 - keep[mask].float().mean().item())
    assert metrics["actor/erc_clipfrac"].aggregate() == pytest.approx(
        metrics["actor/erc_clipfrac_high"].aggregate() + metrics["actor/erc_clipfrac_low"].aggregate()
    )
    # and ERC changed the update relative to the base loss
    base_loss, _ = get_policy_loss_fn(loss_mode)(
        old_log_prob=padded["old_log_probs"], log_prob=log_prob, advantages=padded["advantages"],
        response_mask=mask, loss_agg_mode="token-mean", config=config,
    )
    model.zero_grad()
    base_loss.backward()
    assert any(not torch.allclose(g_erc, p.grad) for g_erc, p in zip(grads_erc, model.parameters()))


def test_kl_loss_gradient_is_not_gated():
    """eq. 9 gates the policy-gradient term only: the KL-loss term keeps its gradient on clipped tokens."""
    model = tiny_qwen2()
    engine = make_engine(model)
    batch = make_batch()
    old_pass(engine, batch)
    batch["ref_log_prob"] = batch["old_log_probs"].clone()
    perturb(model)
    config = make_actor_config("vanilla", use_kl_loss=True, kl_loss_coef=0.5, kl_loss_type="low_var_kl")

    out = forward(engine, batch, calculate_entropy=False, **{ERC_ENTROPY_FLAG: True})
    loss, _ = erc_ppo_loss(config, out, batch)
    model.zero_grad()
    loss.backward()
    grad_erc = model.lm_head.weight.grad.clone()

    out = forward(engine, batch, calculate_entropy=False, **{ERC_ENTROPY_FLAG: True})
    padded = batch.select("response_mask", "entropy", "old_log_probs", "advantages", "ref_log_prob").to_padded_tensor()
    mask = padded["response_mask"].bool()
    keep = erc_keep_mask(entropy_ratio(no_padding_2_padding(out["erc_entropy"], batch), padded["entropy"], 1e-6), 0.05, 0.05)
    assert (~keep & mask).any()
    log_prob = no_padding_2_padding(out["log_probs"], batch)
    info = dict(dp_size=1, batch_num_tokens=sum(RESPONSE_LENS), global_batch_size=len(PROMPT_LENS), loss_scale_factor=None)
    config.global_batch_info.update(info)
    pg, _ = get_policy_loss_fn("vanilla")(
        old_log_prob=padded["old_log_probs"], log_prob=gate_gradient(log_prob, keep), advantages=padded["advantages"],
        response_mask=mask, loss_agg_mode="token-mean", config=config,
    )
    kl = agg_loss(kl_penalty(log_prob, padded["ref_log_prob"], "low_var_kl"), mask, "token-mean", **info)
    model.zero_grad()
    (pg + 0.5 * kl).backward()
    torch.testing.assert_close(grad_erc, model.lm_head.weight.grad, rtol=1e-5, atol=1e-8)


def test_missing_inputs_fail_loudly():
    model = tiny_qwen2()
    engine = make_engine(model)
    batch = make_batch()
    old_pass(engine, batch)
    config = make_actor_config("vanilla")

    # the entropy hook did not run (flag not set, e.g. an engine without the mixin)
    out = forward(engine, batch, calculate_entropy=False)
    with pytest.raises(ErcInputError, match="current-policy entropy is missing"):
        erc_ppo_loss(config, out, batch)

    # the old-policy entropy is not in the update batch (legacy trainer, bypass mode)
    out = forward(engine, batch, calculate_entropy=False, **{ERC_ENTROPY_FLAG: True})
    del batch["entropy"]
    with pytest.raises(ErcInputError, match="old-policy entropy is missing"):
        erc_ppo_loss(config, out, batch)


def test_current_entropy_is_reused_when_verl_computes_it():
    """entropy_coeff != 0: verl's own current entropy (with graph) is reused, detached, not computed twice."""
    engine = make_engine(tiny_qwen2())
    batch = make_batch()
    old_pass(engine, batch)
    calls = []
    engine.compute_entropy_from_logits = lambda logits, **kw: calls.append(logits.shape) or verl_F.entropy_from_logits(logits)
    out = forward(engine, batch, calculate_entropy=True, **{ERC_ENTROPY_FLAG: True})
    assert len(calls) == 1  # verl's call only
    assert out["entropy"].values().requires_grad and not out["erc_entropy"].values().requires_grad
    assert out["erc_entropy"].values().data_ptr() == out["entropy"].values().data_ptr()  # the same storage


def off_policy_setup():
    """(model, engine, batch): the old-log-prob pass, then the policy moved (a later mini-batch)."""
    model = tiny_qwen2()
    engine = make_engine(model)
    batch = make_batch()
    old_pass(engine, batch)
    perturb(model)
    return model, engine, batch


def test_micro_batch_without_response_tokens_adds_nothing():
    """verl's padding samples (all-zero response_mask): no crash, zero loss and gradient, metrics unaffected."""
    model, engine, batch = off_policy_setup()
    batch["response_mask"] = nested([torch.zeros(n, dtype=torch.int64) for n in RESPONSE_LENS])
    out = forward(engine, batch, calculate_entropy=False, **{ERC_ENTROPY_FLAG: True})
    loss, metrics = erc_ppo_loss(make_actor_config("vanilla"), out, batch)
    model.zero_grad()
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    for key in ("actor/erc_clipfrac", "actor/erc_clipfrac_high", "actor/erc_clipfrac_low", "actor/erc_ratio_mean"):
        assert metrics[key].aggregation == AggregationType.SUM and metrics[key].aggregate() == 0.0
    assert metrics["actor/erc_ratio_min"].aggregate() == float("inf")
    assert metrics["actor/erc_ratio_max"].aggregate() == float("-inf")


def test_erc_fractions_are_token_weighted_over_micro_batches_and_dp_ranks():
    """Uneven micro-batches on 2 DP ranks: verl's aggregation of ERC's metrics gives exact token fractions."""
    _, engine, full = off_policy_setup()
    config = make_actor_config("vanilla")
    total = sum(RESPONSE_LENS)
    clipped = high = ratio_sum = 0.0
    per_rank = []
    for rank_rows in ([0], [1, 2, 3]):  # rank 0: one 6-token micro-batch; rank 1: 2 + 5 + 4 tokens in one
        micro = tu.index_select_tensor_dict(full, rank_rows)
        tu.assign_non_tensor(micro, dp_size=2, batch_num_tokens=total, global_batch_size=len(PROMPT_LENS))
        out = forward(engine, micro, calculate_entropy=False, **{ERC_ENTROPY_FLAG: True})
        _, metrics = erc_ppo_loss(config, out, micro)
        per_rank.append(metrics)
        padded = micro.select("response_mask", "entropy").to_padded_tensor()
        mask = padded["response_mask"].bool()
        rho = entropy_ratio(no_padding_2_padding(out["erc_entropy"], micro), padded["entropy"], 1e-6)[mask]
        keep = erc_keep_mask(rho, 0.05, 0.05)
        clipped += (~keep).sum().item()
        high += (rho >= 1.05).sum().item()
        ratio_sum += rho.sum().item()
    # verl's worker: Metric.aggregate_dp over ranks (one micro-batch each here)
    agg = {key: Metric.aggregate_dp([m[key] for m in per_rank]) for key in per_rank[0]}
    assert 0 < clipped < total
    assert agg["actor/erc_clipfrac"] == pytest.approx(clipped / total)
    assert agg["actor/erc_clipfrac_high"] == pytest.approx(high / total)
    assert agg["actor/erc_ratio_mean"] == pytest.approx(ratio_sum / total)


def erc_config(**kw):
    from verl_erc.config import ErcConfig

    return make_actor_config("vanilla", erc=ErcConfig(enable=True, beta_low=0.05, beta_high=0.05, **kw))


def test_entropy_atol_keeps_exactly_the_out_of_band_tokens_whose_entropy_barely_moved():
    """entropy_atol: keep = in band OR |H_new - H_old| <= atol; gradients equal the reference with that mask."""
    model, engine, batch = off_policy_setup()
    out = forward(engine, batch, calculate_entropy=False, **{ERC_ENTROPY_FLAG: True})
    padded = batch.select("response_mask", "entropy", "old_log_probs", "advantages").to_padded_tensor()
    mask = padded["response_mask"].bool()
    new_h = no_padding_2_padding(out["erc_entropy"], batch)
    band = erc_keep_mask(entropy_ratio(new_h, padded["entropy"], 1e-6), 0.05, 0.05)
    change = (new_h - padded["entropy"]).abs()
    atol = change[mask & ~band].median().item()  # keeps about half of the clipped tokens
    keep = band | (change <= atol)
    rescued = (mask & ~band & (change <= atol)).sum().item()
    assert 0 < rescued < (mask & ~band).sum().item()

    config = erc_config(entropy_atol=atol)
    loss, metrics = erc_ppo_loss(config, out, batch)
    model.zero_grad()
    loss.backward(retain_graph=True)  # the reference below reuses the forward's graph
    grads = [p.grad.clone() for p in model.parameters()]
    assert metrics["actor/erc_kept_by_atol"].aggregate() == pytest.approx(rescued / mask.sum().item())
    assert metrics["actor/erc_clipfrac"].aggregate() == pytest.approx(1 - keep[mask].float().mean().item())

    config.global_batch_info.update(dp_size=1, batch_num_tokens=sum(RESPONSE_LENS), global_batch_size=len(PROMPT_LENS))
    log_prob = no_padding_2_padding(out["log_probs"], batch)
    ref, _ = get_policy_loss_fn("vanilla")(
        old_log_prob=padded["old_log_probs"], log_prob=gate_gradient(log_prob, keep), advantages=padded["advantages"],
        response_mask=mask, loss_agg_mode="token-mean", config=config,
    )
    model.zero_grad()
    ref.backward()
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)


def test_default_atol_is_the_papers_indicator_and_reports_no_rescued_tokens():
    _, engine, batch = off_policy_setup()
    out = forward(engine, batch, calculate_entropy=False, **{ERC_ENTROPY_FLAG: True})
    _, metrics = erc_ppo_loss(make_actor_config("vanilla"), out, batch)
    assert metrics["actor/erc_kept_by_atol"].aggregate() == 0.0
    assert metrics["actor/erc_clipfrac"].aggregate() > 0


@pytest.mark.parametrize("which", ["old", "current"])
@pytest.mark.parametrize("value, match", [(float("nan"), "1 NaN"), (float("inf"), "1 inf"), (-0.01, "below -0.001")])
def test_a_non_finite_or_negative_entropy_fails_naming_the_pass(which, value, match):
    _, engine, batch = off_policy_setup()
    out = forward(engine, batch, calculate_entropy=False, **{ERC_ENTROPY_FLAG: True})
    target = batch["entropy"] if which == "old" else out["erc_entropy"]
    target.values()[3] = value
    with pytest.raises(ErcInputError, match=match) as err:
        erc_ppo_loss(make_actor_config("vanilla"), out, batch)
    assert ("old-log-prob" if which == "old" else "update's forward") in str(err.value)


def test_rounding_below_zero_is_clamped_and_counted():
    _, engine, batch = off_policy_setup()
    out = forward(engine, batch, calculate_entropy=False, **{ERC_ENTROPY_FLAG: True})
    batch["entropy"].values()[0] = -1e-7
    _, metrics = erc_ppo_loss(make_actor_config("vanilla"), out, batch)
    assert metrics["actor/erc_entropy_clamped"].aggregate() == pytest.approx(1 / sum(RESPONSE_LENS))


def test_ratio_clipped_mean_bounds_one_tokens_share():
    _, engine, batch = off_policy_setup()
    out = forward(engine, batch, calculate_entropy=False, **{ERC_ENTROPY_FLAG: True})
    batch["entropy"].values()[0] = 1e-9  # a ~0-entropy token: its plain ratio is huge
    _, metrics = erc_ppo_loss(make_actor_config("vanilla"), out, batch)
    assert metrics["actor/erc_ratio_mean"].aggregate() > 100
    assert metrics["actor/erc_ratio_clipped_mean"].aggregate() <= 2.0


def test_onpolicy_clipfrac_is_logged_on_the_steps_first_mini_batch_only():
    """The hook flags the mini-batch after verl's update_lr_scheduler one (and the first ever) as on-policy."""
    from verl_erc.hooks.entropy_hook import ErcEntropyMixin
    from verl_erc.erc.losses import ERC_ONPOLICY_FLAG
    import functools

    seen = []

    class Base:
        def forward_backward_batch(self, data, loss_function, forward_only=False):
            seen.append(tu.get_non_tensor_data(data=data, key=ERC_ONPOLICY_FLAG, default=None))

    class Engine(ErcEntropyMixin, Base):
        pass

    engine, loss = Engine(), functools.partial(erc_ppo_loss, config=make_actor_config("vanilla"))
    for step in range(2):
        for mini in range(3):  # verl: update_lr_scheduler on a step's last mini-batch
            data = make_batch()
            tu.assign_non_tensor(data, update_lr_scheduler=mini == 2)
            engine.forward_backward_batch(data, loss)
    assert seen == [True, False, False, True, False, False]

    _, engine2, batch = off_policy_setup()
    out = forward(engine2, batch, calculate_entropy=False, **{ERC_ENTROPY_FLAG: True})
    _, metrics = erc_ppo_loss(make_actor_config("vanilla"), out, batch)
    assert "actor/erc_clipfrac_onpolicy" not in metrics
    tu.assign_non_tensor(batch, **{ERC_ONPOLICY_FLAG: True})
    _, metrics = erc_ppo_loss(make_actor_config("vanilla"), out, batch)
    assert metrics["actor/erc_clipfrac_onpolicy"].aggregate() == metrics["actor/erc_clipfrac"].aggregate()


def test_onpolicy_maxdiffs_are_the_largest_response_token_differences_of_the_first_mini_batch():
    """actor/erc_onpolicy_{logprob,entropy}_maxdiff: max |old - new| over response tokens, MAX over micro-batches."""
    from verl_erc.erc.losses import ERC_ONPOLICY_FLAG
    from verl_erc.metrics import ONPOLICY_ENTROPY_MAXDIFF, ONPOLICY_LOGPROB_MAXDIFF

    _, engine, batch = off_policy_setup()
    out = forward(engine, batch, calculate_entropy=False, **{ERC_ENTROPY_FLAG: True})
    _, metrics = erc_ppo_loss(make_actor_config("vanilla"), out, batch)
    assert ONPOLICY_LOGPROB_MAXDIFF not in metrics and ONPOLICY_ENTROPY_MAXDIFF not in metrics  # not the first
    tu.assign_non_tensor(batch, **{ERC_ONPOLICY_FLAG: True})
    _, metrics = erc_ppo_loss(make_actor_config("vanilla"), out, batch)
    padded = batch.select("response_mask", "entropy", "old_log_probs").to_padded_tensor()
    mask = padded["response_mask"].bool()
    new_log_prob = no_padding_2_padding(out["log_probs"], batch).detach()
    new_entropy = no_padding_2_padding(out["erc_entropy"], batch)
    expected_lp = (padded["old_log_probs"] - new_log_prob).abs()[mask].max().item()
    expected_h = (padded["entropy"] - new_entropy).abs()[mask].max().item()
    assert expected_lp > 0 and expected_h > 0  # the policy moved: the test has teeth
    assert metrics[ONPOLICY_LOGPROB_MAXDIFF].aggregation == AggregationType.MAX
    assert metrics[ONPOLICY_LOGPROB_MAXDIFF].aggregate() == expected_lp
    assert metrics[ONPOLICY_ENTROPY_MAXDIFF].aggregate() == expected_h
    # a micro-batch without response tokens (verl's padding samples) reports 0, the neutral value of MAX
    batch["response_mask"] = nested([torch.zeros(n, dtype=torch.int64) for n in RESPONSE_LENS])
    _, metrics = erc_ppo_loss(make_actor_config("vanilla"), out, batch)
    assert metrics[ONPOLICY_LOGPROB_MAXDIFF].aggregate() == 0.0 == metrics[ONPOLICY_ENTROPY_MAXDIFF].aggregate()


@pytest.mark.parametrize("erc", [True, False], ids=["erc-on", "erc-off"])
def test_positive_nll_term_bypasses_the_ppo_clip_and_ercs_mask(erc):
    """positive_nll_coef: its gradient is coef x share x d(-mean log pi) on every token of a response rewarded
    exactly 1, clipped by PPO or by ERC or not, and nothing elsewhere; coef 0 changes nothing, bit for bit."""
    _, engine, batch = off_policy_setup()
    rewards = [1.0, 0.0, 1.0, -0.5]
    batch["rm_scores"] = nested([torch.cat([torch.zeros(n - 1), torch.tensor([r])]) for n, r in zip(RESPONSE_LENS, rewards)])
    out = forward(engine, batch, calculate_entropy=False, **{ERC_ENTROPY_FLAG: True})
    leaf = out["log_probs"].values().detach().requires_grad_(True)
    model_output = {**out, "log_probs": torch.nested.nested_tensor_from_jagged(leaf, out["log_probs"].offsets())}

    def grad(coef):
        config = make_actor_config("vanilla", erc=erc, positive_nll_coef=coef, clip_ratio_low=0.01, clip_ratio_high=0.01)
        loss, metrics = erc_ppo_loss(config, model_output, batch)
        return loss, torch.autograd.grad(loss, leaf)[0], metrics

    loss0, grad0, metrics0 = grad(0.0)
    loss1, grad1, metrics1 = grad(0.1)
    assert "actor/positive_nll" not in metrics0
    padded = batch.select("response_mask").to_padded_tensor()["response_mask"].bool()
    positive = padded & torch.tensor([r == 1.0 for r in rewards])[:, None]
    share = 1.0  # this micro-batch is its whole mini-batch on one rank (global_batch_size rows, dp_size 1)
    expected = torch.where(positive, -0.1 * share / positive.sum(), 0.0)
    diff = no_padding_2_padding(torch.nested.nested_tensor_from_jagged(grad1 - grad0, out["log_probs"].offsets()), batch)
    torch.testing.assert_close(diff[padded], expected[padded].float(), rtol=1e-5, atol=1e-8)
    log_prob = no_padding_2_padding(out["log_probs"], batch).detach()
    assert metrics1["actor/positive_nll"].aggregate() == pytest.approx(-log_prob[positive].mean().item(), rel=1e-6)
    assert loss1.item() == pytest.approx(loss0.item() + 0.1 * share * metrics1["actor/positive_nll"].aggregate(), rel=1e-5)
    # the term reached positive tokens the masks had cut off (no gradient without it): PPO's clip, and ERC's when on
    cut = no_padding_2_padding(torch.nested.nested_tensor_from_jagged(grad0, out["log_probs"].offsets()), batch) == 0
    assert (cut & positive).any()
    assert not erc or metrics1["actor/erc_clipfrac"].aggregate() > 0
    # coef 0: the loss without the key, bit for bit
    config = make_actor_config("vanilla", erc=erc, clip_ratio_low=0.01, clip_ratio_high=0.01)
    assert torch.equal(erc_ppo_loss(config, model_output, batch)[0], loss0)
