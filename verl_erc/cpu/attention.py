"""Ulysses sequence parallelism for the CPU backend's attention (``sdpa``).

verl's Ulysses SP slices each packed micro-batch over the sequence-parallel ranks and patches only FlashAttention
2's forward (``verl/models/transformers/monkey_patch.py``): an all-to-all from sequence shards to head shards,
attention over the whole packed sequence, an all-to-all back. FlashAttention is CUDA-only; the CPU backend runs
``sdpa``, which verl does not patch, so without this module each rank would attend within its own shard of the
sequence, and the two passes ERC compares (sharded differently) would disagree at the same weights.

:func:`install` replaces transformers' ``sdpa`` entry in its attention registry (``AttentionInterface``) by
:func:`ulysses_sdpa_attention_forward`, in the processes where the CPU backend is active. Without a Ulysses group
(``ulysses_sequence_parallel_size`` 1) it is transformers' own ``sdpa`` function, unchanged. With one, it does what
verl's FlashAttention patch does, with verl's own sequence-parallel utilities: the key/value heads repeated as verl
repeats them, ``gather_seq_scatter_heads`` on query, key and value, the position ids all-gathered over the group,
``torch.nn.functional.scaled_dot_product_attention`` over the whole packed sequence with a causal mask per packed
sequence (a new sequence starts where the position ids do not count up by one, as transformers and FlashAttention
read them; verl's SP pad restarts at 0 and is its own sequence), then ``gather_heads_scatter_seq``.
"""

from __future__ import annotations

import torch

_INSTALLED_FLAG = "_verl_erc_ulysses"


def packed_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """``[1, 1, S, S]`` bool: query q may attend key k when both lie in the same packed sequence and k <= q.

    ``position_ids`` ``[1, S]``: the packed sequences' positions, each counting up from 0."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[..., 1:] = position_ids[..., 1:] != position_ids[..., :-1] + 1
    segment = starts.cumsum(-1)[0]
    index = torch.arange(segment.numel(), device=position_ids.device)
    return ((segment[:, None] == segment[None, :]) & (index[None, :] <= index[:, None]))[None, None]


def ulysses_sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                                   is_causal=None, **kwargs):
    """transformers' ``sdpa`` attention; under Ulysses SP, over the whole packed sequence (see the module's doc).

    ``query`` ``[batch, heads, seq / sp, head_dim]``, ``key``/``value`` with the KV heads; returns
    ``[batch, seq / sp, heads, head_dim]`` as transformers' attention functions do."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from verl.models.transformers.monkey_patch import repeat_kv
    from verl.utils.ulysses import (
        gather_heads_scatter_seq,
        gather_seq_scatter_heads,
        get_ulysses_sequence_parallel_group,
        get_ulysses_sequence_parallel_world_size,
    )

    sp = get_ulysses_sequence_parallel_world_size()
    position_ids = kwargs.get("position_ids")
    if sp == 1 or position_ids is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if kwargs.get("sliding_window") is not None or query.shape[0] != 1:
        raise NotImplementedError(
            "the CPU backend's Ulysses attention supports one packed sequence batch (use_remove_padding=true) without "
            "sliding-window attention; set actor_rollout_ref.actor.ulysses_sequence_parallel_size=1"
        )
    query, key, value = (t.transpose(1, 2) for t in (query, key, value))  # [1, seq / sp, heads, head_dim]
    repeats = max(sp // key.size(2), 1)  # as verl's patch: the KV heads must split over the SP ranks
    key, value = repeat_kv(key, repeats), repeat_kv(value, repeats)
    query, key, value = (gather_seq_scatter_heads(t, seq_dim=1, head_dim=2) for t in (query, key, value))
    group = get_ulysses_sequence_parallel_group()
    shards = [torch.empty_like(position_ids) for _ in range(sp)]
    torch.distributed.all_gather(shards, position_ids.contiguous(), group=group)
    mask = packed_causal_mask(torch.cat(shards, dim=-1))
    query, key, value = (t.transpose(1, 2) for t in (query, key, value))  # [1, heads / sp, seq, head_dim]
    groups = query.size(1) // key.size(1)
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout,
                                                           scale=scaling)
    out = gather_heads_scatter_seq(out.transpose(1, 2), seq_dim=1, head_dim=2)  # [1, seq / sp, heads, head_dim]
    return out.contiguous(), None


def install() -> None:
    """Register :func:`ulysses_sdpa_attention_forward` as transformers' ``sdpa`` attention (idempotent)."""
    from transformers.modeling_utils import AttentionInterface

    if getattr(AttentionInterface._global_mapping.get("sdpa"), _INSTALLED_FLAG, False):
        return
    setattr(ulysses_sdpa_attention_forward, _INSTALLED_FLAG, True)
    AttentionInterface.register("sdpa", ulysses_sdpa_attention_forward)
