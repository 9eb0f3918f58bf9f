"""ERC token analysis: record_tokens on a real policy step of a tiny Qwen2, and python -m verl_erc.analyze."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from pngcheck import assert_real_png
from transformers import Qwen2Config, Qwen2ForCausalLM
from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla
from verl.utils.torch_functional import entropy_from_logits, logprobs_from_logits

from verl_erc.erc import token_analysis as analysis
from verl_erc.erc.token_analysis import RECORD_FIELDS, record_tokens
from verl_erc.analyze import FIGURES, main
from verl_erc.config import ErcAnalysisConfig, ErcConfig
from verl_erc.erc.entropy import entropy_no_grad
from verl_erc.hooks.entropy_hook import ERC_ENTROPY_FLAG
from verl_erc.erc.equations import entropy_ratio, erc_keep_mask
from verl_erc.erc.losses import erc_ppo_loss

from helpers import RESPONSE_LENS, forward, make_actor_config, make_batch, make_engine, old_pass, perturb, tiny_qwen2

BATCH, PROMPT, RESPONSE, VOCAB = 4, 5, 12, 64
CLIP_LOW, CLIP_HIGH, BETA_LOW, BETA_HIGH, EPS = 0.2, 0.28, 0.05, 0.05, 1e-6


@pytest.fixture(scope="module")
def step():
    """Old and current policy on the same sampled responses: a tiny random Qwen2 before and after one
    policy-gradient step; everything the ERC loss hands to record_tokens, plus the raw logits."""
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.3,  # peaked distributions, so entropies move both ways
    )
    model = Qwen2ForCausalLM(config)
    input_ids = torch.randint(0, VOCAB, (BATCH, PROMPT + RESPONSE))
    labels = input_ids[:, PROMPT:]
    response_mask = torch.ones(BATCH, RESPONSE, dtype=torch.bool)
    response_mask[2, 8:] = False  # a shorter response, right-padded

    def response_logits():
        return model(input_ids=input_ids).logits[:, PROMPT - 1 : -1]

    with torch.no_grad():
        old_logits = response_logits()
    old_log_prob = logprobs_from_logits(old_logits, labels)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None].expand(BATCH, RESPONSE).contiguous()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03)
    (-(advantages * logprobs_from_logits(response_logits(), labels))[response_mask].mean()).backward()
    optimizer.step()
    optimizer.zero_grad()

    new_logits = response_logits()
    old_entropy = entropy_from_logits(old_logits)
    new_entropy = entropy_no_grad(new_logits)
    rho = entropy_ratio(new_entropy, old_entropy, EPS)
    return {
        "inputs": dict(
            log_prob=logprobs_from_logits(new_logits, labels),  # has a graph, like the loss's
            old_log_prob=old_log_prob,
            advantages=advantages,
            old_entropy=old_entropy,
            new_entropy=new_entropy,
            entropy_ratio=rho,
            keep=erc_keep_mask(rho, BETA_LOW, BETA_HIGH),
            response_mask=response_mask,
            clip_ratio_low=CLIP_LOW,
            clip_ratio_high=CLIP_HIGH,
            beta_low=BETA_LOW,
            beta_high=BETA_HIGH,
        ),
        "old_logits": old_logits,
        "new_logits": new_logits.detach(),
        "labels": labels,
    }


def _config(tmp_path, **kw) -> ErcAnalysisConfig:
    return ErcAnalysisConfig(enable=True, path=str(tmp_path / "tokens_{rank}.jsonl"), **kw)


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _by_hand(logits: torch.Tensor, token: int) -> tuple[float, float]:
    """(probability of ``token``, entropy) of one row of logits, from the softmax definition."""
    p = torch.softmax(logits.double(), dim=-1)
    return p[token].item(), -(p * p.log()).sum().item()


def test_every_valid_token_recorded_with_hand_checked_fields(step, tmp_path):
    cfg = _config(tmp_path, max_tokens=10_000)
    record_tokens(cfg, **step["inputs"])
    records = _records(tmp_path / "tokens_0.jsonl")  # {rank} -> 0 without torch.distributed
    mask = step["inputs"]["response_mask"]
    assert sorted((r["row"], r["pos"]) for r in records) == [tuple(ix) for ix in mask.nonzero().tolist()]
    for r in records:
        assert list(r) == list(RECORD_FIELDS)
        row, pos = r["row"], r["pos"]
        token = step["labels"][row, pos].item()
        p_old, h_old = _by_hand(step["old_logits"][row, pos], token)
        p_new, h_new = _by_hand(step["new_logits"][row, pos], token)
        a = step["inputs"]["advantages"][row, pos].item()
        assert r["update"] == 0 and r["advantage"] == a
        for key, value in (("p_old", p_old), ("p_new", p_new), ("entropy_old", h_old), ("entropy_new", h_new)):
            assert math.isclose(r[key], value, rel_tol=1e-4), (key, r[key], value)
        ratio, rho = p_new / p_old, (h_new + EPS) / (h_old + EPS)
        assert math.isclose(r["ratio"], ratio, rel_tol=1e-4) and math.isclose(r["entropy_ratio"], rho, rel_tol=1e-4)
        assert r["ppo_clipped"] == ((a > 0 and ratio > 1 + CLIP_HIGH) or (a < 0 and ratio < 1 - CLIP_LOW))
        assert r["erc_clip_high"] == (rho >= 1 + BETA_HIGH)
        assert r["erc_clip_low"] == (rho <= 1 - BETA_LOW)
        assert (r["clip_ratio_low"], r["clip_ratio_high"], r["beta_low"], r["beta_high"]) == (
            CLIP_LOW, CLIP_HIGH, BETA_LOW, BETA_HIGH,
        )
    # the step exercises every region, and the PPO-clip flag agrees with verl's own clip fraction
    assert all(any(r[k] for r in records) for k in ("ppo_clipped", "erc_clip_high", "erc_clip_low"))
    assert any(not (r["ppo_clipped"] or r["erc_clip_high"] or r["erc_clip_low"]) for r in records)
    inputs = step["inputs"]
    _, metrics = compute_policy_loss_vanilla(
        old_log_prob=inputs["old_log_prob"],
        log_prob=inputs["log_prob"],
        advantages=inputs["advantages"],
        response_mask=mask,
        config=make_actor_config(clip_ratio_low=CLIP_LOW, clip_ratio_high=CLIP_HIGH),
    )
    ppo_clipfrac = sum(r["ppo_clipped"] for r in records) / len(records)
    assert math.isclose(ppo_clipfrac, metrics["actor/pg_clipfrac"], rel_tol=1e-6)


def test_records_agree_with_the_erc_loss_metrics(tmp_path):
    """Called by erc_ppo_loss itself on verl's engine path (helpers of test_erc_integration)."""

    model = tiny_qwen2()
    engine = make_engine(model)
    batch = make_batch()
    old_pass(engine, batch)
    perturb(model)
    analysis_cfg = ErcAnalysisConfig(enable=True, path=str(tmp_path / "tokens_{rank}.jsonl"), max_tokens=10_000)
    config = dataclasses.replace(make_actor_config("vanilla"), erc=ErcConfig(enable=True, analysis=analysis_cfg))
    out = forward(engine, batch, calculate_entropy=False, **{ERC_ENTROPY_FLAG: True})
    _, metrics = erc_ppo_loss(config, out, batch)
    records = _records(tmp_path / "tokens_0.jsonl")
    assert len(records) == sum(RESPONSE_LENS)
    for metric, field in (
        ("actor/erc_clipfrac_high", "erc_clip_high"),
        ("actor/erc_clipfrac_low", "erc_clip_low"),
        ("actor/pg_clipfrac", "ppo_clipped"),
    ):
        fraction = sum(r[field] for r in records) / len(records)
        assert fraction == pytest.approx(metrics[metric].aggregate()), metric
    assert any(r["erc_clip_high"] for r in records) and any(r["erc_clip_low"] for r in records)


