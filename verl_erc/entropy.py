"""Current-policy entropy for ERC's mask, computed without an autograd graph.

ERC (eq. 8-9) only needs H(pi_theta, t) to decide which tokens keep their gradient, so this
module computes it under ``torch.no_grad`` in row chunks of the logits: the extra memory is one
``[chunk_size x vocab]`` block, never a ``[tokens x vocab]`` activation kept for backward.
The per-row formula is verl's own ``entropy_from_logits``, so the value matches the old-policy
entropy that verl computes in its old-log-prob pass (same dtype, same arithmetic).
"""

from __future__ import annotations

import torch
from verl.utils.torch_functional import entropy_from_logits

DEFAULT_CHUNK_SIZE = 256


@torch.no_grad()
def entropy_no_grad(
    logits: torch.Tensor,
    temperature: torch.Tensor | float | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Entropy over the vocabulary of each row of ``logits`` (``[..., vocab]`` -> ``[...]``).

    ``temperature`` is ``None``/a float, or a tensor broadcastable to ``logits.shape[:-1]``
    (one value per row, as verl passes ``temperature_rmpad``). Logits are divided by it first,
    exactly as the log-probs the loss uses are.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    lead_shape = logits.shape[:-1]
    rows = logits.reshape(-1, logits.shape[-1])
    temps = None
    if isinstance(temperature, torch.Tensor):
        temps = temperature.expand(lead_shape).reshape(-1)
    elif temperature is not None and float(temperature) != 1.0:
        temps = torch.full((rows.shape[0],), float(temperature), device=rows.device)
    out = torch.empty(rows.shape[0], dtype=rows.dtype, device=rows.device)
    for start in range(0, rows.shape[0], chunk_size):
        block = rows[start : start + chunk_size]
        if temps is not None:
            block = block / temps[start : start + chunk_size].clamp(min=1e-8).to(block.dtype).unsqueeze(-1)
        out[start : start + chunk_size] = entropy_from_logits(block)
    return out.reshape(lead_shape)
