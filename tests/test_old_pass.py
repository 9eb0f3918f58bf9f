"""The aligned old pass (``erc.old_pass=aligned``): the old-policy pass on the update's own micro-batches.

The engine checks run verl's real actor ``TrainingWorker`` (FSDP2, bf16, gloo ranks in child processes) with a
Linear whose reduction order depends on the micro-batch's token count, as a GPU GEMM's kernel choice does
(``old_pass_script.py``): with verl's packing the step's first mini-batch, at theta = theta_old, shows log-prob
and entropy differences and clipped tokens; aligned, all three are exactly 0, and the later mini-batches still
clip (ERC still acts on policy drift).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from omegaconf import open_dict
from verl.trainer.ppo.v1.trainer_base import PPOTrainer

from verl_erc.config import ErcConfigError
from verl_erc.hooks.old_pass import ALIGNED_OLD_PASS_KEY, restore_order, update_order, update_split
from verl_erc.hooks.trainer import ErcTrainerMixin, validate_erc_config

from cpu_subprocess import run_cpu_ranks
from helpers import OLD_PASS_SCRIPT, compose_erc


def compose_erc_on(overrides=()):
    return compose_erc(["actor_rollout_ref.actor.erc.enable=true", *overrides])


def test_update_split_is_what_verls_update_actor_sends():
    """The split handed to the old pass is read off the config as verl's own _update_actor reads it."""
    config = compose_erc_on(["actor_rollout_ref.actor.ppo_mini_batch_size=4", "actor_rollout_ref.rollout.n=3",
                          "actor_rollout_ref.actor.data_loader_seed=7", "actor_rollout_ref.actor.shuffle=true",
                          "actor_rollout_ref.actor.entropy_coeff=0.01", "actor_rollout_ref.actor.erc.entropy_chunk_size=64"])
    sent = {}

    class ActorGroup:
        def update_actor(self, batch):
            sent.update(batch.extra_info)
            return {"metrics": {"mfu": 0.0}}

    PPOTrainer._update_actor(SimpleNamespace(config=config, actor_rollout_wg=ActorGroup()),
                             SimpleNamespace(extra_info={}), metrics={})
    split = update_split(config, 64)
    assert split == {"mini_batch_size": sent["mini_batch_size"], "seed": sent["seed"],
                     "shuffle": sent["dataloader_kwargs"]["shuffle"], "calculate_entropy": sent["calculate_entropy"],
                     "entropy_chunk_size": 64}
    assert (split["mini_batch_size"], split["seed"], split["shuffle"], split["calculate_entropy"]) == (12, 7, True, True)
    assert sent["epochs"] == 1  # the split is the first epoch's; later epochs: see the refusal below


def test_aligned_refuses_what_would_silently_not_align():
    ok = compose_erc_on(["actor_rollout_ref.actor.ppo_epochs=2", "actor_rollout_ref.actor.shuffle=false"])
    assert validate_erc_config(ok).erc.old_pass == "aligned"  # every epoch reuses the first epoch's split
    reshuffled = ["actor_rollout_ref.actor.ppo_epochs=2", "actor_rollout_ref.actor.shuffle=true"]
    with pytest.raises(ErcConfigError, match="ppo_epochs=2 and shuffle=true"):
        validate_erc_config(compose_erc_on(reshuffled))
    assert validate_erc_config(compose_erc_on([*reshuffled, "actor_rollout_ref.actor.erc.old_pass=verl"]))
    with pytest.raises(Exception, match="old_pass must be one of aligned, verl"):  # raised in the conversion
        validate_erc_config(compose_erc_on(["actor_rollout_ref.actor.erc.old_pass=update"]))


