"""verl's FSDP2 engines for device ``cpu``, registered in verl's EngineRegistry.

- :class:`CPUFSDPEngineWithLMHead` (actor and ref, ``language_model``): verl's LM engine with
  ERC's aligned old pass and entropy hook (:mod:`verl_erc.hooks.old_pass`, :mod:`verl_erc.hooks.entropy_hook`, first in
  the bases, as on GPU).
- :class:`CPUFSDPEngineWithValueHead` (critic, ``value_model``).

Use ``strategy=fsdp2`` (FSDP1 refuses CPU parameters with ``sync_module_states``) and
``attn_implementation=sdpa``; the CPU configs set both and the preflight checks them.
"""

from __future__ import annotations

import dataclasses

from verl.workers.engine.base import EngineRegistry
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

from verl_erc.cpu import shims
from verl_erc.hooks.entropy_hook import ErcEntropyMixin
from verl_erc.hooks.old_pass import AlignedOldPassMixin

DEVICE = "cpu"


@EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device=DEVICE)
class CPUFSDPEngineWithLMHead(AlignedOldPassMixin, ErcEntropyMixin, FSDPEngineWithLMHead):
    """verl's FSDP language-model engine on CPU, with ERC's entropy hook and aligned old pass."""

    def _build_fsdp_module(self, module):
        """Wrap a forward-only (ref) module as a trainable one is wrapped: no offload policy.

        verl gives forward-only FSDP2 modules ``CPUOffloadPolicy(pin_memory=True)``, and pinning
        host memory needs an accelerator. On the CPU the parameters already live in host memory,
        so there is nothing to offload.
        """
        if not self.engine_config.forward_only:
            return super()._build_fsdp_module(module)
        forward_only_config = self.engine_config
        self.engine_config = dataclasses.replace(forward_only_config, forward_only=False)
        try:
            module = super()._build_fsdp_module(module)
        finally:
            self.engine_config = forward_only_config
        self._is_offload_param = self._is_offload_optimizer = False  # as verl sets for forward-only modules
        return module


@EngineRegistry.register(model_type="value_model", backend=["fsdp", "fsdp2"], device=DEVICE)
class CPUFSDPEngineWithValueHead(FSDPEngineWithValueHead):
    """verl's FSDP value-model (critic) engine on CPU."""

    def _build_module(self):
        with shims.value_model_loader_with_config_attention():
            return super()._build_module()
