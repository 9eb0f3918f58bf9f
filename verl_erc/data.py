"""``python -m verl_erc.data``: the paper's training set and six benchmarks as verl parquet files.

Training data is KlearReasoner-MathSub-30K; validation is AIME24, AIME25, HMMT25, AMC23 (avg@32)
and MATH500, OlympiadBench (avg@4) (arXiv 2512.05591, section 4.1). Every row gets the prompt
DeepSeek-R1-Distill models expect: one user turn holding the problem and
``Please reason step by step, and put your final answer within \\boxed{}.`` Validation rows carry
``data_source`` (one name per benchmark, so verl reports each separately) and ``__rollout_n__``
(the k of avg@k: verl's V1 trainer samples that many responses for the row).

Sources are hub datasets (``datasets.load_dataset``) or local ``.parquet``/``.jsonl``/``.json``
files in the hub schema. A row without a problem or an answer is an error naming its index;
``--skip-bad`` drops such rows and lists them instead.

    python -m verl_erc.data --out-dir data/erc
    python -m verl_erc.data --out-dir data/erc --source aime24=/data/aime24.jsonl --only aime24
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
TRAIN = "train"


@dataclass(frozen=True)
class Spec:
    """Where a dataset lives on the hub and how it is scored."""

    hub_id: str
    split: str
    hub_config: str | None = None
    k: int | None = None  # avg@k for benchmarks; None for the training set


SPECS: dict[str, Spec] = {
    TRAIN: Spec("Kwai-Klear/KlearReasoner-MathSub-30K", "train"),
    "aime24": Spec("HuggingFaceH4/aime_2024", "train", k=32),
    "aime25": Spec("MathArena/aime_2025", "train", k=32),
    "hmmt25": Spec("MathArena/hmmt_feb_2025", "train", k=32),
    "amc23": Spec("math-ai/amc23", "test", k=32),
    "math500": Spec("HuggingFaceH4/MATH-500", "test", k=4),
    "olympiadbench": Spec("Hothan/OlympiadBench", "train", hub_config="OE_TO_maths_en_COMP", k=4),
}
BENCHMARKS = [name for name in SPECS if name != TRAIN]

# column names seen in the hub versions of these datasets, in order of preference
QUESTION_COLUMNS = ("problem", "question", "Problem", "Question")
ANSWER_COLUMNS = ("answer", "final_answer", "Answer")


class DataError(ValueError):
    """Rows that cannot be converted, or a source that cannot be read."""


def load_source(source: str, spec: Spec) -> pd.DataFrame:
    """Read a local file (parquet/jsonl/json) or, if ``source`` is not a path, a hub dataset."""
    path = Path(source).expanduser()
    if path.exists():
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix == ".jsonl":
            return pd.read_json(path, lines=True, dtype=False)
        if path.suffix == ".json":
            text = path.read_text()
            is_array = text.lstrip().startswith("[")
            return pd.read_json(path, lines=not is_array, dtype=False)
        raise DataError(f"{source}: unsupported file type {path.suffix!r} (use .parquet, .jsonl or .json)")
    if path.suffix in (".parquet", ".jsonl", ".json") or source.startswith((".", "/", "~")):
        raise DataError(f"{source}: no such file")
    from datasets import load_dataset

    try:
        return load_dataset(source, spec.hub_config, split=spec.split).to_pandas()
    except Exception as err:  # offline, unknown id, gated, ...
        raise DataError(
            f"{source}: cannot load from the hub ({type(err).__name__}: {err}); "
            "download it and pass --source NAME=LOCAL_FILE"
        ) from err


def _present(value) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return True


def _question(row: dict) -> str | None:
    """The problem text: a plain column, or the last user turn of a chat-format ``prompt``."""
    for col in QUESTION_COLUMNS:
        if _present(row.get(col)):
            return str(row[col]).strip()
    prompt = row.get("prompt")
    if _present(prompt) and not isinstance(prompt, str):
        users = [m["content"] for m in prompt if m.get("role") == "user" and _present(m.get("content"))]
        if users:
            return str(users[-1]).strip()
    if isinstance(prompt, str):
        return prompt.strip()
    return None


def _answer_text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # amc23 stores answers as floats (27.0)
    return re.sub(r"(?<!\\)\$", "", str(value)).strip()  # drop LaTeX math delimiters, keep \$


def _answer(row: dict) -> str | None:
    """The ground truth: an answer column (a list is joined, as OlympiadBench multi-answers) or
    ``reward_model.ground_truth`` (verl format, as KlearReasoner ships it)."""
    for col in ANSWER_COLUMNS:
        value = row.get(col)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if isinstance(value, str):
            return _answer_text(value)
        if hasattr(value, "__len__"):  # list / numpy array of answers
            return ", ".join(_answer_text(v) for v in value if _present(v))
        return _answer_text(value)
    reward_model = row.get("reward_model")
    if isinstance(reward_model, dict) and _present(reward_model.get("ground_truth")):
        return _answer_text(reward_model["ground_truth"])
    return None


def user_prompt(question: str) -> str:
    """The problem followed by DeepSeek-R1-Distill's instruction (not repeated if present)."""
    if question.rstrip().endswith(INSTRUCTION):
        return question.rstrip()
    return f"{question}\n{INSTRUCTION}"


