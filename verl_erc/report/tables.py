"""The report's tables: benchmark scores (Table 1), training stability, training metrics over step windows, and the
count of the tests they make. A group's cell is its mean over seeds with a 95 % Student-t interval, an ERC-minus-
baseline row the difference's interval and test (:mod:`verl_erc.report.stats`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from statistics import mean

import pandas as pd

from verl_erc.metrics import ALL_GENERATED, ENTROPY, ERC_CLIPFRAC, ERC_CLIPFRAC_HIGH, ERC_CLIPFRAC_LOW, EVICTED, GRAD_NORM
from verl_erc.metrics import PG_CLIPFRAC, SCORE, STEP_TIME
from verl_erc.report.grouping import Group
from verl_erc.report.runlogs import RunLog, RunLogError
from verl_erc.report.stats import CONFIDENCE, Estimate, difference, seed_mean

ERC_CLIPFRACS = {
    ERC_CLIPFRAC: ("all", "-"),
    ERC_CLIPFRAC_HIGH: ("above band", "--"),
    ERC_CLIPFRAC_LOW: ("below band", ":"),
}
#: (label, metric key) of the step-window table (``--windows``): each the mean over the window's logged steps
WINDOW_METRICS = [
    ("training reward (score, groups kept)", SCORE),
    ("training accuracy (all generated)", ALL_GENERATED),
    ("policy entropy", ENTROPY),
    ("gradient norm (before clipping)", GRAD_NORM),
    ("groups DAPO dropped per step", EVICTED),
    ("step time (s)", STEP_TIME),
]
# verl's trainer (_val_metrics_update) logs val-core/<data_source>/<acc|reward>/mean@<n> among others
VAL_CORE = re.compile(r"^val-core/(?P<bench>.+)/(?P<var>[^/]+)/mean@(?P<n>\d+)$")
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
