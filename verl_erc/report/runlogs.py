"""A run's scalar metrics, read from the logs verl's ``Tracking`` writes (file logger and TensorBoard).

A RUN is a directory (our recipes: ``$ERC_RUNS_DIR/<recipe>-seed<N>`` with ``metrics/<launch>.jsonl``
and ``tensorboard/``); every file under it (recursively) is considered:

* verl file-logger files: ``*.jsonl`` whose first line is ``{"step": <int>, "data": {...}}``, the
  schema of ``verl.utils.tracking.FileLogger`` (one line per ``Tracking.log`` call, written to
  ``$VERL_FILE_LOGGER_PATH``, default ``$VERL_FILE_LOGGER_ROOT/<project>/<experiment>.jsonl``).
  Other JSONL files (generation dumps, ERC token records) are skipped.
* TensorBoard event files ``events.out.tfevents.*`` (verl's tensorboard backend writes them to
  ``$TENSORBOARD_DIR``, default ``tensorboard_log/<project>/<experiment>``), read with
  tensorboard's ``EventAccumulator`` keeping every scalar.

A RUN may also be one file-logger JSONL file (e.g. ``outputs/<project>/<experiment>.jsonl`` when
only ``$VERL_FILE_LOGGER_ROOT`` is set, where several experiments share a directory).

Merge order: event directories (by path), then JSONL files (oldest modification time first); for
each (metric, step) the value read last wins. So the full-precision JSONL value wins where both
hold a step, a resumed run keeps the steps TensorBoard holds from before the resume (verl's
FileLogger reopens its file with ``"wb"``, truncating it), and a step logged again after a resume
takes its newer value. A run still being written is fine: a truncated last JSONL line is skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

TB_EVENT_GLOB = "events.out.tfevents.*"
FILE_LOGGER_LINE = 'lines {"step": N, "data": {...}}'


class RunLogError(ValueError):
    """A run that cannot be read; the message names it."""


@dataclass
class RunLog:
    """One run's metrics: ``scalars`` has one row per logged step and one column per metric key."""

    label: str
    path: Path
    files: list[Path]
    scalars: pd.DataFrame


def first_json_object(path: Path) -> dict | None:
    """The JSON object on the first line of ``path``, or None when that line is not one."""
    with path.open("rb") as fp:
        first = fp.readline()
    try:
        record = json.loads(first)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _is_file_logger_jsonl(path: Path) -> bool:
    record = first_json_object(path)
    return record is not None and isinstance(record.get("step"), int) and isinstance(record.get("data"), dict)


def find_metric_files(run: Path) -> tuple[list[Path], list[Path]]:
    """verl file-logger JSONL files (oldest first) and TensorBoard event directories under ``run``."""
    jsonl = [p for p in run.rglob("*.jsonl") if p.is_file() and _is_file_logger_jsonl(p)]
    jsonl.sort(key=lambda p: (p.stat().st_mtime, str(p)))
    tb_dirs = sorted({p.parent for p in run.rglob(TB_EVENT_GLOB) if p.is_file()})
    return jsonl, tb_dirs


def _as_float(value) -> float | None:
    if isinstance(value, bool | int | float):
        return float(value)
    return None


def _read_jsonl(path: Path, series: dict[str, dict[int, float]]) -> None:
    lines = path.read_bytes().split(b"\n")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step, data = int(record["step"]), record["data"]
        except (ValueError, KeyError, TypeError) as err:
            if lineno == len(lines):  # last line with no newline: a write still in progress
                continue
            raise RunLogError(f"{path}:{lineno}: not a verl file-logger line ({err})") from err
        for key, value in data.items():
            number = _as_float(value)
            if number is not None:
                series.setdefault(key, {})[step] = number


def _read_tensorboard(directory: Path, series: dict[str, dict[int, float]]) -> None:
    acc = EventAccumulator(str(directory), size_guidance={SCALARS: 0})
    acc.Reload()
    for tag in acc.Tags()[SCALARS]:
        column = series.setdefault(tag, {})
        for event in acc.Scalars(tag):
            column[int(event.step)] = float(event.value)


def load_run(path: Path, label: str) -> RunLog:
    """Read every metric of the run directory (or file-logger file) ``path``, as the module docstring says."""
    path = Path(path)
    if path.is_file():
        if not _is_file_logger_jsonl(path):
            raise RunLogError(f"run {label!r}: {path} is not a verl file-logger JSONL ({FILE_LOGGER_LINE})")
        jsonl, tb_dirs = [path], []
    elif path.is_dir():
        jsonl, tb_dirs = find_metric_files(path)
    else:
        raise RunLogError(f"run {label!r}: {path} does not exist")
    series: dict[str, dict[int, float]] = {}
    for directory in tb_dirs:
        _read_tensorboard(directory, series)
    for file in jsonl:
        _read_jsonl(file, series)
    if not series:
        raise RunLogError(
            f"run {label!r}: no metrics in {path}: found no verl file-logger JSONL "
            f"({FILE_LOGGER_LINE}) and no TensorBoard scalars ({TB_EVENT_GLOB}) under it"
        )
    scalars = pd.DataFrame({key: pd.Series(values, dtype=float) for key, values in series.items()}).sort_index()
    scalars.index = scalars.index.astype(int)
    scalars.index.name = "step"
    return RunLog(label=label, path=path, files=[*tb_dirs, *jsonl], scalars=scalars)

