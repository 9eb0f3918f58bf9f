"""verl's sync replay buffer with DAPO's generation bound honoured: a step stops generating, never spins.

verl 0.9.1's V1 ``ReplayBuffer`` refills the groups DAPO's dynamic sampling drops (all responses of
a prompt alike on ``algorithm.filter_groups.metric``) until the batch is full, with no bound: it
ignores ``algorithm.filter_groups.max_num_gen_batches`` (and logs so). A reward that never varies
(no ``\\boxed{}`` in the responses, a broken reward mapping) then generates forever.

:class:`BoundedReplayBuffer` is verl's class, plugged in through verl's own hook
(``trainer.v1.sampler.custom_sampler``, see ``hydra_conf/paper_base.yaml``), that honours the key in
verl 0.5's terms: a step generates at most ``max_num_gen_batches`` generation batches of
``data.train_batch_size`` prompts (the step's batch and its refills; 0 = no bound, verl's
behaviour). verl's own sampling runs until a refill would pass the bound; then the prompts in
flight finish and the step trains on the groups that survived the filter, at most its batch (a
surplus is discarded, as verl's sync sampling does; verl pads the batch to whole mini-batches), as
the official ERC recipes do (they generate twice the batch once and train
on the survivors). If no group survived, it raises :class:`DynamicSamplingError` naming the values
every group shared. ``poll_interval`` (verl: 2 s) comes from ``sampler_kwargs`` too; verl's
contract for custom samplers passes no DAPO settings, so ``sampler_kwargs`` carries the same keys
verl reads for its own buffer, interpolated in the config.

``sampler_kwargs.one_round_prompts`` (default null) switches to the official ERC recipes' regime
(verl 0.5's DAPO trainer with ``gen_batch_size=256``, ``max_num_gen_batches=1``): each step generates
that many prompts at once, waits for all of them, and trains on the groups the filter kept, up to
``data.train_batch_size``, and on fewer when fewer survived; it never refills. The groups trained on
are drawn among the survivors regardless of when they finished (verl's selection, not the first to
finish: that would favour short responses); whole groups only, where the official code cuts the kept
responses to a multiple of the world size (which, with 8 responses per prompt on 64 GPUs, drops up to
7 whole groups and never splits one). It needs ``max_num_gen_batches: 1`` (one round).

Every training step also logs :data:`ALL_GENERATED`, the filter metric's mean over *every* response
the step generated, kept or dropped (:func:`all_generated_mean`): verl's ``critic/score/mean`` is
over the kept groups only, which DAPO keeps because they are neither all right nor all wrong.
"""

from __future__ import annotations

import time
from collections import Counter

from verl.trainer.ppo.v1 import replay_buffer as verl_replay_buffer
from verl.trainer.ppo.v1.replay_buffer import (
    DAPO_FILTERED_REWARD_COUNTS_KEY,
    FILTER_GROUPS_REWARD_METRIC,
    ReplayBuffer,
    _accumulate_eviction_metrics,
)

from verl_erc.metrics import ALL_GENERATED, GENERATED_PROMPTS, KEPT_PROMPTS, SHORT_BY_PROMPTS, TRAINED_PROMPTS



def all_generated_mean(kept: list[float], dropped: dict[float, int], group_size: int) -> float:
    """The mean of the filter metric over a step's kept responses (``kept``) and the groups DAPO dropped.

    ``dropped`` is verl's ``{shared value: number of groups}`` of the dropped groups, each of ``group_size``
    responses. The kept groups alone are mixed: with a 0/1 metric their mean lies in [1/n, (n-1)/n]
    for groups of n, whatever the model's accuracy.
    """
    total = sum(kept) + group_size * sum(value * count for value, count in dropped.items())
    return total / (len(kept) + group_size * sum(dropped.values()))


class DynamicSamplingError(RuntimeError):
    """DAPO's dynamic sampling found no group to train on within ``max_num_gen_batches`` generation batches."""


class _BoundReached(Exception):
    """Raised from the refill hook inside verl's sampling loop: the step may dispatch no more prompts."""


