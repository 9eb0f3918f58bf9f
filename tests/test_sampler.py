"""The recipes' replay buffer: verl's sync sampling, with DAPO's generation bound honoured.

verl's own ``ReplayBuffer`` code runs unchanged over an in-memory TransferQueue (the three calls it
makes: ``kv_list``, ``kv_batch_get``, ``kv_clear``); rollouts finish at once with scores the test picks.
"""

from __future__ import annotations

import itertools

import pytest
from hydra import compose, initialize_config_module
from verl.trainer.ppo.v1 import replay_buffer as verl_replay_buffer
from verl.utils.import_utils import load_extern_type

from verl_erc.metrics import KEPT_PROMPTS, TRAINED_PROMPTS
from verl_erc.sampler import ALL_GENERATED, GENERATED_PROMPTS, SHORT_BY_PROMPTS, BoundedReplayBuffer, DynamicSamplingError

N = 4  # responses per prompt


class MemoryTransferQueue:
    """The TransferQueue calls verl's sync ReplayBuffer makes, over dicts."""

    def __init__(self):
        self.tags: dict[str, dict] = {}
        self.acc: dict[str, float] = {}

    def add_finished_group(self, uid: str, scores: list[float], step: int = 1):
        self.tags[uid] = {"is_prompt": True, "status": "finished", "global_steps": step}
        for i, score in enumerate(scores):
            key = f"{uid}_{i}_0"
            self.tags[key] = {"status": "finished"}
            self.acc[key] = score

    def kv_list(self, partition_id=None):
        return {"train": dict(self.tags)}

    def kv_batch_get(self, keys, partition_id, select_fields):
        return {"extra_fields": [{"reward_extra_info": {"acc": self.acc[key]}} for key in keys]}

    def kv_clear(self, partition_id, keys):
        for key in keys:
            self.tags.pop(key, None)
            self.acc.pop(key, None)


class LaggingTransferQueue(MemoryTransferQueue):
    """Groups in ``slow`` are still running for three polls after they were dispatched, the others finish at once."""

    def __init__(self, slow: set[str]):
        super().__init__()
        self.slow, self.polls = slow, {}

    def add_finished_group(self, uid: str, scores: list[float], step: int = 1):
        super().add_finished_group(uid, scores, step)
        self.tags[uid]["status"], self.polls[uid] = "running", 0

    def kv_list(self, partition_id=None):
        for uid, polls in self.polls.items():
            if uid in self.tags and polls >= (3 if uid in self.slow else 0):
                self.tags[uid]["status"] = "finished"
            self.polls[uid] = polls + 1
        return super().kv_list()


@pytest.fixture
def tq(monkeypatch):
    store = MemoryTransferQueue()
    monkeypatch.setattr(verl_replay_buffer, "tq", store)
    return store


def buffer(tq, scores_of, *, batch=4, max_num_gen_batches=2, one_round_prompts=None):
    """verl builds a custom sampler from the config (trainer_base._build_replay_buffer); refills go into ``tq``."""
    uids = (f"p{i}" for i in itertools.count())

    def refill(num_prompts):
        for _ in range(num_prompts):
            uid = next(uids)
            tq.add_finished_group(uid, scores_of(uid))
        return num_prompts

    filter_groups = {"enable": True, "metric": "acc", "max_num_gen_batches": max_num_gen_batches, "max_inflight_gen_batches": 1}
    sampler = BoundedReplayBuffer(
        trainer_mode="sync", trainer_config={}, max_off_policy_threshold=None, max_off_policy_strategy="drop",
        refill_fn=refill,
        sampler_kwargs={"poll_interval": 0.0, "filter_groups": filter_groups, "train_batch_size": batch,
                        "gen_batch_size": None, "sync_refill_failed_groups": False, "one_round_prompts": one_round_prompts},
    )
    refill(batch)  # the trainer dispatches the step's batch before it samples
    return sampler


def groups(batch_meta) -> set[str]:
    return {key.split("_")[0] for key in batch_meta.keys}


def test_the_recipes_use_it_through_verls_custom_sampler_hook():
    with initialize_config_module(config_module="verl_erc.hydra_conf", version_base=None):
        cfg = compose(config_name="dapo_7b", overrides=["actor_rollout_ref.model.path=/m", "data.train_files=/t",
                                                        "data.val_files=/v"])
    sampler = cfg.trainer.v1.sampler
    assert load_extern_type(sampler.custom_sampler.path, sampler.custom_sampler.name) is BoundedReplayBuffer
    assert sampler.sampler_kwargs.filter_groups.max_num_gen_batches == 2 == cfg.algorithm.filter_groups.max_num_gen_batches
    assert (sampler.sampler_kwargs.train_batch_size, sampler.sampler_kwargs.poll_interval) == (128, 2.0)


def test_mixed_groups_fill_the_batch_as_in_verl(tq):
    alike = {"p1", "p4"}  # two groups score alike: evicted, refilled by verl's loop within the bound
    sampler = buffer(tq, lambda uid: [1.0] * N if uid in alike else [0.0, 1.0, 0.0, 0.0])
    batch, metrics = sampler.sample(global_steps=1, partition_id="train", batch_size=4)
    assert len(groups(batch)) == 4 and not groups(batch) & alike
    assert metrics["training/filter_groups/evicted_samples"] == 2
    assert metrics[GENERATED_PROMPTS] <= 8 and SHORT_BY_PROMPTS not in metrics
    # verl's critic/score/mean would be over the kept groups, 0.25 each; every generated response: 4 kept groups
    # of 1 right in 4, and the 2 dropped groups all right: (4 + 8) / 24
    assert metrics[ALL_GENERATED] == pytest.approx(12 / 24)


