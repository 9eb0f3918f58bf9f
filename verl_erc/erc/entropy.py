"""Current-policy entropy for ERC's mask, computed without an autograd graph.

ERC (eq. 8-9) only needs H(pi_theta, t) to decide which tokens keep their gradient, so this
module computes it under ``torch.no_grad`` in row chunks of the logits: the extra memory is one
``[chunk x vocab]`` block (plus the temporaries verl's formula makes for it), never a
``[tokens x vocab]`` activation kept for backward.

Numerics: each chunk goes through verl's own ``entropy_from_logits`` (the function verl's
old-log-prob pass uses), called as a public op sequence, so the result is the same per row as
verl's on the whole tensor -- bit for bit in our tests, in fp32 and bf16 -- and it follows
whatever ``torch.autocast`` context the caller is in exactly as verl's call does (under CUDA
bf16 autocast, softmax/logsumexp run in fp32 and the entropy comes back fp32). Rows are
independent, so the chunking never changes a value.

Speed (``benchmarks/README.md``): on CPU a chunk is also capped at ``CPU_CHUNK_ELEMENTS``
logits (6 rows of a 151,936-token vocabulary) so that the block and the formula's temporaries stay
in cache and under glibc's mmap threshold. For 2048 x 151,936 fp32 logits on 2 cores that is
0.25 s instead of 1.12 s with 256-row chunks (which page-fault fresh ~150 MiB buffers for every
chunk) and 3.84 s unchunked, with 14 MiB of transient memory instead of 304 MiB / 2.4 GiB.
On accelerators the configured ``chunk_size`` is used as is (bigger blocks keep the device busy).
"""

from __future__ import annotations

from typing import Callable

import torch
from verl.utils.torch_functional import entropy_from_logits

#: Rows of logits per chunk (an upper bound; see ``CPU_CHUNK_ELEMENTS``). Matches the default of
#: ``actor_rollout_ref.actor.erc.entropy_chunk_size``.
DEFAULT_CHUNK_SIZE = 256

#: On CPU, at most this many logits per chunk (rows = max(2, CPU_CHUNK_ELEMENTS // vocab)).
#: 2**20 fp32 logits = 4 MiB per temporary: cache-friendly and below glibc's 32 MiB maximum mmap
#: threshold, so freed blocks are reused instead of being page-faulted in again.
CPU_CHUNK_ELEMENTS = 1 << 20


