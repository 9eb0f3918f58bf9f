"""``python -m verl_erc.compare RUN [RUN ...] --out DIR``: ERC runs against their baselines.

Writes ``DIR/report.md`` and the same report as ``DIR/report.html`` (it shows the PNGs beside it):
the paper's Table 1 from the last and from the best validation step, training-stability figures,
and one PNG per metric with all runs overlaid. Each RUN (a run directory, or one metrics JSONL) is
read as described in :mod:`verl_erc.report.runlogs`; a run is labelled by its path relative to the runs'
common parent directory.

Runs of one recipe and different seeds form a group: ``<recipe>-seed<N>`` (also ``_seed<N>`` and
``<recipe>/seed<N>``) joins group ``<recipe>``, and ``--group NAME=RUN,RUN,...`` names one. An ERC group
``erc_<name>`` is paired with the baseline group ``<name>`` (``erc_dapo_7b`` <-> ``dapo_7b``; the prefix may
start any path component), or as ``--pair ERC=BASE``. A group's table cell is its mean over seeds with a
95% Student-t interval; an ERC-minus-baseline difference is a paired t interval and test on the seeds both
groups ran (the same seed is the same data order), else Welch's unpaired one. A group of one run reports
as that run alone, as without seeds.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

import markdown
import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from verl_erc.report import runlogs
from verl_erc.metrics import ALL_GENERATED
from verl_erc.report.runlogs import RunLog, RunLogError, load_run
from verl_erc.recipes import split_run_name
from verl_erc.report.stats import CONFIDENCE, Estimate, difference, seed_mean

ENTROPY = "actor/entropy"
GRAD_NORM = "actor/grad_norm"
PG_CLIPFRAC = "actor/pg_clipfrac"
ERC_CLIPFRACS = {
    "actor/erc_clipfrac": ("all", "-"),
    "actor/erc_clipfrac_high": ("above band", "--"),
    "actor/erc_clipfrac_low": ("below band", ":"),
}
RESPONSE_LENGTH = "response_length/mean"
SCORE = "critic/score/mean"
#: the training reward: verl's score over the groups DAPO kept, and the accuracy over every generated response
REWARDS = {
    SCORE: ("score, groups kept", "-"),
    ALL_GENERATED: ("accuracy, all generated", "--"),
}
#: (label, metric key) of the step-window table (``--windows``): each the mean over the window's logged steps
WINDOW_METRICS = [
    ("training reward (score, groups kept)", SCORE),
    ("training accuracy (all generated)", ALL_GENERATED),
    ("policy entropy", ENTROPY),
    ("gradient norm (before clipping)", GRAD_NORM),
    ("groups DAPO dropped per step", "training/filter_groups/evicted_samples"),
    ("step time (s)", "timing_s/step"),
]
# verl's trainer (_val_metrics_update) logs val-core/<data_source>/<acc|reward>/mean@<n> among others
VAL_CORE = re.compile(r"^val-core/(?P<bench>.+)/(?P<var>[^/]+)/mean@(?P<n>\d+)$")
ERC_PREFIXES = ("erc_", "erc-")
SPIKE_MIN_HISTORY = 5
DASH = "–"
SIGNIFICANT = "†"


@dataclass
class Validation:
    """A run's benchmark scores: ``scores`` has one row per validation step, one column per benchmark."""

    scores: pd.DataFrame
    keys: dict[str, str]

    def pick(self, which: str) -> tuple[int, dict[str, float], float] | None:
        """(step, scores, average) of the ``last`` validation step or the ``best`` (highest average, earliest)."""
        if self.scores.empty:
            return None
        avg = self.scores.mean(axis=1, skipna=False)
        step = avg.idxmax() if which == "best" and avg.notna().any() else self.scores.index[-1]
        return int(step), self.scores.loc[step].dropna().to_dict(), float(avg.loc[step])


def validation(run: RunLog) -> Validation:
    """The ``val-core/<bench>/<var>/mean@N`` series of ``run``; per benchmark the largest N (then ``acc``)."""
    chosen: dict[str, tuple[tuple[int, bool], str]] = {}
    for key in run.scalars.columns:
        match = VAL_CORE.match(key)
        if match:
            rank = (int(match["n"]), match["var"] == "acc")
            if match["bench"] not in chosen or rank > chosen[match["bench"]][0]:
                chosen[match["bench"]] = (rank, key)
    keys = {bench: key for bench, (_, key) in sorted(chosen.items())}
    scores = run.scalars[list(keys.values())].dropna(how="all")
    scores.columns = list(keys)
    return Validation(scores=scores, keys=keys)


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


