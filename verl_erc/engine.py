"""The entropy hook: verl's FSDP actor engine, plus the current-policy entropy ERC needs.

:class:`ErcEntropyMixin` extends ``FSDPEngineWithLMHead.prepare_model_outputs``: when the
micro-batch carries the flag :data:`ERC_ENTROPY_FLAG` (set by the ERC trainer on actor updates
only), it adds ``model_output["erc_entropy"]``, the entropy of every token's next-token
distribution at the log-probs' temperature, computed from the same logits, without an autograd
graph and chunked over rows (:func:`verl_erc.entropy.entropy_no_grad`), in the same nested
layout as ``log_probs`` (padded and no-padding inputs, dynamic batch size, Ulysses SP gather).

:class:`ErcFSDPEngineWithLMHead` is registered in verl's ``EngineRegistry`` for the
``fsdp``/``fsdp2`` backends under vendor-specific keys (nvidia, amd, huawei), which verl looks
up before its device-wide default: every verl run in an environment with verl-erc installed uses
it, and without the flag it behaves exactly as verl's engine.
"""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor
from verl.utils import tensordict_utils as tu
from verl.workers.engine.base import EngineRegistry
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

from verl_erc.entropy import DEFAULT_CHUNK_SIZE, entropy_no_grad
from verl_erc.losses import CURRENT_ENTROPY_KEY, ErcInputError

#: non-tensor micro-batch keys set by the trainer (``batch.extra_info``) for actor updates.
ERC_ENTROPY_FLAG = "erc_calculate_entropy"
ERC_CHUNK_SIZE_KEY = "erc_entropy_chunk_size"


class ErcEntropyMixin:
    """Mixin for an ``FSDPEngineWithLMHead`` subclass (put it first in the bases)."""

    def prepare_model_outputs(self, output, output_args, micro_batch, logits_processor_func):
        model_output = super().prepare_model_outputs(output, output_args, micro_batch, logits_processor_func)
        if tu.get_non_tensor_data(data=micro_batch, key=ERC_ENTROPY_FLAG, default=False):
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
        if isinstance(logits, DTensor):
            logits = logits.full_tensor()
        cu_seqlens = micro_batch["input_ids"].offsets()
        unit_temperature = output_args.get("temperature_is_one", False)
        if tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True):
            temperature = None if unit_temperature else output_args["temperature_rmpad"]
            # (total_nnz / sp + pad,); verl's own entropy function (compiled with use_torch_compile), as for H_old
            entropy = entropy_no_grad(logits.squeeze(0), temperature, chunk_size, entropy_fn=self.compute_entropy_from_logits)
            entropy = self._gather_and_unpad_packed(entropy, output_args["pad_size"])
        else:
            temperature = None if unit_temperature else output_args["temperature"].unsqueeze(-1)
            entropy = entropy_no_grad(logits, temperature, chunk_size, entropy_fn=self.compute_entropy_from_logits)
            lengths = cu_seqlens.diff()
            valid = torch.arange(entropy.shape[1], device=entropy.device) < lengths.unsqueeze(1)
            entropy = entropy[valid]
        return torch.nested.nested_tensor_from_jagged(entropy, cu_seqlens)


@EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device="cuda", vendor=["nvidia", "amd"])
@EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device="npu", vendor="huawei")
class ErcFSDPEngineWithLMHead(ErcEntropyMixin, FSDPEngineWithLMHead):
    """verl's FSDP language-model engine with the ERC entropy hook."""
