"""The entropy hook: the current-policy entropy ERC needs, added to verl's FSDP actor engine.

:class:`ErcEntropyMixin` extends two methods of verl's ``FSDPEngineWithLMHead`` (put it first in a
subclass's bases: :class:`verl_erc.hooks.engine.ErcFSDPEngineWithLMHead` on GPU/NPU,
:class:`verl_erc.cpu.engines.CPUFSDPEngineWithLMHead` on CPU):

- ``forward_backward_batch``: when the loss is ERC's (:func:`verl_erc.erc.losses.erc_ppo_loss` with
  ``erc.enable``), it flags the batch (:data:`ERC_ENTROPY_FLAG`) so that every micro-batch computes
  the current entropy, marks the step's first mini-batch (:data:`verl_erc.erc.losses.ERC_ONPOLICY_FLAG`: the
  one after verl's last mini-batch of a step, flagged ``update_lr_scheduler``, is the next step's first,
  where theta = theta_old), and prints once per process the rank and host it runs on. When the loss's
  config has ERC on but the loss is not ERC's (the trainer did not install it: verl's legacy
  trainer, or a trainer registered after the plugin), a training pass raises
  :class:`verl_erc.erc.losses.ErcInputError` before any gradient is taken.
- ``prepare_model_outputs``: on a flagged micro-batch it adds ``model_output["erc_entropy"]``, the
  entropy of every token's next-token distribution at the log-probs' temperature, without an
  autograd graph, in the same nested layout as ``log_probs`` (padded and no-padding inputs, dynamic
  batch size, Ulysses SP gather). Where verl already computed the current entropy (for the entropy
  bonus, ``entropy_coeff != 0``, or ``calculate_entropy``), that tensor is reused, detached;
  otherwise it is computed from the same logits, chunked over rows
  (:func:`verl_erc.erc.entropy.entropy_no_grad`). Under tensor parallelism (logits sharded on the
  vocabulary) it is computed from each rank's slice with two small all-reduces per chunk
  (:func:`verl_erc.erc.entropy.vocab_parallel_entropy_no_grad`), not from a second all-gather.

This module does not import verl's engine package: the engines that subclass the mixin are
registered while that package is being imported (:mod:`verl_erc.hooks.after_import`), whichever module
a process imports first.
"""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from verl.utils import tensordict_utils as tu

from verl_erc.config import ERC_KEY, POSITIVE_NLL_KEY
from verl_erc.erc.entropy import DEFAULT_CHUNK_SIZE, entropy_no_grad, vocab_parallel_entropy_no_grad
from verl_erc.erc.losses import CURRENT_ENTROPY_KEY, ERC_ONPOLICY_FLAG, ErcInputError, erc_ppo_loss

#: non-tensor batch keys the hook sets when the loss is ERC's (read back per micro-batch).
ERC_ENTROPY_FLAG = "erc_calculate_entropy"
ERC_CHUNK_SIZE_KEY = "erc_entropy_chunk_size"


def erc_of_loss(loss_function):
    """The enabled :class:`~verl_erc.config.ErcConfig` of a loss ``partial(fn, config=...)``, else None."""
    config = getattr(loss_function, "keywords", {}).get("config")
    erc = getattr(config, "erc", None)
    return erc if erc is not None and erc.enable else None


def extensions_of_loss(loss_function) -> list[str]:
    """The verl-erc terms the loss's actor config asks for (ERC, the positive-sample NLL term)."""
    config = getattr(loss_function, "keywords", {}).get("config")
    wanted = [f"{ERC_KEY}.enable=true"] if erc_of_loss(loss_function) is not None else []
    if getattr(config, "positive_nll_coef", 0.0):
        wanted.append(f"{POSITIVE_NLL_KEY}={config.positive_nll_coef}")
    return wanted


def vocab_shard_group(logits):
    """The process group over which DTensor ``logits`` are split on the vocabulary (last) dim only, else None."""
    if not isinstance(logits, DTensor):
        return None
    shards = [(mesh_dim, p) for mesh_dim, p in enumerate(logits.placements) if not p.is_replicate()]
    if len(shards) != 1 or not shards[0][1].is_shard() or shards[0][1].dim % logits.ndim != logits.ndim - 1:
        return None
    return logits.device_mesh.get_group(shards[0][0])


