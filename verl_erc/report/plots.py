"""The report's plots: one PNG per training metric with every group's line (a seed group's mean and min-max band),
and one per benchmark's validation score."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from verl_erc.metrics import ALL_GENERATED, ENTROPY, GRAD_NORM, PG_CLIPFRAC, RESPONSE_LENGTH, SCORE
from verl_erc.report.grouping import Group
from verl_erc.report.tables import ERC_CLIPFRACS, Validation

#: the training reward: verl's score over the groups DAPO kept, and the accuracy over every generated response
REWARDS = {
    SCORE: ("score, groups kept", "-"),
    ALL_GENERATED: ("accuracy, all generated", "--"),
}

def _figure(title: str, ylabel: str) -> tuple[Figure, object]:
    fig = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _color(i: int):
    return matplotlib.colormaps["tab10"](i % 10)


def _logged(frames: list[pd.DataFrame], key: str) -> list[pd.Series]:
    return [frame[key].dropna() for frame in frames if key in frame and frame[key].notna().any()]


def _draw(ax, series: list[pd.Series], color, label: str, **style) -> None:
    """One run's series as a line; several seeds' as their mean (at the steps all logged) and a min–max band."""
    frame = pd.concat(series, axis=1).dropna()
    if len(series) > 1:
        label = f"{label}: mean of {len(series)} seeds, band min–max"
        ax.fill_between(frame.index, frame.min(axis=1), frame.max(axis=1), color=color, alpha=0.2, linewidth=0)
    ax.plot(frame.index, frame.mean(axis=1).values, color=color, label=label, linewidth=1.2, **style)


def plot_lines(groups: list[Group], lines: dict[str, tuple[str, str]], title: str, ylabel: str, path: Path) -> bool:
    """One line (and seed band) per group and metric (``lines``: key -> (name, or "" for a plot of one metric;
    line style)), one colour per group; False (nothing written) if no group logged any."""
    fig, ax = _figure(title, ylabel)
    drawn = False
    for i, group in enumerate(groups):
        for key, (name, style) in lines.items():
            series = _logged([run.scalars for run in group.runs.values()], key)
            if series:
                _draw(ax, series, _color(i), f"{group.label} ({name})" if name else group.label, linestyle=style)
                drawn = True
    if drawn:
        ax.legend(fontsize="small")
        fig.savefig(path)
    return drawn


def _points(ax, series: list[pd.Series], color, label: str, offset: float) -> None:
    """One run's values as points; several seeds' as their mean with min–max bars (``offset`` steps aside)."""
    frame = pd.concat(series, axis=1).dropna()
    middle = frame.mean(axis=1)
    spread = [middle - frame.min(axis=1), frame.max(axis=1) - middle]
    if len(series) > 1:
        label = f"{label}: mean of {len(series)} seeds, bars min–max"
    ax.errorbar(frame.index + offset, middle.values, yerr=spread if len(series) > 1 else None, color=color,
                label=label, fmt="o", capsize=3)


def plot_benchmark(groups: list[Group], vals: dict[str, Validation], bench: str, path: Path) -> bool:
    """Validation score x100 of ``bench`` over training steps, one line (and seed band) per group; with at most
    :data:`POINTS_UP_TO` validation steps, points (and min–max bars), side by side. True if drawn as points."""
    keys = sorted({val.keys[bench] for val in vals.values() if bench in val.keys})
    fig, ax = _figure(f"{bench}: {', '.join(k.split('/', 2)[2] for k in keys)}", "score ×100")
    steps = {step for val in vals.values() if bench in val.scores for step in val.scores[bench].dropna().index}
    width = (max(steps) - min(steps) or 1) * 0.01 if steps else 0
    points = len(steps) <= POINTS_UP_TO
    for i, group in enumerate(groups):
        series = [100 * s for s in _logged([vals[run.label].scores for run in group.runs.values()], bench)]
        if series and points:
            _points(ax, series, _color(i), group.label, (i - (len(groups) - 1) / 2) * width)
        elif series:
            _draw(ax, series, _color(i), group.label, marker="o")
    ax.legend(fontsize="small")
    fig.savefig(path)
    return points


def plot_caption(groups: list[Group], points: bool = False) -> str:
    """How a plot draws seed groups (empty if every group is one run)."""
    if all(len(group.runs) == 1 for group in groups):
        return ""
    if points:
        return "*Each point: a group's mean over its seeds; bars: the min–max over its seeds.*"
    return "*Each line: a group's mean over its seeds; shaded: the min–max over its seeds.*"


#: validation drawn as points (not lines) when it ran at this many steps or fewer
POINTS_UP_TO = 2
#: (file, lines of :func:`plot_lines`, title, y label) of each plot, in the report's order
PLOTS = [
    ("reward.png", REWARDS, "Training reward", "reward"),
    ("entropy.png", {ENTROPY: ("", "-")}, "Policy entropy", "entropy (nats)"),
    ("grad_norm.png", {GRAD_NORM: ("", "-")}, "Gradient norm (before clipping)", "gradient norm"),
    ("pg_clipfrac.png", {PG_CLIPFRAC: ("", "-")}, "PPO clip fraction", "fraction of response tokens"),
    ("response_length.png", {RESPONSE_LENGTH: ("", "-")}, "Mean response length", "tokens"),
    ("erc_clipfrac.png", ERC_CLIPFRACS, "ERC clip fraction", "fraction of response tokens"),
]
