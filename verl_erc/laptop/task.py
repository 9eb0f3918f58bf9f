"""The rehearsals' toy task, in the paper's data schema: multiply a digit by one, answer in ``\\boxed{}``.

A problem is ``"What is 3 * 1?"`` (or ``"Compute 3 * 1."``); the answer is the product, the digit itself.
:func:`write_sources` writes it as the paper's *source* files, in their hub schemas: the training
set as KlearReasoner-MathSub-30K rows (chat ``prompt``, ``reward_model.ground_truth``), and two held-out
validation sources as AIME24 and MATH500 rows (``problem``, ``answer``), each in a phrasing no training
prompt uses (``"Find 3 * 1."``, ``"Multiply 3 by 1."``): the same ten operands, so they measure whether
what the model learned carries over to prompts it never trained on, not whether it learned new operands.
:func:`prepare` converts them with the converter users run (``python -m verl_erc.data``), which adds the
paper's instruction and the benchmarks' ``__rollout_n__`` (avg@32, avg@4), then names the validation
sources for what they are (:data:`HELDOUT`: ``toy_heldout_avg32``, ``toy_heldout_avg4``), so no report
of a rehearsal reads as an AIME24 or MATH500 score. The recipes' reward (:mod:`verl_erc.reward`,
math-verify on the last ``\\boxed{}``) grades the responses.

The toy model (:mod:`verl_erc.laptop.assets`) is warmed up on the *format* of a response only: it
restates the problem (``3 times one is``), closes that "thinking" with ``</think>`` as DeepSeek-R1's
distilled models do (the official recipes' reward grades only what follows it), answers ``\\boxed{d}``
with a random digit ``d``, then runs on with filler words, mostly a few and now and then many. So responses vary in length, a few
run into the rehearsals' length limit (the overlong penalty acts without dominating the reward),
and the reward starts at ~0.1, leaving GRPO groups mixed often enough for dynamic sampling to
keep and to drop. To answer, the model has to carry the operand it already restates into the box,
which it learns from a couple of thousand rollouts at lr 1e-4. (An earlier version asked for
``a + 1``: learning the successor of each digit took lr 2e-4, where runs drifted into minutes-long
DAPO refills or collapsed.)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd

from verl_erc import data
from verl_erc.reward import THINK_END

#: the training set's phrasings of a problem
TRAIN_PHRASINGS = ("What is {a} * 1?", "Compute {a} * 1.")
#: validation source -> (the benchmark whose schema and avg@k it is converted as, its phrasing, in no training prompt)
HELDOUT = {
    "toy_heldout_avg32": ("aime24", "Find {a} * 1."),
    "toy_heldout_avg4": ("math500", "Multiply {a} by 1."),
}
#: words of a response's filler "reasoning"
FILLER = ("so", "we", "add", "one", "to", "the", "digit", "then", "it", "is")
#: number of filler words in the warm-up responses: exponential with this mean, capped
FILLER_MEAN, FILLER_MAX = 5, 30


def digits() -> list[int]:
    """The task's operands ``a``."""
    return list(range(10))


def answer(a: int) -> int:
    """The answer to the problem on operand ``a``: ``a * 1``."""
    return a


def questions(a: int) -> list[str]:
    """The training set's phrasings of the problem ``a * 1``."""
    return [p.format(a=a) for p in TRAIN_PHRASINGS]


def heldout_questions(a: int) -> list[str]:
    """The validation sources' phrasings of the problem ``a * 1`` (none is a training prompt)."""
    return [phrasing.format(a=a) for _, phrasing in HELDOUT.values()]


def response(rng: random.Random, a: int) -> str:
    """A response in the task's format for operand ``a``: it restates the problem (its "thinking", closed by
    ``</think>`` as a reasoning model's is), answers a random digit in ``\\boxed{}``, then runs on with filler words
    (mostly a few, now and then many)."""
    words = [rng.choice(FILLER) for _ in range(min(FILLER_MAX, int(rng.expovariate(1 / FILLER_MEAN))))]
    return " ".join([f"{a} times one is {THINK_END} \\boxed{{{rng.randrange(10)}}}", *words])


def write_sources(raw_dir: Path, repeats: int = 32, seed: int = 0) -> dict[str, Path]:
    """Write the training set and the held-out validation sources in the hub schemas :mod:`verl_erc.data` reads;
    keyed by the converter's dataset names (``train``, ``aime24``, ``math500``)."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    train = [(a, q) for a in digits() for q in questions(a)] * repeats
    rng.shuffle(train)
    rows = {
        data.TRAIN: [
            {
                "data_source": "toy_times_one",
                "prompt": [{"content": q, "role": "user"}],
                "ability": "math",
                "reward_model": {"ground_truth": str(answer(a)), "style": "rule"},
            }
            for a, q in train
        ],
        **{
            schema: [{"problem": phrasing.format(a=a), "answer": str(answer(a))} for a in digits()]
            for schema, phrasing in HELDOUT.values()
        },
    }
    files = {}
    for name, records in rows.items():
        files[name] = raw_dir / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in records))
    return files


def prepare(raw_dir: Path, out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write the sources, convert them with ``python -m verl_erc.data``, then name the validation sources
    :data:`HELDOUT`'s names in ``val.parquet``; return ``train``/``val`` parquet paths."""
    files = write_sources(raw_dir, seed=seed)
    argv = ["--out-dir", str(out_dir), "--only", *files]
    for name, path in files.items():
        argv += ["--source", f"{name}={path}"]
    if data.main(argv) != 0:
        raise RuntimeError(f"python -m verl_erc.data {' '.join(argv)} failed")
    val = []
    for name, (schema, _) in HELDOUT.items():
        converted = out_dir / f"{schema}.parquet"
        val.append(pd.read_parquet(converted).assign(data_source=name))
        converted.unlink()  # a file named for the real benchmark must not outlive the rename
    paths = {"train": out_dir / "train.parquet", "val": out_dir / "val.parquet"}
    pd.concat(val, ignore_index=True).to_parquet(paths["val"], index=False)
    return paths