def stability(run: RunLog, spike_factor: float, spike_window: int) -> dict[str, float]:
    """Entropy step-change std, grad-norm spike count and mean clip fractions (NaN where not logged)."""

    def series(key: str) -> pd.Series:
        return run.scalars[key].dropna() if key in run.scalars else pd.Series(dtype=float)

    grad = series(GRAD_NORM)
    running_median = grad.rolling(spike_window, min_periods=SPIKE_MIN_HISTORY).median().shift(1)
    stats = {
        "training steps": float(run.scalars.filter(regex="^actor/").notna().any(axis=1).sum()),
        "entropy step-change std": series(ENTROPY).diff().std(),
        "grad-norm spikes": float((grad > spike_factor * running_median).sum()) if len(grad) else float("nan"),
        "PPO clip frac": series(PG_CLIPFRAC).mean(),
    }
    for key, (name, _) in ERC_CLIPFRACS.items():
        stats[f"ERC clip frac ({name})"] = series(key).mean()
    return stats


def _pct(value: float | None, sign: bool = False) -> str:
    if value is None or pd.isna(value):
        return DASH
    return f"{100 * value:+.1f}" if sign else f"{100 * value:.1f}"


def _num(value: float, sign: bool = False) -> str:
    if pd.isna(value):
        return DASH
    spec = ".0f" if float(value).is_integer() else ".3g"
    return f"{value:+{spec}}" if sign else f"{value:{spec}}"


def _cell(est: Estimate, fmt, seeds: int = 1, sign: bool = False) -> str:
    """The mean, then ``± half-width``, ``(p=…)`` and † where they exist; ``(n=…)`` if fewer than ``seeds``."""
    if pd.isna(est.mean):
        return DASH
    text = fmt(est.mean, sign)
    if not pd.isna(est.half):
        text += f" ± {fmt(est.half)}"
    if not pd.isna(est.p):
        text += f" (p={est.p:.2g})" + (f" {SIGNIFICANT}" if est.p < 1.0 - CONFIDENCE else "")
    return text + (f" (n={est.n})" if est.n < seeds else "")


def _delta_row(erc: Group, base: Group, diffs: list[Estimate]) -> str:
    kinds = sorted({d.kind for d in diffs if d.kind})
    return f"Δ `{erc.label}` − `{base.label}`" + (f" ({'; '.join(kinds)})" if kinds else "")


def _steps(steps: list[int]) -> str:
    if not steps:
        return DASH
    return str(steps[0]) if min(steps) == max(steps) else f"{min(steps)}{DASH}{max(steps)}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _mean_over(scores: dict[str, float], columns: list[str]) -> float:
    """The mean of ``scores`` over ``columns``; NaN if it lacks one (or there are none)."""
    return mean(scores[c] for c in columns) if columns and set(columns) <= scores.keys() else math.nan


def score_table(
    groups: list[Group], vals: dict[str, Validation], pairs: dict[str, str], which: str, tests: list | None = None
) -> str:
    """Table 1 as Markdown: scores x100 per benchmark, average, step, a group's as mean ± interval over seeds
    (each seed at its own ``which`` step); a Δ row under each paired ERC group (its estimates added to ``tests``)."""
    by_name = {group.name: group for group in groups}
    benches = sorted({bench for val in vals.values() for bench in val.keys})
    columns = [*benches, "Avg."]
    picks = {label: val.pick(which) for label, val in vals.items()}
    values = {label: {**p[1], "Avg.": p[2]} if p else {} for label, p in picks.items()}

    def seeds(group: Group, cols: list[str]) -> dict[int | str, float]:
        return {seed: _mean_over(values[run.label], cols) for seed, run in group.runs.items()}

    def picked(group: Group) -> list[int]:
        return sorted(picks[run.label][0] for run in group.runs.values() if picks[run.label])

    means = {group.name: {col: seed_mean(seeds(group, [col])) for col in columns} for group in groups}
    shown = {name: {col: _pct(est.mean) for col, est in row.items()} for name, row in means.items()}
    best = {col: max((float(s[col]) for s in shown.values() if s[col] != DASH), default=None) for col in columns}
    bold = sum(bool(picked(group)) for group in groups) > 1

    rows = []
    for group in groups:
        cells = [_cell(est, _pct, len(group.runs)) for est in means[group.name].values()]
        cells = [
            f"**{text}**" if bold and text != DASH and float(mean_text) == best[col] else text
            for col, text, mean_text in zip(columns, cells, shown[group.name].values(), strict=True)
        ]
        rows.append([group.row, *cells, _steps(picked(group))])
        base = by_name.get(pairs.get(group.name))
        if base and picked(group) and picked(base):
            both = [set(values[run.label]) for g in (group, base) for run in g.runs.values() if values[run.label]]
            common = sorted(set.intersection(*both) - {"Avg."})  # Δ Avg.: over the benchmarks all of them have
            diffs = [difference(seeds(group, [b]), seeds(base, [b])) for b in benches]
            diffs.append(difference(seeds(group, common), seeds(base, common)))
            if tests is not None:
                tests += diffs
            rows.append([_delta_row(group, base, diffs), *(_cell(d, _pct, sign=True) for d in diffs), ""])
    return _table(["Run", *columns, "step"], rows)