def effective_chunk_rows(vocab: int, chunk_size: int, device: torch.device | str) -> int:
    """Rows per chunk that :func:`entropy_no_grad` uses for ``vocab`` columns on ``device``.

    On CPU: ``min(chunk_size, CPU_CHUNK_ELEMENTS // vocab)``, but at least 2 rows, because torch
    splits a single-row reduction across threads (a different summation order than the
    row-parallel reduction verl's call on the whole tensor gets); with >= 2 rows every row is
    reduced the same way, so the result is bit-identical.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if torch.device(device).type == "cpu":
        return max(2, min(chunk_size, CPU_CHUNK_ELEMENTS // max(1, vocab)))
    return chunk_size


def _chunk_bounds(n_rows: int, step: int) -> list[tuple[int, int]]:
    """``[start, end)`` row ranges of at most ``step`` rows; a last 1-row remainder joins the
    previous chunk (see :func:`effective_chunk_rows` for why a lone row is avoided)."""
    bounds = [(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n_rows)]
    return bounds


def _row_temperatures(temperature, lead_shape: torch.Size, device) -> torch.Tensor | None:
    """One temperature per row (flattened ``lead_shape``), or None for no scaling (None or 1.0).

    A tensor broadcastable to ``lead_shape``, or of shape ``lead_shape + (1,)`` (as verl passes
    ``temperature_rmpad.unsqueeze(-1)``); a float fills every row.
    """
    if isinstance(temperature, torch.Tensor):
        t = temperature
        if t.dim() == len(lead_shape) + 1 and t.shape[-1] == 1:
            t = t.squeeze(-1)
        return t.to(device).expand(lead_shape).reshape(-1)
    if temperature is not None and float(temperature) != 1.0:
        return torch.full((lead_shape.numel(),), float(temperature), device=device)
    return None


def _scale_rows(block: torch.Tensor, temps: torch.Tensor | None, start: int, end: int) -> torch.Tensor:
    """Rows ``start:end`` of the logits divided by their temperatures, as verl's engine scales them:
    ``logits / temperature.clamp(min=1e-8).to(logits.dtype)``."""
    if temps is None:
        return block
    return block / temps[start:end].clamp(min=1e-8).to(block.dtype).unsqueeze(-1)


@torch.no_grad()
def entropy_no_grad(
    logits: torch.Tensor,
    temperature: torch.Tensor | float | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    entropy_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Entropy over the vocabulary of each row of ``logits`` (``[..., vocab]`` -> ``[...]``).

    Equal to ``verl.utils.torch_functional.entropy_from_logits(logits / temperature)``, with no
    autograd graph (the result never requires grad, even when ``logits`` does).

    ``temperature`` is ``None``/a float, or a tensor with one value per row: broadcastable to
    ``logits.shape[:-1]``, or of shape ``logits.shape[:-1] + (1,)`` (as verl passes
    ``temperature_rmpad.unsqueeze(-1)``). Logits are divided by
    ``temperature.clamp(min=1e-8).to(logits.dtype)`` first, exactly as verl's engine scales the
    logits its log-probs and old entropy come from.

    ``chunk_size`` bounds the rows processed at once (memory: one ``[chunk x vocab]`` block and
    the temporaries of verl's formula); on CPU chunks are further capped at
    ``CPU_CHUNK_ELEMENTS`` logits. The values do not depend on the chunking.

    ``entropy_fn`` (keyword only) replaces verl's ``entropy_from_logits`` as the per-chunk
    formula, e.g. the engine's ``compute_entropy_from_logits`` (``torch.compile``-d when verl's
    ``use_torch_compile`` is on) so the current entropy is computed by the same code as verl's
    old entropy.
    """
    if entropy_fn is None:
        entropy_fn = entropy_from_logits
    vocab = logits.shape[-1]
    lead_shape = logits.shape[:-1]
    # A 2-D input is sliced in place (no copy even if it is a non-contiguous view).
    rows = logits if logits.dim() == 2 else logits.reshape(-1, vocab)
    n_rows = rows.shape[0]
    step = effective_chunk_rows(vocab, chunk_size, rows.device)  # raises ValueError for chunk_size <= 0

    temps = _row_temperatures(temperature, lead_shape, rows.device)

    out = None  # allocated from the first chunk's dtype (fp32 under bf16 CUDA autocast, as in verl)
    for start, end in _chunk_bounds(n_rows, step):
        ent = entropy_fn(_scale_rows(rows[start:end], temps, start, end))
        if out is None:
            out = torch.empty(n_rows, dtype=ent.dtype, device=ent.device)
        out[start:end] = ent
    if out is None:  # no rows
        out = entropy_fn(rows[:0])
    return out.reshape(lead_shape)


def combine_shard_entropy(row_max: torch.Tensor, exp_sum: torch.Tensor, exp_dot: torch.Tensor) -> torch.Tensor:
    """Entropy of rows whose logits ``z`` are split over vocabulary shards, from per-row statistics.

    With ``m = max_v z_v`` (over all shards), ``s = sum_v exp(z_v - m)`` and
    ``t = sum_v exp(z_v - m) * z_v`` (each summed over all shards):
    ``H = logsumexp(z) - sum_v softmax(z)_v z_v = m + log(s) - t / s``.
    """
    return row_max + exp_sum.log() - exp_dot / exp_sum


@torch.no_grad()
def vocab_parallel_entropy_no_grad(
    local_logits: torch.Tensor,
    group,
    temperature: torch.Tensor | float | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Entropy of ``[rows, vocab]`` logits sharded on the vocabulary over ``group``, without gathering them.

    Each rank holds ``local_logits`` (``[rows, vocab / tp]``, its vocabulary slice). Per chunk of
    rows, two all-reduces of ``rows`` values (the row max, then the two sums of
    :func:`combine_shard_entropy`) replace the ``[rows, vocab]`` all-gather of
    ``DTensor.full_tensor()``. Equal to :func:`entropy_no_grad` on the full logits up to
    floating-point summation order. ``temperature`` is ``None``/a float or a per-row tensor of
    shape ``[rows]`` or ``[rows, 1]``.
    """
    import torch.distributed as dist

    n_rows, vocab = local_logits.shape
    step = effective_chunk_rows(vocab, chunk_size, local_logits.device)
    temps = _row_temperatures(temperature, local_logits.shape[:-1], local_logits.device)
    out = torch.empty(n_rows, dtype=torch.float32, device=local_logits.device)
    for start, end in _chunk_bounds(n_rows, step):
        block = _scale_rows(local_logits[start:end].float(), temps, start, end)
        row_max = block.max(dim=-1).values
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        shifted = (block - row_max.unsqueeze(-1)).exp()
        sums = torch.stack([shifted.sum(dim=-1), (shifted * block).sum(dim=-1)])
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
        out[start:end] = combine_shard_entropy(row_max, sums[0], sums[1])
    return out
