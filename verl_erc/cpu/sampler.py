"""verl's sync replay buffer with its poll interval as a setting: DAPO's refills on a laptop without 2 s waits.

verl 0.9.1's sync ``ReplayBuffer`` checks TransferQueue for finished rollouts, and with DAPO's
dynamic sampling for groups to drop and refill, once every ``poll_interval`` seconds; the trainer
builds it with the default, 2 s. A GPU step takes minutes, so 2 s is nothing there; a laptop
rehearsal's generation takes seconds, and every refill round waits for the next poll.

verl's config has one hook for this: ``trainer.v1.sampler.custom_sampler`` names a ``ReplayBuffer``
subclass, which verl builds with ``sampler_kwargs`` but (its contract for custom samplers) without
the DAPO settings it computes for its own buffer. :class:`PolledReplayBuffer` takes those from
``sampler_kwargs`` instead, where ``hydra_conf/rehearsal/laptop.yaml`` interpolates them from the
same keys verl reads (``algorithm.filter_groups``, ``data.train_batch_size``, ``data.gen_batch_size``,
``trainer.v1.sampler.sync_refill_failed_groups``), and passes them to verl's own class as verl does
(``RayPPOTrainerV1._build_replay_buffer``). Sampling itself is verl's, unchanged.
"""

from __future__ import annotations

from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer


class PolledReplayBuffer(ReplayBuffer):
    """verl's sync ``ReplayBuffer`` with ``sampler_kwargs.poll_interval`` and DAPO's settings from ``sampler_kwargs``."""

    def __init__(self, *, trainer_mode: str, sampler_kwargs, **kwargs):
        if trainer_mode != "sync":
            raise ValueError(f"{type(self).__name__} is verl's sync replay buffer; trainer.v1.trainer_mode={trainer_mode}")
        filter_groups = sampler_kwargs["filter_groups"]
        metric = filter_groups["metric"] if filter_groups["enable"] else None
        if filter_groups["enable"] and not metric:
            raise ValueError("algorithm.filter_groups.metric must be set when group filtering is enabled")
        refill_failed = bool(sampler_kwargs["sync_refill_failed_groups"])
        train_batch_size = int(sampler_kwargs["train_batch_size"])
        super().__init__(
            trainer_mode=trainer_mode,
            sampler_kwargs=sampler_kwargs,
            poll_interval=float(sampler_kwargs["poll_interval"]),
            filter_groups_metric=metric,
            sync_refill_failed_groups=refill_failed,
            train_batch_size=train_batch_size,
            gen_batch_size=1 if metric is not None or refill_failed else (sampler_kwargs["gen_batch_size"] or train_batch_size),
            max_inflight_gen_batches=filter_groups["max_inflight_gen_batches"] if metric is not None else 1,
            **kwargs,
        )
