"""A run's checkpoints as verl writes them, and which one a relaunch resumes from.

verl's V1 trainer saves step N into ``<trainer.default_local_dir>/global_step_N/`` in this order
(``PPOTrainer._save_checkpoint``): the actor's (and critic's) shards, then ``data.pt`` (the
dataloader's state), then the pointer ``latest_checkpointed_iteration.txt``, written in place. So:

- a ``global_step_N`` folder is **complete** when its ``data.pt``, the last file verl writes into
  it, is whole (``torch.save`` writes a zip archive, whose central directory comes last: a file cut
  short by a kill is not a valid zip);
- the pointer can be missing (a kill between ``data.pt`` and the pointer), empty or cut short (a
  kill while writing it: verl's ``int(f.read())`` then fails every relaunch), or point to a folder
  that is gone or incomplete (verl then prints "Training from scratch").

:func:`resume_point` takes the newest complete folder in every case and says how it differs from
the pointer; :mod:`verl_erc.run.launch` passes it to verl as ``trainer.resume_from_path`` when it does.

It imports nothing heavy: the Slurm job's requeue decision (:mod:`verl_erc.cluster.requeue`) reads it.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

POINTER = "latest_checkpointed_iteration.txt"
#: written last into a step's folder (after the actor's and critic's shards)
LAST_WRITTEN = "data.pt"
_STEP_DIR = re.compile(r"global_step_(\d+)")


def step_folders(checkpoint_dir: Path) -> dict[int, Path]:
    """``global_step_N`` folders under ``checkpoint_dir``, by step."""
    if not checkpoint_dir.is_dir():
        return {}
    folders = {}
    for path in checkpoint_dir.iterdir():
        match = _STEP_DIR.fullmatch(path.name)
        if match and path.is_dir():
            folders[int(match.group(1))] = path
    return folders


def is_complete(step_folder: Path) -> bool:
    """True when verl finished writing ``step_folder`` (its ``data.pt`` is a whole archive, next to ``actor/``)."""
    last = step_folder / LAST_WRITTEN
    return (step_folder / "actor").is_dir() and last.is_file() and zipfile.is_zipfile(last)


def read_pointer(checkpoint_dir: Path) -> tuple[int | None, str | None]:
    """The step verl's pointer names, and what is wrong with it (None when it is a step number)."""
    path = checkpoint_dir / POINTER
    if not path.exists():
        return None, "missing"
    text = path.read_text(errors="replace").strip()
    if not text.isdigit():
        return None, f"not a step number ({text[:40]!r}: cut short by a kill?)"
    return int(text), None


@dataclass(frozen=True)
class ResumePoint:
    """Where a launch starts: ``step`` 0 and ``folder`` None for a fresh run."""

    step: int
    folder: Path | None
    #: why it is not the folder verl's pointer names (None when it is, or when there is nothing to resume)
    pointer_problem: str | None
    #: ``global_step_N`` folders that are not complete (a save cut short)
    incomplete: tuple[Path, ...]


def resume_point(checkpoint_dir: Path) -> ResumePoint:
    """The newest complete checkpoint under ``checkpoint_dir``, and how verl's pointer disagrees with it."""
    folders = step_folders(checkpoint_dir)
    incomplete = tuple(folders[step] for step in sorted(folders) if not is_complete(folders[step]))
    complete = [step for step in sorted(folders) if is_complete(folders[step])]
    pointed, problem = read_pointer(checkpoint_dir)
    if not complete:
        if pointed is not None:
            problem = f"names step {pointed}, but no complete checkpoint exists"
        elif problem == "missing":
            problem = None  # nothing saved yet: nothing to point to
        return ResumePoint(0, None, problem, incomplete)
    step = complete[-1]
    if problem is None and pointed != step:
        if pointed not in folders:
            problem = f"names step {pointed}, whose folder global_step_{pointed} does not exist"
        elif pointed in complete:
            problem = f"names step {pointed}, but step {step} is newer and complete"
        else:
            problem = f"names step {pointed}, whose folder is incomplete (no whole {LAST_WRITTEN})"
    return ResumePoint(step, folders[step], problem, incomplete)


def newest_complete_step(checkpoint_dir: Path) -> int:
    """Step of the newest complete checkpoint, 0 when there is none."""
    return resume_point(checkpoint_dir).step