def test_at_the_bound_the_step_trains_on_the_groups_that_survived(tq, capsys):
    survivors = {"p0", "p5"}
    sampler = buffer(tq, lambda uid: [0.0, 1.0, 1.0, 0.0] if uid in survivors else [0.0] * N)
    batch, metrics = sampler.sample(global_steps=3, partition_id="train", batch_size=4)
    assert groups(batch) == survivors
    assert metrics[GENERATED_PROMPTS] == 8 and metrics[SHORT_BY_PROMPTS] == 2  # 2 batches of 4 prompts, no more
    assert metrics["training/filter_groups/evicted_samples"] == 6
    assert metrics[ALL_GENERATED] == pytest.approx(4 / 32)  # 2 kept groups of 2 right in 4; 6 dropped, all wrong
    assert "2 groups survived the filter; training on 2 of 4" in capsys.readouterr().out
    assert (metrics[KEPT_PROMPTS], metrics[TRAINED_PROMPTS]) == (2, 2)


def test_a_reward_that_never_varies_stops_the_run_naming_the_score(tq):
    sampler = buffer(tq, lambda uid: [0.0] * N, max_num_gen_batches=3)
    with pytest.raises(DynamicSamplingError) as error:
        sampler.sample(global_steps=1, partition_id="train", batch_size=4)
    message = str(error.value)
    assert "in 3 generation batches (12 prompts, algorithm.filter_groups.max_num_gen_batches=3)" in message
    assert "the 12 groups scored alike: 0 (12 groups)" in message and "contain \\boxed{}" in message


def test_no_bound_is_verls_endless_refill(tq):
    calls = itertools.count()
    sampler = buffer(tq, lambda uid: [0.0] * N if next(calls) < 40 else [0.0, 1.0, 0.0, 1.0], max_num_gen_batches=0)
    batch, metrics = sampler.sample(global_steps=1, partition_id="train", batch_size=4)
    assert len(groups(batch)) == 4 and metrics[GENERATED_PROMPTS] > 40


def test_groups_finishing_after_the_bound_beyond_the_batch_are_discarded_not_left_for_the_next_step(monkeypatch):
    """At the bound the prompts in flight finish; if more groups survive than the batch takes, the rest would be
    trained on at the next step, generated by the weights before the update: verl's sync sampling discards them."""
    tq = LaggingTransferQueue(slow={"p0", "p2", "p7", "p8"})
    monkeypatch.setattr(verl_replay_buffer, "tq", tq)
    alike = {"p3", "p4", "p6"}
    sampler = buffer(tq, lambda uid: [1.0] * N if uid in alike else [0.0, 1.0, 0.0, 0.0])
    batch, metrics = sampler.sample(global_steps=1, partition_id="train", batch_size=4)
    assert len(groups(batch)) == 4 and metrics[GENERATED_PROMPTS] == 8 and metrics[SHORT_BY_PROMPTS] == 0
    assert metrics["training/filter_groups/discarded_surplus_samples"] == 1
    assert not [uid for uid, tag in tq.tags.items() if tag.get("is_prompt")]  # nothing carried into step 2


def test_one_round_generates_the_round_at_once_then_trains_on_survivors_up_to_the_batch(monkeypatch, capsys):
    """The official recipes' regime: 2x the batch generated at once, no refill; survivors up to the batch, whole
    groups, drawn regardless of finishing order (the slow groups are among those trained on)."""
    tq = LaggingTransferQueue(slow={"p1", "p6"})
    monkeypatch.setattr(verl_replay_buffer, "tq", tq)
    alike = {"p2", "p5"}
    sampler = buffer(tq, lambda uid: [1.0] * N if uid in alike else [0.0, 1.0, 0.0, 0.0], one_round_prompts=8,
                     max_num_gen_batches=1)
    batch, metrics = sampler.sample(global_steps=1, partition_id="train", batch_size=4)
    assert len(groups(batch)) == 4 and not groups(batch) & alike
    assert (metrics[GENERATED_PROMPTS], metrics[KEPT_PROMPTS], metrics[TRAINED_PROMPTS]) == (8, 6, 4)
    assert metrics["training/filter_groups/discarded_surplus_samples"] == 2  # survivors beyond the batch: not kept
    assert metrics[SHORT_BY_PROMPTS] == 0
    assert "one round of 8 prompts" in capsys.readouterr().out
    assert not [uid for uid, tag in tq.tags.items() if tag.get("is_prompt")]


def test_one_round_trains_on_fewer_when_fewer_survive_and_never_refills(tq):
    survivors = {"p0", "p6"}
    sampler = buffer(tq, lambda uid: [0.0, 1.0, 1.0, 0.0] if uid in survivors else [0.0] * N, one_round_prompts=8,
                     max_num_gen_batches=1)
    batch, metrics = sampler.sample(global_steps=1, partition_id="train", batch_size=4)
    assert groups(batch) == survivors
    assert (metrics[GENERATED_PROMPTS], metrics[KEPT_PROMPTS], metrics[TRAINED_PROMPTS], metrics[SHORT_BY_PROMPTS]) == (8, 2, 2, 2)


@pytest.mark.parametrize("one_round, max_batches, named", [(2, 1, "must be >= data.train_batch_size=4"),
                                                           (8, 2, r"max_num_gen_batches=1 \(got 2\)")])
def test_one_round_refuses_a_round_smaller_than_the_batch_or_refills(tq, one_round, max_batches, named):
    with pytest.raises(ValueError, match=named):
        buffer(tq, lambda uid: [0.0] * N, one_round_prompts=one_round, max_num_gen_batches=max_batches)