class BoundedReplayBuffer(ReplayBuffer):
    """verl's sync ``ReplayBuffer`` with ``filter_groups.max_num_gen_batches`` and ``poll_interval`` honoured."""

    def __init__(self, *, trainer_mode: str, sampler_kwargs, refill_fn=None, **kwargs):
        if trainer_mode != "sync":
            raise ValueError(
                f"{type(self).__name__} is verl's sync replay buffer; trainer.v1.trainer_mode={trainer_mode} needs "
                "verl's own: set trainer.v1.sampler.custom_sampler=null"
            )
        filter_groups = sampler_kwargs["filter_groups"]
        metric = filter_groups["metric"] if filter_groups["enable"] else None
        if filter_groups["enable"] and not metric:
            raise ValueError("algorithm.filter_groups.metric must be set when group filtering is enabled")
        refill_failed = bool(sampler_kwargs["sync_refill_failed_groups"])
        train_batch_size = int(sampler_kwargs["train_batch_size"])
        self.max_num_gen_batches = int(filter_groups.get("max_num_gen_batches") or 0) if metric else 0
        self.one_round_prompts = int(sampler_kwargs.get("one_round_prompts") or 0)
        if self.one_round_prompts:
            key = "trainer.v1.sampler.sampler_kwargs.one_round_prompts"
            if not metric:
                raise ValueError(f"{key}={self.one_round_prompts} is DAPO's regime: it needs algorithm.filter_groups.enable=true")
            if self.one_round_prompts < train_batch_size:
                raise ValueError(f"{key}={self.one_round_prompts} must be >= data.train_batch_size={train_batch_size}")
            if self.max_num_gen_batches != 1:
                raise ValueError(f"{key}={self.one_round_prompts} generates one round: set "
                                 f"algorithm.filter_groups.max_num_gen_batches=1 (got {self.max_num_gen_batches})")
        self._verl_refill = refill_fn
        self._dispatched = 0
        self._step_metrics: dict = {}
        super().__init__(
            trainer_mode=trainer_mode,
            sampler_kwargs=sampler_kwargs,
            poll_interval=float(sampler_kwargs["poll_interval"]),
            refill_fn=self._bounded_refill if refill_fn is not None else None,
            filter_groups_metric=metric,
            sync_refill_failed_groups=refill_failed,
            train_batch_size=train_batch_size,
            gen_batch_size=1 if metric is not None or refill_failed else (sampler_kwargs["gen_batch_size"] or train_batch_size),
            max_inflight_gen_batches=filter_groups["max_inflight_gen_batches"] if metric is not None else 1,
            **kwargs,
        )

    def _bounded_refill(self, num_prompts: int):
        budget = self.max_num_gen_batches * self.train_batch_size
        if budget > 0:
            num_prompts = min(num_prompts, budget - self._dispatched)
            if num_prompts <= 0:
                raise _BoundReached
        self._dispatched += num_prompts
        return self._verl_refill(num_prompts)

    def _evict_terminal_groups(self, global_steps, partition_id, eviction_reasons):
        evicted, stale_count, dapo_count, metrics = super()._evict_terminal_groups(global_steps, partition_id, eviction_reasons)
        if evicted:
            _accumulate_eviction_metrics(self._step_metrics, metrics, stale_count)
        return evicted, stale_count, dapo_count, metrics

    def sample(self, global_steps: int, partition_id: str, batch_size: int):
        if partition_id == "val" or self.filter_groups_metric is None:
            return super().sample(global_steps, partition_id, batch_size)
        self._dispatched = self.train_batch_size  # the step's batch, dispatched by the trainer before sampling
        self._step_metrics = {}
        if self.one_round_prompts:  # the rest of the round at once, then no refill
            self._verl_refill(self.one_round_prompts - self._dispatched)
            self._dispatched = self.one_round_prompts
            batch, metrics = self._sample_survivors(global_steps, partition_id, batch_size)
        else:
            try:
                batch, metrics = super().sample(global_steps, partition_id, batch_size)
            except _BoundReached:
                batch, metrics = self._sample_survivors(global_steps, partition_id, batch_size)
        group_size = len(batch.keys) // len({key.split("_")[0] for key in batch.keys})
        dropped = self._step_metrics.get(DAPO_FILTERED_REWARD_COUNTS_KEY, {})
        all_generated = all_generated_mean(self._metric_values(batch), dropped, group_size)
        trained = len({key.split("_")[0] for key in batch.keys})
        metrics.setdefault(KEPT_PROMPTS, trained)
        return batch, {**metrics, GENERATED_PROMPTS: self._dispatched, TRAINED_PROMPTS: trained, ALL_GENERATED: all_generated}

    def _metric_values(self, batch) -> list[float]:
        """The filter metric of each response of ``batch``, read from TransferQueue as verl's filter reads it."""
        tq = verl_replay_buffer.tq
        if self.filter_groups_metric == FILTER_GROUPS_REWARD_METRIC:
            scores = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["rm_scores"])
            return [float(value.sum().item()) for value in scores["rm_scores"]]
        fields = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
        return [float(getattr(value, "data", value)["reward_extra_info"][self.filter_groups_metric])
                for value in fields["extra_fields"]]

    def _sample_survivors(self, global_steps: int, partition_id: str, batch_size: int):
        """At the bound: let the prompts in flight finish (filtering as they do), then take the groups that survived."""
        last_debug_time = time.time()
        while True:
            self._sync_metadata_from_transfer_queue()
            reasons = self._terminal_eviction_reasons(global_steps, partition_id)
            self._evict_terminal_groups(global_steps, partition_id, reasons)
            if not self.pending_keys[partition_id] and not self.running_keys[partition_id]:
                break
            last_debug_time = self._wait_for_next_poll(partition_id, last_debug_time)
        survivors = self._sampleable_terminal_keys(partition_id, reasons)
        if not survivors:
            raise DynamicSamplingError(self._nothing_to_train_message(global_steps))
        selected, snapshot, _ = self._select_prompt_uids(partition_id, survivors, batch_size)
        metrics = dict(self._step_metrics)
        surplus = survivors - set(selected)  # groups finished in flight beyond the batch: discarded, as verl's sync
        if surplus:                           # sampling does (kept, the next step would train on them off-policy)
            self._clear_groups(partition_id, surplus)
            metrics[f"{self._metrics_prefix(partition_id)}/filter_groups/discarded_surplus_samples"] = len(surplus)
        metrics.pop(DAPO_FILTERED_REWARD_COUNTS_KEY, None)  # verl's table logger reads it from the trainer's metrics
        metrics[SHORT_BY_PROMPTS] = batch_size - len(selected)
        metrics[KEPT_PROMPTS] = len(survivors)
        if self.one_round_prompts:
            what = f"one round of {self._dispatched} prompts (trainer.v1.sampler.sampler_kwargs.one_round_prompts)"
        else:
            what = (f"dynamic sampling reached algorithm.filter_groups.max_num_gen_batches={self.max_num_gen_batches} "
                    f"({self._dispatched} prompts)")
        print(f"verl_erc: step {global_steps}: {what}: {len(survivors)} groups survived the filter; training on "
              f"{len(selected)} of {batch_size}", flush=True)
        return self._materialize_batch(partition_id, selected, snapshot), metrics

    def _nothing_to_train_message(self, global_steps: int) -> str:
        shared = Counter(self._step_metrics.get(DAPO_FILTERED_REWARD_COUNTS_KEY, {}))
        groups = sum(shared.values())
        values = ", ".join(f"{value:g} ({count} group{'s' * (count != 1)})" for value, count in sorted(shared.items()))
        message = (
            f"DAPO's dynamic sampling found nothing to train on at step {global_steps}: in "
            f"{self._dispatched // self.train_batch_size} generation batches ({self._dispatched} prompts, "
            f"algorithm.filter_groups.max_num_gen_batches={self.max_num_gen_batches}) no group's responses had "
            f"differing {self.filter_groups_metric!r}; the {groups} groups scored alike: {values or 'none finished'}."
        )
        if set(shared) == {0.0}:
            message += (" Every score was 0.0: do the responses contain \\boxed{}? Check the prompt template, the "
                        "reward function (reward.custom_reward_function) and its data's ground truth.")
        elif set(shared) == {1.0}:
            message += " Every score was 1.0: the prompts are too easy for the model."
        return message + " Raise max_num_gen_batches (0: no bound) to generate longer."