def test_sampling_every_n_updates_bounded_by_max_records(step, tmp_path, monkeypatch):
    cfg = _config(tmp_path, every_n_updates=3, max_tokens=5, max_records=12)
    for _ in range(8):  # updates 0..7: 0, 3, 6 are sampled; the third is cut to 12 - 10 = 2 records
        record_tokens(cfg, **step["inputs"])
    path = tmp_path / "tokens_0.jsonl"
    records = _records(path)
    assert [r["update"] for r in records] == [0] * 5 + [3] * 5 + [6] * 2
    mask = step["inputs"]["response_mask"]
    assert all(mask[r["row"], r["pos"]] for r in records)
    assert len({(r["row"], r["pos"]) for r in records if r["update"] == 0}) == 5
    # a restarted process counts the lines already in the file
    monkeypatch.setattr(analysis, "_STATE", {})
    record_tokens(cfg, **step["inputs"])
    assert len(_records(path)) == 12
    monkeypatch.setattr(analysis, "_STATE", {})
    record_tokens(_config(tmp_path, max_tokens=5, max_records=15), **step["inputs"])
    assert [r["update"] for r in _records(path)[12:]] == [0, 0, 0]


def test_no_effect_on_training(step, tmp_path):
    inputs = step["inputs"]
    leaf = inputs["log_prob"].detach().clone().requires_grad_(True)

    def grad(record: bool) -> torch.Tensor:
        log_prob = leaf * 1.0
        if record:
            record_tokens(_config(tmp_path, max_tokens=3), **(inputs | {"log_prob": log_prob}))
        ratio = torch.exp(log_prob - inputs["old_log_prob"])
        (-(inputs["advantages"] * ratio)[inputs["response_mask"]].mean()).backward()
        g, leaf.grad = leaf.grad.clone(), None
        return g

    rng = torch.get_rng_state()
    assert torch.equal(grad(record=False), grad(record=True))
    assert torch.equal(torch.get_rng_state(), rng)  # sampling used its own generator
    off = ErcAnalysisConfig(enable=False, path=str(tmp_path / "off.jsonl"))
    record_tokens(off, **inputs)
    assert not (tmp_path / "off.jsonl").exists()


def test_shape_mismatch_is_a_clear_error(step, tmp_path):
    inputs = step["inputs"] | {"keep": step["inputs"]["keep"][:, :3]}
    with pytest.raises(ValueError, match="keep has shape"):
        record_tokens(_config(tmp_path), **inputs)


def test_analyze_draws_the_papers_figures(step, tmp_path, capsys):
    record_tokens(_config(tmp_path / "run" / "erc_tokens", max_tokens=10_000), **step["inputs"])
    n_tokens = int(step["inputs"]["response_mask"].sum())
    out = tmp_path / "figures"
    assert main([str(tmp_path / "run"), "--out", str(out)]) == 0
    for filename in FIGURES:
        assert_real_png(out / filename)
    md = (out / "analysis.md").read_text()
    assert f"{n_tokens} tokens from 1 sampled updates" in md
    empty = tmp_path / "no_records"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main([str(empty), "--out", str(out)])
    assert exit_info.value.code == 2 and "no_records" in capsys.readouterr().err
