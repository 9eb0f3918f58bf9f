"""The aligned old pass: verl's old-log-prob pass computed on exactly the micro-batches the update runs.

ERC compares H(pi_theta, t) from the update with H(pi_old, t) from the old-log-prob pass. verl packs
the two passes differently: the old pass packs the whole per-rank batch into micro-batches of
``rollout.log_prob_max_token_len_per_gpu`` tokens, the update packs each mini-batch into micro-batches
of ``actor.ppo_max_token_len_per_gpu``. In bf16 on GPUs the GEMMs of different shapes accumulate in
other orders, so the same weights give the same tokens other entropies, and ERC's +-5 % band clips
rounding on top of policy drift (docs/erc_noise_floor.md). With ``erc.old_pass=aligned``:

- the trainer (:mod:`verl_erc.hooks.trainer`) hands the actor's old pass the update's split,
  :func:`update_split` (the values verl's ``_update_actor`` passes to ``train_mini_batch``), under
  the batch key :data:`ALIGNED_OLD_PASS_KEY`;
- the engine (:class:`AlignedOldPassMixin`) splits the batch into the update's first-epoch
  mini-batches with verl's own iterator (``tu.make_iterator``: same order, shuffle and per-rank seed),
  runs each through verl's ``forward_backward_batch`` with the update's token budget / micro-batch
  size (so verl's ``prepare_micro_batches`` balances and pads them as the update will), computes the
  entropy with the function the update's entropy hook uses, and puts the results back in the batch's
  order.

At theta = theta_old (the step's first mini-batch) both passes then run the same kernels on the same
inputs: ``actor/erc_onpolicy_logprob_maxdiff`` and ``actor/erc_onpolicy_entropy_maxdiff`` are 0 and every
clipped token is policy drift. The update's later epochs (``ppo_epochs > 1``) reuse the first epoch's
split when ``actor.shuffle`` is false; with shuffle on they would not, so that combination is refused
(:func:`aligned_split_problems`).
"""

from __future__ import annotations

import torch
from verl.utils import tensordict_utils as tu

#: batch key (non-tensor) under which the trainer hands the update's split to the actor's old pass
ALIGNED_OLD_PASS_KEY = "erc_aligned_old_pass"
#: the values of ``erc.old_pass``: the update's micro-batches, or verl's own old-log-prob packing
OLD_PASS_MODES = ("aligned", "verl")


def update_split(config, entropy_chunk_size: int) -> dict:
    """The update's split of a batch, as verl 0.9.1's V1 ``_update_actor`` passes it to ``train_mini_batch``.

    ``config`` is the trainer's (verl's keys only are read from it: a config given on verl's own entry point has
    only the ``erc`` keys its user set, the defaults live in :class:`verl_erc.config.ErcConfig`).
    ``mini_batch_size`` is global (over the data-parallel ranks; verl divides it by the DP size), ``seed`` is
    offset by the rank there, ``shuffle`` is the DataLoader's, and ``calculate_entropy`` decides whether the
    update's forward computes verl's entropy (entropy bonus) or the entropy hook computes its own (in row
    chunks of ``entropy_chunk_size``, the ERC config's).
    ``tests/test_old_pass.py`` checks these against what verl's ``_update_actor`` sends.
    """
    actor = config.actor_rollout_ref.actor
    return {
        "mini_batch_size": actor.ppo_mini_batch_size * config.actor_rollout_ref.rollout.n,
        "seed": actor.data_loader_seed,
        "shuffle": actor.shuffle,
        "calculate_entropy": bool(actor.calculate_entropy or actor.entropy_coeff != 0.0),
        "entropy_chunk_size": entropy_chunk_size,
    }


def aligned_split_problems(config) -> list[str]:
    """Why the update's split cannot be known at old-log-prob time under this config (empty: it can)."""
    actor = config.actor_rollout_ref.actor
    if actor.ppo_epochs > 1 and actor.shuffle:
        return [
            f"actor_rollout_ref.actor.erc.old_pass=aligned with ppo_epochs={actor.ppo_epochs} and shuffle=true: "
            "verl reshuffles the mini-batches every epoch, so epochs after the first would not run the old pass's "
            "micro-batches; set actor_rollout_ref.actor.shuffle=false (every epoch then reuses the first's split) "
            "or actor_rollout_ref.actor.erc.old_pass=verl"
        ]
    return []