def chat_prompt(question: str) -> list[dict]:
    """The row's ``prompt``: one user turn holding :func:`user_prompt`."""
    return [{"role": "user", "content": user_prompt(question)}]


def convert(frame: pd.DataFrame, name: str, skip_bad: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Rows of ``frame`` as verl rows for dataset ``name``; returns (rows, reports of bad rows).

    Raises :class:`DataError` listing every bad row unless ``skip_bad``.
    """
    spec = SPECS[name]
    rows, bad = [], []
    for index, row in enumerate(frame.to_dict(orient="records")):
        question, answer = _question(row), _answer(row)
        problems = [what for what, value in (("empty problem", question), ("missing answer", answer)) if not value]
        if problems:
            bad.append(f"{name} row {index}: {', '.join(problems)}")
            continue
        out = {
            "data_source": name,
            "prompt": chat_prompt(question),
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": answer},
            "extra_info": {"split": "train" if name == TRAIN else "test", "index": index},
        }
        if spec.k is not None:
            out["__rollout_n__"] = spec.k
        rows.append(out)
    if bad and not skip_bad:
        raise DataError(f"{len(bad)} bad row(s) in {name} (rerun with --skip-bad to drop them):\n  " + "\n  ".join(bad))
    if not rows:
        raise DataError(f"{name}: no usable rows")
    return pd.DataFrame(rows), bad


def prepare(out_dir: Path, names: list[str], sources: dict[str, str], skip_bad: bool = False) -> dict[str, Path]:
    """Convert ``names`` to ``<name>.parquet`` each, then rebuild ``val.parquet`` from every
    benchmark file in ``out_dir`` (so benchmarks can be converted one at a time)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in names:
        spec = SPECS[name]
        frame, bad = convert(load_source(sources.get(name, spec.hub_id), spec), name, skip_bad=skip_bad)
        for report in bad:
            print(f"skipped {report}", file=sys.stderr)
        written[name] = out_dir / f"{name}.parquet"
        frame.to_parquet(written[name], index=False)
        k = f"avg@{spec.k}" if spec.k else "training"
        print(f"{name}: {len(frame)} rows ({k}, {len(bad)} skipped) -> {written[name]}")
    present = [name for name in BENCHMARKS if (out_dir / f"{name}.parquet").exists()]
    if present:
        written["val"] = out_dir / "val.parquet"
        val = pd.concat([pd.read_parquet(out_dir / f"{name}.parquet") for name in present], ignore_index=True)
        val.to_parquet(written["val"], index=False)
        missing = [name for name in BENCHMARKS if name not in present]
        note = f"; not yet converted: {', '.join(missing)}" if missing else ""
        print(f"val: {len(val)} rows from {', '.join(present)} -> {written['val']}{note}")
    return written


def _parse_sources(items: list[str]) -> dict[str, str]:
    sources = {}
    for item in items:
        name, sep, where = item.partition("=")
        if not sep or name not in SPECS or not where:
            raise DataError(f"--source {item!r}: expected NAME=PATH_OR_HUB_ID with NAME in {', '.join(SPECS)}")
        sources[name] = where
    return sources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m verl_erc.data", description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", required=True, type=Path, help="where the parquet files go")
    parser.add_argument(
        "--only", nargs="+", choices=list(SPECS), default=list(SPECS), help="datasets to convert (default: all)"
    )
    parser.add_argument(
        "--source", action="append", default=[], metavar="NAME=PATH_OR_HUB_ID",
        help="read NAME from a local file or another hub id (repeatable); default: "
        + ", ".join(f"{n}={s.hub_id}" for n, s in SPECS.items()),
    )
    parser.add_argument("--skip-bad", action="store_true", help="drop rows without problem/answer, listing them")
    args = parser.parse_args(argv)
    try:
        prepare(args.out_dir, args.only, _parse_sources(args.source), skip_bad=args.skip_bad)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