def test_update_order_and_restore_order():
    order = update_order(12, 4, seed=3, shuffle=True)
    assert [len(rows) for rows in order] == [4, 4, 4]
    assert sorted(torch.cat(order).tolist()) == list(range(12)) and torch.cat(order).tolist() != list(range(12))
    assert [rows.tolist() for rows in update_order(12, 4, seed=3, shuffle=False)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    # per-row results computed in mini-batch order come back in the batch's order, jagged rows intact
    rows = [torch.arange(i + 1, dtype=torch.float) + 100 * i for i in range(12)]
    parts = [torch.nested.as_nested_tensor([rows[i] for i in mini.tolist()], layout=torch.jagged) for mini in order]
    restored = restore_order(parts, order)
    assert all(torch.equal(a, b) for a, b in zip(restored.unbind(), rows))


def test_trainer_hands_the_split_to_the_actors_old_pass_only():
    seen = []

    class Verl:
        def _compute_old_log_prob(self, batch, metrics):
            seen.append(dict(batch.extra_info))
            return SimpleNamespace(extra_info=dict(batch.extra_info))

    class Trainer(ErcTrainerMixin, Verl):
        pass

    # ERC given on verl's own entry point: the erc node holds only the keys set (+...erc.enable=true), the
    # defaults are the dataclass's (the trainer's _erc_actor_config)
    config = compose_erc_on()
    with open_dict(config):
        config.actor_rollout_ref.actor.erc = {"_target_": "verl_erc.config.ErcConfig", "enable": True}
    for old_pass in ("aligned", "verl"):
        trainer = object.__new__(Trainer)
        trainer.config = config
        trainer._erc_actor_config = SimpleNamespace(erc=SimpleNamespace(enable=True, old_pass=old_pass, entropy_chunk_size=256))
        batch = SimpleNamespace(extra_info={"temperature": 1.0})
        result = trainer._compute_old_log_prob(batch, {})
        assert ALIGNED_OLD_PASS_KEY not in batch.extra_info and ALIGNED_OLD_PASS_KEY not in result.extra_info
    assert seen[0][ALIGNED_OLD_PASS_KEY] == update_split(config, 256) and ALIGNED_OLD_PASS_KEY not in seen[1]


def cases(**common):
    return {f"{layout}-{old_pass}": dict(old_pass=old_pass, dynamic=layout == "dynamic", mini_batches=4, **common)
            for layout in ("dynamic", "fixed") for old_pass in ("verl", "aligned")}


#: the fp32 run whose passes and update the sequence-parallel layout must reproduce
FP32 = dict(old_pass="verl", dynamic=True, shuffle=False, mini_batches=4, dtype="fp32", kernel="native")
#: launch -> (ranks, cases): one rank; two data-parallel ranks, shuffled; two sequence-parallel ranks (the 7B layout)
LAUNCHES = {
    "1-rank": (1, {**cases(shuffle=False), "fp32": FP32}),
    "2-dp-ranks-shuffled": (2, cases(shuffle=True)),
    "ulysses-sp2": (2, {**{name: dict(case, sp=2) for name, case in cases(shuffle=True).items()},
                        "fp32": dict(FP32, sp=2)}),
}


@pytest.fixture(scope="module")
def launched(rehearsal_cache):
    results = {}

    def get(launch: str) -> dict:
        if launch not in results:
            world, launch_cases = LAUNCHES[launch]
            results[launch] = run_cpu_ranks(OLD_PASS_SCRIPT, world, env={"VERL_ERC_CACHE_DIR": str(rehearsal_cache),
                                                               "CASES": json.dumps(launch_cases)})
        return results[launch]

    return get


@pytest.mark.process
@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_aligned_old_pass_agrees_bit_for_bit_at_theta_old(launched, launch):
    results = launched(launch)
    for name in cases():
        m = results[name]["update"]
        first = (m["erc_onpolicy_logprob_maxdiff"][0], m["erc_onpolicy_entropy_maxdiff"][0], m["erc_clipfrac_onpolicy"][0])
        if name.endswith("-aligned"):
            assert first == (0.0, 0.0, 0.0) and m["ppo_kl"][0] == 0.0, (name, m)
        else:  # verl's packing: rounding differences at theta = theta_old, and ERC clips them
            assert all(value > 0 for value in first), (name, m)
        # the later mini-batches, after updates, clip: ERC still acts
        assert len(m["erc_clipfrac"]) == 4 and all(frac > 0.05 for frac in m["erc_clipfrac"][1:]), (name, m)


def max_abs_diff(a: list, b: list) -> float:
    return max(abs(x - y) for row_a, row_b in zip(a, b, strict=True) for x, y in zip(row_a, row_b, strict=True))


@pytest.mark.process
def test_ulysses_sp2_computes_what_one_rank_computes(launched):
    """fp32, the CPU's own kernels, verl's packing: the 7B layout (SP 2) against one rank, same weights and batch."""
    one, sp2 = launched("1-rank")["fp32"], launched("ulysses-sp2")["fp32"]
    assert any(sp2["sp_pads"]) and not any(one["sp_pads"])  # packed micro-batches of odd length: Ulysses padded them
    for field in ("log_probs", "entropy", "erc_entropy"):  # the old pass's, and the entropy hook's through verl's gather
        assert max_abs_diff(one["old"][field], sp2["old"][field]) < 1e-4, field
    for key in ("pg_loss", "grad_norm"):  # the loss's token normaliser over the SP ranks, and its gradient
        assert sp2["update"][key] == pytest.approx(one["update"][key], rel=1e-4), key
    for result in (one, sp2):  # theta = theta_old: no on-policy clipping, the passes agree to fp32 rounding
        m = result["update"]
        assert m["erc_clipfrac_onpolicy"] == [0.0] and abs(m["ppo_kl"][0]) < 1e-6, m
        assert m["erc_onpolicy_logprob_maxdiff"][0] < 1e-4 and m["erc_onpolicy_entropy_maxdiff"][0] < 1e-4, m


def test_packed_causal_mask_restarts_at_each_sequence():
    from verl_erc.cpu.attention import packed_causal_mask

    mask = packed_causal_mask(torch.tensor([[0, 1, 2, 0, 1, 0]]))[0, 0]  # sequences of 3 and 2, and a 1-token pad
    expected = torch.zeros(6, 6, dtype=torch.bool)
    for start, end in ((0, 3), (3, 5), (5, 6)):
        expected[start:end, start:end] = torch.ones(end - start, end - start).tril().bool()
    assert torch.equal(mask, expected)