def stability_table(
    groups: list[Group], stats: dict[str, dict[str, float]], pairs: dict[str, str], tests: list | None = None
) -> str:
    """The stability figures per run, a group's as mean ± interval over seeds; under each paired ERC group
    a Δ row where seeds give the difference an interval (its estimates added to ``tests``)."""
    by_name = {group.name: group for group in groups}
    names = list(next(iter(stats.values())))

    def seeds(group: Group, name: str) -> dict[int | str, float]:
        return {seed: stats[run.label][name] for seed, run in group.runs.items()}

    rows = []
    for group in groups:
        rows.append([group.row, *(_cell(seed_mean(seeds(group, name)), _num, len(group.runs)) for name in names)])
        base = by_name.get(pairs.get(group.name))
        diffs = [difference(seeds(group, name), seeds(base, name)) for name in names] if base else []
        if any(d.kind for d in diffs):
            rows.append([_delta_row(group, base, diffs), *(_cell(d, _num, sign=True) for d in diffs)])
            if tests is not None:
                tests += diffs
    return _table(["Run", *names], rows)


def parse_window(text: str) -> tuple[int, int]:
    """``A-B`` (steps A to B, both included) or ``A`` (step A alone) as ``(A, B)``."""
    first, _, last = text.partition("-")
    try:
        window = (int(first), int(last or first))
    except ValueError:
        raise RunLogError(f"--windows {text!r}: expected a step A or steps A-B") from None
    if not 0 <= window[0] <= window[1]:
        raise RunLogError(f"--windows {text!r}: expected 0 <= A <= B")
    return window


def window_mean(run: RunLog, key: str, window: tuple[int, int]) -> float:
    """The mean of ``key`` over the run's logged steps in ``window`` (NaN if none)."""
    if key not in run.scalars:
        return math.nan
    values = run.scalars[key].dropna()
    return float(values[(values.index >= window[0]) & (values.index <= window[1])].mean())


def window_table(
    groups: list[Group], pairs: dict[str, str], windows: list[tuple[int, int]], tests: list | None = None
) -> str:
    """One row per metric of :data:`WINDOW_METRICS` and step window: each group's mean over the window (over
    seeds: mean ± interval), then for each paired ERC group its Δ (estimates added to ``tests``)."""
    by_name = {group.name: group for group in groups}
    paired = [(by_name[erc], by_name[base]) for erc, base in pairs.items() if erc in by_name and base in by_name]
    header = ["figure", *(group.row for group in groups), *(f"Δ `{erc.label}` − `{base.label}`" for erc, base in paired)]

    def seeds(group: Group, key: str, window: tuple[int, int]) -> dict[int | str, float]:
        return {seed: window_mean(run, key, window) for seed, run in group.runs.items()}

    rows = []
    for label, key in WINDOW_METRICS:
        for window in windows:
            values = {group.name: seeds(group, key, window) for group in groups}
            if all(math.isnan(v) for by_seed in values.values() for v in by_seed.values()):
                continue  # no run logged it in the window
            cells = [_cell(seed_mean(values[group.name]), _num, len(group.runs)) for group in groups]
            diffs = [difference(values[erc.name], values[base.name]) for erc, base in paired]
            if tests is not None:
                tests += diffs
            rows.append([f"{label}, step {_steps(list(window))}", *cells, *(_cell(d, _num, sign=True) for d in diffs)])
    return _table(header, rows)


