"""Which runs are seeds of one group, and which group is an ERC run's baseline.

A run is labelled by its path relative to the runs' common parent. Runs of one recipe and different seeds form a
group: ``<recipe>-seed<N>`` (also ``_seed<N>`` and ``<recipe>/seed<N>``: :func:`verl_erc.recipes.split_run_name`)
joins group ``<recipe>``, and ``--group NAME=RUN,RUN,...`` names one. An ERC group ``erc_<name>`` is paired with the
baseline group ``<name>`` (the prefix may start any path component), or as ``--pair ERC=BASE``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from verl_erc.recipes import split_run_name
from verl_erc.report.runlogs import RunLog, RunLogError

ERC_PREFIXES = ("erc_", "erc-")


def run_labels(paths: list[Path]) -> list[str]:
    """Each run's path relative to the common parent of all runs (a metrics file without ``.jsonl``)."""
    resolved = [Path(p).resolve() for p in paths]
    if len(set(resolved)) != len(resolved):
        raise RunLogError("the same run is given twice")
    common = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    return [p.relative_to(common).as_posix().removesuffix(".jsonl") for p in resolved]


def pair_runs(labels: list[str], explicit: list[str]) -> dict[str, str]:
    """ERC name -> baseline name (of runs or groups), by name (``erc_`` prefix) and from ``ERC=BASE`` specs."""
    pairs = {}
    for label in labels:
        parts = label.split("/")
        for i, part in enumerate(parts):
            prefix = next((p for p in ERC_PREFIXES if part.startswith(p)), None)
            base = "/".join([*parts[:i], part[len(prefix) :], *parts[i + 1 :]]) if prefix else None
            if base in labels:
                pairs[label] = base
    for spec in explicit:
        erc, sep, base = spec.partition("=")
        if not sep or erc not in labels or base not in labels or erc == base:
            raise RunLogError(f"--pair {spec!r}: expected ERC=BASE, two different names among {labels}")
        pairs[erc] = base
    return pairs


def group_runs(labels: list[str], specs: list[str]) -> dict[str, dict[int | str, str]]:
    """Group name -> {seed: run label}, groups in the order of their first run.

    ``NAME=RUN,RUN,...`` specs name groups of run labels; any other run ``<recipe>-seed<N>`` (``_seed<N>``,
    ``/seed<N>``) joins group ``<recipe>``, and a run without a seed in its name is a group of its own,
    named by its label. A run whose name holds no seed is keyed by its label, so it pairs with no seed.
    """
    named: dict[str, str] = {}
    for spec in specs:
        name, sep, members = spec.partition("=")
        runs = members.split(",")
        if not sep or not name or len(set(runs)) < len(runs) or any(r not in labels or r in named for r in runs):
            raise RunLogError(f"--group {spec!r}: expected NAME=RUN,RUN,... with run labels among {labels}, each once")
        named |= dict.fromkeys(runs, name)
    groups: dict[str, dict[int | str, str]] = {}
    for label in labels:
        base, seed = split_run_name(label)  # how verl_erc.recipes names run directories
        name = named.get(label) or base
        seed = label if seed is None else seed
        if seed in groups.setdefault(name, {}):
            raise RunLogError(f"group {name!r}: seed {seed} twice ({groups[name][seed]!r}, {label!r})")
        groups[name][seed] = label
    return groups


@dataclass
class Group:
    """The runs of one group by seed; a group of one run is shown as that run, as without seeds."""

    name: str
    runs: dict[int | str, RunLog]

    @property
    def label(self) -> str:
        return next(iter(self.runs.values())).label if len(self.runs) == 1 else self.name

    @property
    def row(self) -> str:
        return f"`{self.label}`" + (f" (n={len(self.runs)})" if len(self.runs) > 1 else "")