class ErcEntropyMixin:
    """Mixin for an ``FSDPEngineWithLMHead`` subclass (put it first in the bases)."""

    def forward_backward_batch(self, data, loss_function, forward_only=False):
        erc = erc_of_loss(loss_function)
        if erc is not None and loss_function.func is erc_ppo_loss:
            # the step's first mini-batch runs at theta = theta_old; verl marks a step's last one (update_lr_scheduler)
            onpolicy = getattr(self, "_erc_next_is_onpolicy", True)
            self._erc_next_is_onpolicy = bool(tu.get_non_tensor_data(data=data, key="update_lr_scheduler", default=False))
            tu.assign_non_tensor(
                data, **{ERC_ENTROPY_FLAG: True, ERC_CHUNK_SIZE_KEY: erc.entropy_chunk_size, ERC_ONPOLICY_FLAG: onpolicy}
            )
            if not getattr(self, "_erc_announced", False):  # once per training process: where ERC runs
                self._erc_announced = True
                rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
                print(f"verl_erc: ERC entropy hook on rank {rank} of {world} ({socket.gethostname()})", flush=True)
        elif not forward_only and getattr(loss_function, "func", None) is not erc_ppo_loss and extensions_of_loss(loss_function):
            raise ErcInputError(
                f"{' and '.join(extensions_of_loss(loss_function))} but the actor's loss is {loss_function.func.__module__}."
                f"{loss_function.func.__name__}, not verl-erc's: the trainer did not install ERC's loss. Run verl's V1 trainer "
                "(trainer.use_v1=true) in a mode verl_erc wires (trainer.v1.trainer_mode=sync, colocate_async or "
                "separate_async), e.g. with python -m verl_erc.main"
            )
        return super().forward_backward_batch(data, loss_function, forward_only=forward_only)

    def prepare_model_outputs(self, output, output_args, micro_batch, logits_processor_func):
        model_output = super().prepare_model_outputs(output, output_args, micro_batch, logits_processor_func)
        if not tu.get_non_tensor_data(data=micro_batch, key=ERC_ENTROPY_FLAG, default=False):
            return model_output
        if model_output.get("entropy") is not None:
            # verl computed the current entropy (entropy bonus): the same values, without their graph
            model_output[CURRENT_ENTROPY_KEY] = model_output["entropy"].detach()
        else:
            chunk_size = tu.get_non_tensor_data(data=micro_batch, key=ERC_CHUNK_SIZE_KEY, default=DEFAULT_CHUNK_SIZE)
            model_output[CURRENT_ENTROPY_KEY] = self._erc_current_entropy(output, output_args, micro_batch, chunk_size)
        return model_output

    def _erc_current_entropy(self, output, output_args, micro_batch, chunk_size: int) -> torch.Tensor:
        """Nested ``[bsz, seq_len]`` entropy of the current policy (no graph)."""
        logits = getattr(output, "logits", None)
        if logits is None:
            raise ErcInputError(
                "ERC needs the logits to compute the current entropy, but the model returned none "
                "(fused kernels?): set actor_rollout_ref.model.use_fused_kernels=false"
            )
        cu_seqlens = micro_batch["input_ids"].offsets()
        unit_temperature = output_args.get("temperature_is_one", False)
        if tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True):
            temperature = None if unit_temperature else output_args["temperature_rmpad"]
            group = vocab_shard_group(logits)
            if group is not None:  # tensor parallel: from each rank's vocabulary slice, no second all-gather
                entropy = vocab_parallel_entropy_no_grad(logits.to_local().squeeze(0), group, temperature, chunk_size)
            else:
                # (total_nnz / sp + pad,); verl's own entropy function (compiled with use_torch_compile), as H_old
                logits = logits.full_tensor() if isinstance(logits, DTensor) else logits
                entropy = entropy_no_grad(
                    logits.squeeze(0), temperature, chunk_size, entropy_fn=self.compute_entropy_from_logits
                )
            entropy = self._gather_and_unpad_packed(entropy, output_args["pad_size"])
        else:
            logits = logits.full_tensor() if isinstance(logits, DTensor) else logits
            temperature = None if unit_temperature else output_args["temperature"].unsqueeze(-1)
            entropy = entropy_no_grad(logits, temperature, chunk_size, entropy_fn=self.compute_entropy_from_logits)
            lengths = cu_seqlens.diff()
            valid = torch.arange(entropy.shape[1], device=entropy.device) < lengths.unsqueeze(1)
            entropy = entropy[valid]
        return torch.nested.nested_tensor_from_jagged(entropy, cu_seqlens)
