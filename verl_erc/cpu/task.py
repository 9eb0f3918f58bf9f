"""The CPU demo's toy task: add one to a digit, scored by an exact checker.

A prompt is ``"3+1="`` (as one user chat message); the answer is the sum, a single digit. The
checker is exact: 1.0 when the response, stripped of surrounding whitespace, is the sum's
digits and nothing else, else 0.0 (a lenient "first number in the text" rule would reward
rambling guesses). The demo model starts out answering with one
uniformly random digit (see :mod:`verl_erc.cpu.assets`), so it scores ~0.1 and GRPO-style group
advantages get a signal from step one; it learns the nine sums within a few dozen steps.
(Two free digits, ``a + b``, take a tiny model from scratch far longer than a laptop demo allows.)

:func:`compute_score` is verl's ``custom_reward_function`` signature; configs point at it with
``reward.custom_reward_function.path=pkg://verl_erc.cpu.task``.
"""

from __future__ import annotations

import random
from pathlib import Path

DATA_SOURCE = "verl_erc/digit_sum"


def pairs() -> list[tuple[int, int]]:
    """The task's ``(a, b)`` operands: ``a + 1`` for every digit ``a`` whose successor is a digit."""
    return [(a, 1) for a in range(9)]


def question(a: int, b: int) -> str:
    """The user message for ``a + b``."""
    return f"{a}+{b}="


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """1.0 when the response (decoded without special tokens, whitespace-stripped) is exactly ``ground_truth``."""
    if data_source != DATA_SOURCE:
        raise ValueError(f"verl_erc.cpu.task scores data_source {DATA_SOURCE!r} only, got {data_source!r}")
    return 1.0 if solution_str.strip() == str(ground_truth).strip() else 0.0


def _row(a: int, b: int, split: str, index: int) -> dict:
    """One row in the layout verl's RL dataset reads (chat prompt, data_source, reward_model, ...)."""
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": question(a, b)}],
        "ability": "arithmetic",
        "reward_model": {"style": "rule", "ground_truth": str(a + b)},
        "extra_info": {"split": split, "index": index, "a": a, "b": b},
    }


def write_parquet(out_dir: Path, repeats: int = 64, seed: int = 0) -> dict[str, Path]:
    """Write ``train.parquet`` (every pair ``repeats`` times, shuffled) and ``val.parquet`` (each once)."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    train_pairs = pairs() * repeats
    random.Random(seed).shuffle(train_pairs)
    files = {"train": out_dir / "train.parquet", "val": out_dir / "val.parquet"}
    for split, split_pairs in (("train", train_pairs), ("val", pairs())):
        rows = [_row(a, b, split, i) for i, (a, b) in enumerate(split_pairs)]
        pd.DataFrame(rows).to_parquet(files[split], index=False)
    return files