def update_order(batch_size: int, mini_batch_size_per_gpu: int, seed: int, shuffle: bool) -> list[torch.Tensor]:
    """The row indices of each first-epoch mini-batch of ``train_mini_batch`` on one rank (``seed`` with the
    rank added), drawn by verl's own iterator over a batch of row numbers."""
    rows = tu.get_tensordict(tensor_dict={"row": torch.arange(batch_size)}, non_tensor_dict={})
    iterator = tu.make_iterator(rows, mini_batch_size=mini_batch_size_per_gpu, epochs=1, seed=seed,
                                dataloader_kwargs={"shuffle": shuffle})
    return [mini["row"] for mini in iterator]


def restore_order(nested_parts: list[torch.Tensor], order: list[torch.Tensor]) -> torch.Tensor:
    """One nested tensor in the batch's row order from per-mini-batch nested tensors in ``order``'s rows."""
    rows = [row for part in nested_parts for row in part.unbind()]
    position = torch.empty(len(rows), dtype=torch.long)
    position[torch.cat(order)] = torch.arange(len(rows))
    return torch.nested.as_nested_tensor([rows[i] for i in position.tolist()], layout=torch.jagged)


class AlignedOldPassMixin:
    """Mixin for an ``FSDPEngineWithLMHead`` subclass (before :class:`~verl_erc.hooks.entropy_hook.ErcEntropyMixin`
    in the bases): ``infer_batch`` on the update's micro-batches when the batch carries
    :data:`ALIGNED_OLD_PASS_KEY`; verl's ``infer_batch`` otherwise."""

    def infer_batch(self, data, loss_function=None):
        split = tu.get_non_tensor_data(data=data, key=ALIGNED_OLD_PASS_KEY, default=None)
        if split is None:
            return super().infer_batch(data, loss_function=loss_function)
        from verl_erc.hooks.entropy_hook import ERC_CHUNK_SIZE_KEY, ERC_ENTROPY_FLAG
        from verl_erc.erc.losses import CURRENT_ENTROPY_KEY, OLD_ENTROPY_KEY, ErcInputError

        dp_size = self.get_data_parallel_size()
        if split["mini_batch_size"] % dp_size or len(data) % (split["mini_batch_size"] // dp_size):
            raise ErcInputError(
                f"the aligned old pass cannot split {len(data)} samples per rank into the update's mini-batches of "
                f"{split['mini_batch_size']} over {dp_size} data-parallel ranks (verl's update would fail the same way)"
            )
        order = update_order(len(data), split["mini_batch_size"] // dp_size,
                             split["seed"] + self.get_data_parallel_rank(), split["shuffle"])
        # what the update's forward sees (train_mini_batch / train_batch / the entropy hook), forward only
        update_keys = {
            "max_token_len_per_gpu": self.engine_config.max_token_len_per_gpu,
            "micro_batch_size_per_gpu": self.engine_config.micro_batch_size_per_gpu,
            "calculate_entropy": split["calculate_entropy"],
            ERC_ENTROPY_FLAG: True,
            ERC_CHUNK_SIZE_KEY: split["entropy_chunk_size"],
        }
        outputs = []
        with torch.no_grad():
            for rows in order:
                mini = tu.index_select_tensor_dict(data, rows)
                tu.maybe_fix_3d_position_ids(mini)
                tu.assign_non_tensor(mini, **update_keys)
                outputs.append(self.forward_backward_batch(mini, loss_function, forward_only=True))
        model_output = {}
        for key in outputs[0]["model_output"]:
            model_output[key] = restore_order([out["model_output"][key] for out in outputs], order)
        # H_old from the update hook's own entropy function: the two entropies ERC divides differ by the weights only
        model_output[OLD_ENTROPY_KEY] = model_output.pop(CURRENT_ENTROPY_KEY)
        metrics = {}
        for out in outputs:
            for key, value in out["metrics"].items():
                metrics.setdefault(key, []).extend(value if isinstance(value, list) else [value])
        return {"model_output": model_output, "loss": [l for out in outputs for l in out["loss"]], "metrics": metrics}
