"""Token-level records of what PPO-clip and ERC do, for the paper's Figures 1a, 3 and 4.

The ERC loss calls :func:`record_tokens` once per micro-batch when
``actor_rollout_ref.actor.erc.analysis.enable`` is true. An *update* is one such call in this
process (one micro-batch loss evaluation), numbered from 0 when the process starts; a run that
resumes starts again at 0. Calls ``0, n, 2n, ...`` (``n = every_n_updates``) are sampled: up to
``max_tokens`` valid response tokens, drawn uniformly with a private generator (the global RNG is
untouched), are appended as JSON lines to ``path`` (``{rank}`` -> torch.distributed rank, else 0),
until the file holds ``max_records`` lines (lines already there when the process starts count).
With ``k`` micro-batches per mini-batch, ``every_n_updates = k * m`` samples one micro-batch every
``m`` mini-batches. Non-sampled calls only increment a counter; nothing is kept for backward.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from verl_erc.config import ErcAnalysisConfig

# one JSON object per token, these keys:
RECORD_FIELDS = (
    "update",  # index of the loss call in this process (see module docstring)
    "row",  # sequence index in the micro-batch
    "pos",  # token position in the response
    "p_old",  # probability of the sampled token under the old policy
    "p_new",  # ... under the current policy
    "entropy_old",  # H(pi_old, t)
    "entropy_new",  # H(pi_theta, t)
    "entropy_ratio",  # rho_t as the ERC loss computed it
    "ratio",  # importance ratio r_t = exp(clamp(log_prob - old_log_prob, -20, 20)), as verl's PPO loss
    "advantage",
    "ppo_clipped",  # (A > 0 and r > 1 + eps_high) or (A < 0 and r < 1 - eps_low)
    "erc_clip_high",  # ERC dropped it and rho >= 1 (above the band)
    "erc_clip_low",  # ERC dropped it and rho < 1 (below the band)
    "clip_ratio_low",
    "clip_ratio_high",
    "beta_low",
    "beta_high",
)
_FLOAT_DIGITS = 7  # significant digits written (float32 resolution)


@dataclass
class _FileState:
    calls: int
    written: int


_STATE: dict[str, _FileState] = {}


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _count_lines(path: str) -> int:
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as fp:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fp.read(1 << 20), b""))


def record_tokens(
    cfg: ErcAnalysisConfig,
    *,
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    old_entropy: torch.Tensor,
    new_entropy: torch.Tensor,
    entropy_ratio: torch.Tensor,
    keep: torch.Tensor,
    response_mask: torch.Tensor,
    clip_ratio_low: float,
    clip_ratio_high: float,
    beta_low: float,
    beta_high: float,
) -> None:
    """Count this loss call and, on sampled calls, append token records (``[batch, response_len]`` inputs)."""
    if not cfg.enable:
        return
    tensors = {
        "log_prob": log_prob,
        "old_log_prob": old_log_prob,
        "advantages": advantages,
        "old_entropy": old_entropy,
        "new_entropy": new_entropy,
        "entropy_ratio": entropy_ratio,
        "keep": keep,
    }
    for name, tensor in tensors.items():
        if tensor.shape != response_mask.shape:
            raise ValueError(
                f"record_tokens: {name} has shape {tuple(tensor.shape)}, response_mask {tuple(response_mask.shape)}"
            )
    rank, world = _rank_and_world()
    if world > 1 and "{rank}" not in cfg.path:
        raise ValueError(f"erc.analysis.path={cfg.path!r} needs '{{rank}}' with {world} ranks (one file per rank)")
    path = cfg.path.replace("{rank}", str(rank))
    state = _STATE.get(path)
    if state is None:
        state = _STATE[path] = _FileState(calls=0, written=_count_lines(path))
    update = state.calls
    state.calls += 1
    if update % cfg.every_n_updates or state.written >= cfg.max_records:
        return

    with torch.no_grad():
        rows, cols = response_mask.bool().nonzero(as_tuple=True)
        n = min(rows.numel(), cfg.max_tokens, cfg.max_records - state.written)
        if rows.numel() > n:
            generator = torch.Generator().manual_seed(update)
            pick = torch.randperm(rows.numel(), generator=generator)[:n].sort().values.to(rows.device)
            rows, cols = rows[pick], cols[pick]
        values = torch.stack([t.detach()[rows, cols].float() for t in tensors.values()], dim=1).cpu()
    lp, olp, adv, h_old, h_new, rho, kept = values.unbind(dim=1)
    ratio = torch.exp(torch.clamp(lp - olp, -20.0, 20.0))
    ppo_clipped = ((adv > 0) & (ratio > 1 + clip_ratio_high)) | ((adv < 0) & (ratio < 1 - clip_ratio_low))
    dropped = kept == 0
    columns = {
        "p_old": olp.exp(),
        "p_new": lp.exp(),
        "entropy_old": h_old,
        "entropy_new": h_new,
        "entropy_ratio": rho,
        "ratio": ratio,
        "advantage": adv,
        "ppo_clipped": ppo_clipped,
        "erc_clip_high": dropped & (rho >= 1),
        "erc_clip_low": dropped & (rho < 1),
    }
    columns = {k: v.tolist() for k, v in columns.items()}
    constants = {
        "clip_ratio_low": clip_ratio_low,
        "clip_ratio_high": clip_ratio_high,
        "beta_low": beta_low,
        "beta_high": beta_high,
    }
    lines = []
    for i, (row, pos) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        record = {"update": update, "row": row, "pos": pos}
        for key, column in columns.items():
            value = column[i]
            record[key] = value if isinstance(value, bool) else float(f"{value:.{_FLOAT_DIGITS}g}")
        record.update(constants)
        lines.append(json.dumps(record) + "\n")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as fp:
        fp.write("".join(lines))
    state.written += len(lines)
