"""verl's FSDP language-model engine with ERC's pieces, registered in verl's ``EngineRegistry``.

:class:`ErcFSDPEngineWithLMHead` (:class:`verl_erc.hooks.old_pass.AlignedOldPassMixin` and
:class:`verl_erc.hooks.entropy_hook.ErcEntropyMixin` on verl's ``FSDPEngineWithLMHead``) is registered for
the ``fsdp``/``fsdp2`` backends under vendor-specific keys (nvidia, amd, huawei), which verl looks up before its device-wide default: every verl run in
an environment with verl-erc installed uses it, and without ERC's loss it behaves exactly as
verl's engine.
"""

from __future__ import annotations

from verl.workers.engine.base import EngineRegistry
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

from verl_erc.hooks.entropy_hook import ErcEntropyMixin
from verl_erc.hooks.old_pass import AlignedOldPassMixin


@EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device="cuda", vendor=["nvidia", "amd"])
@EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device="npu", vendor="huawei")
class ErcFSDPEngineWithLMHead(AlignedOldPassMixin, ErcEntropyMixin, FSDPEngineWithLMHead):
    """verl's FSDP language-model engine with the ERC entropy hook and the aligned old pass."""