def tests_note(tests: list[Estimate]) -> str:
    """How many two-sided tests the report's Δ cells make and how many fall below p = 0.05, with the caveat."""
    tested = [est for est in tests if not math.isnan(est.p)]
    below = sum(est.p < 1.0 - CONFIDENCE for est in tested)
    return (
        f"This report makes {len(tested)} two-sided t-tests (the Δ cells with a p-value; the best-step table is "
        f"left out: it picks its steps), with p < {1 - CONFIDENCE:.2g} in {below} of them. With no real difference "
        f"about {(1 - CONFIDENCE) * len(tested):.2g} of {len(tested)} would by chance, so read a lone "
        f"{SIGNIFICANT} as a hint, not a finding."
    )


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


def write_report(
    run_dirs: list[Path],
    out: Path,
    pair_specs: list[str] = (),
    spike_factor: float = 3.0,
    spike_window: int = 20,
    group_specs: list[str] = (),
    windows: list[str] = (),
) -> Path:
    """Read the runs, write ``out/report.md``, ``out/report.html`` and the PNGs; return the Markdown path.

    ``pair_specs`` are ``ERC=BASE`` of group names (a run label stands for its group), ``group_specs``
    ``NAME=RUN,RUN,...`` (see :func:`group_runs`), ``windows`` step windows ``A-B`` or ``A`` of the
    training-metric table (none: no such table)."""
    step_windows = [parse_window(w) for w in windows]
    labels = run_labels(run_dirs)
    runs = {label: load_run(Path(path), label) for path, label in zip(run_dirs, labels, strict=True)}
    grouped = group_runs(labels, list(group_specs))
    groups = [Group(name, {seed: runs[label] for seed, label in members.items()}) for name, members in grouped.items()]
    group_of = {label: name for name, members in grouped.items() for label in members.values()}
    # a run label in a --pair spec stands for its group
    pairs = pair_runs(list(grouped), ["=".join(group_of.get(s, s) for s in spec.split("=", 1)) for spec in pair_specs])
    shown = {group.name: group.label for group in groups}
    vals = {label: validation(run) for label, run in runs.items()}
    tests: list[Estimate] = []  # every Δ estimate the report tests (the best-step table's left out: it picks steps)
    out.mkdir(parents=True, exist_ok=True)

    md = [f"# ERC comparison: {', '.join(f'`{label}`' for label in labels)}", ""]
    md += ["## Runs", ""]
    rows = []
    for run in runs.values():
        files = ", ".join(f"`{f.relative_to(run.path).as_posix() if run.path.is_dir() else f.name}`" for f in run.files)
        rows.append([f"`{run.label}`", f"`{run.path}`", _num(run.scalars.index.max()), files])
    md += [_table(["Run", "directory", "last logged step", "metrics read from"], rows), ""]
    pairs_text = ", ".join(f"`{shown[erc]}` → `{shown[base]}`" for erc, base in pairs.items())
    md += ["Pairs (ERC run → baseline): " + (pairs_text or "none"), ""]
    seeded = [group for group in groups if len(group.runs) > 1]
    if seeded:
        members = {g.name: ", ".join(f"`{run.label}`" for run in g.runs.values()) for g in seeded}
        md += [
            "Seed groups: "
            + "; ".join(f"`{g.name}` (n={len(g.runs)}: {members[g.name]})" for g in seeded)
            + ". A group's cell is its mean over seeds ± the half-width of the 95% Student-t interval, "
            "t(0.975; n−1)·s/√n (s: sample std over the n seeds; *(n=k)*: only k seeds have the value). "
            "A Δ row is ERC minus baseline with its 95% interval and two-sided t-test p-value: paired on the "
            "seeds both groups ran (the same seed is the same data order; from 2 such seeds, the Δ is over "
            "them), else Welch's unpaired t (2 seeds or more each). "
            f"{SIGNIFICANT}: the interval of the difference excludes 0 (p < {1 - CONFIDENCE:.2g}), "
            "i.e. ERC's difference is outside the seed spread. Plots: a group's seed mean as a line, "
            f"the min–max over its seeds shaded; validation at {POINTS_UP_TO} steps or fewer as points with "
            "min–max bars.",
            "",
        ]

    benches = sorted({bench for val in vals.values() for bench in val.keys})
    md += ["## Benchmark scores", ""]
    if benches:
        used = sorted({key for val in vals.values() for key in val.keys.values()})
        md += [
            "Scores ×100 (`acc`: accuracy in %) from verl's validation metrics: "
            + ", ".join(f"`{key}`" for key in used)
            + ". Avg. is over each run's own benchmarks; a Δ row is the ERC run minus its baseline "
            "(Δ Avg. over the benchmarks both have). Bold: best in the column.",
            "",
            "### Last validation step",
            "",
            score_table(groups, vals, pairs, "last", tests),
            "",
            "### Best validation step (highest Avg.)",
            "",
            score_table(groups, vals, pairs, "best"),
            "",
        ]
    else:
        md += ["No run logged validation scores (`val-core/<data_source>/<var>/mean@N`).", ""]

    md += [
        "## Training stability",
        "",
        "Each run over all its logged training steps (runs of different lengths: compare *training steps*). "
        f"*Entropy step-change std*: sample std of the change of `{ENTROPY}` "
        f"between consecutive logged steps. *Grad-norm spikes*: steps where `{GRAD_NORM}` exceeds "
        f"{spike_factor:g}× the median of its preceding {spike_window} logged values (counted once at least "
        f"{SPIKE_MIN_HISTORY} precede). Clip fractions: mean over steps of `{PG_CLIPFRAC}` and "
        + ", ".join(f"`{k}`" for k in ERC_CLIPFRACS)
        + ". – : not logged.",
        "",
    ]
    stats = {label: stability(run, spike_factor, spike_window) for label, run in runs.items()}
    md += [stability_table(groups, stats, pairs, tests), ""]
    if step_windows:
        md += [
            "## Training metrics over step windows",
            "",
            "Each cell: the mean of the metric over the window's logged training steps "
            f"(`{SCORE}`: verl's score over the groups DAPO's filter kept, which are neither all right nor all "
            f"wrong, so with 0/1 accuracy it lies in [1/n, (n−1)/n] for n responses a group; `{ALL_GENERATED}`: "
            "the filter metric over every response the step generated). A group's: mean ± interval over seeds; "
            "Δ: ERC minus baseline as above.",
            "",
            window_table(groups, pairs, step_windows, tests),
            "",
        ]
    if any(not math.isnan(est.p) for est in tests):
        md += ["## How many tests", "", tests_note(tests), ""]

    md += ["## Plots", ""]
    caption = plot_caption(groups)
    missing = []
    for filename, lines, title, ylabel in PLOTS:
        if plot_lines(groups, lines, title, ylabel, out / filename):
            md += [f"### {title}", "", f"![{title}]({filename})", "", caption, ""]
        else:
            missing += list(lines)
    for bench in benches:
        filename = "val_" + re.sub(r"[^A-Za-z0-9._-]+", "_", bench) + ".png"
        points = plot_benchmark(groups, vals, bench, out / filename)
        md += [f"### Validation: {bench}", "", f"![{bench}]({filename})", "", plot_caption(groups, points), ""]
    if missing:
        md += ["Not logged by any run (no plot): " + ", ".join(f"`{k}`" for k in missing), ""]

    text = "\n".join(md)
    report = out / "report.md"
    report.write_text(text)
    body = markdown.markdown(text, extensions=["tables"])
    (out / "report.html").write_text(HTML.format(title="ERC comparison", body=body))
    return report


HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:72em;margin:2em auto}}table{{border-collapse:collapse}}
th,td{{border:1px solid #bbb;padding:.2em .6em;text-align:right}}td:first-child{{text-align:left}}
img{{max-width:100%}}</style></head>
<body>
{body}
</body></html>
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m verl_erc.compare",
        description=__doc__.split("\n\n", 1)[1],
        epilog="How a RUN directory is read (verl_erc.report.runlogs):\n\n" + runlogs.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directory (or file-logger JSONL)")
    parser.add_argument("--out", required=True, type=Path, help="output directory for report.md/.html and PNGs")
    parser.add_argument("--pair", action="append", default=[], metavar="ERC=BASE", help="pair two groups (or runs)")
    parser.add_argument(
        "--group", action="append", default=[], metavar="NAME=RUN,RUN", help="group runs (by label) as seeds of NAME"
    )
    parser.add_argument("--spike-factor", type=float, default=3.0, help="grad-norm spike: above this x running median")
    parser.add_argument("--spike-window", type=int, default=20, help="running-median window (logged steps)")
    parser.add_argument("--windows", nargs="+", default=[], metavar="A-B",
                        help="step windows (A-B, or A alone) of a table of training metrics' means, e.g. 1-5 18-20")
    args = parser.parse_args(argv)
    if args.spike_factor <= 0 or args.spike_window < 1:
        parser.error("--spike-factor must be > 0 and --spike-window >= 1")
    try:
        report = write_report(args.runs, args.out, args.pair, args.spike_factor, args.spike_window, args.group,
                              args.windows)
    except RunLogError as err:
        parser.exit(2, f"error: {err}\n")
    print(f"wrote {report} and {report.with_suffix('.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
