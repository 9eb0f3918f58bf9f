"""``python -m verl_erc.compare RUN [RUN ...] --out DIR``: ERC runs against their baselines.

Writes ``DIR/report.md`` and the same report as ``DIR/report.html`` (it shows the PNGs beside it):
the paper's Table 1 from the last and from the best validation step, training-stability figures,
and one PNG per metric with all runs overlaid. Each RUN (a run directory, or one metrics JSONL) is
read as described in :mod:`verl_erc.runlogs`; a run is labelled by its path relative to the runs'
common parent directory, and an ERC run ``erc_<name>`` is paired with the baseline run ``<name>``
(``erc_dapo_7b-seed1`` <-> ``dapo_7b-seed1``; the prefix may start any path component:
``erc_dapo_7b/seed1`` <-> ``dapo_7b/seed1``), or as ``--pair ERC=BASE``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import markdown
import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from verl_erc import runlogs
from verl_erc.runlogs import RunLog, RunLogError, load_run

ENTROPY = "actor/entropy"
GRAD_NORM = "actor/grad_norm"
PG_CLIPFRAC = "actor/pg_clipfrac"
ERC_CLIPFRACS = {
    "actor/erc_clipfrac": ("all", "-"),
    "actor/erc_clipfrac_high": ("above band", "--"),
    "actor/erc_clipfrac_low": ("below band", ":"),
}
RESPONSE_LENGTH = "response_length/mean"
# verl's trainer (_val_metrics_update) logs val-core/<data_source>/<acc|reward>/mean@<n> among others
VAL_CORE = re.compile(r"^val-core/(?P<bench>.+)/(?P<var>[^/]+)/mean@(?P<n>\d+)$")
ERC_PREFIXES = ("erc_", "erc-")
SPIKE_MIN_HISTORY = 5
DASH = "–"


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
    """ERC run label -> baseline run label, by name (``erc_`` prefix) and from ``ERC=BASE`` specs."""
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
            raise RunLogError(f"--pair {spec!r}: expected ERC=BASE, two different run labels among {labels}")
        pairs[erc] = base
    return pairs


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


def _num(value: float) -> str:
    if pd.isna(value):
        return DASH
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def score_table(runs: list[RunLog], vals: dict[str, Validation], pairs: dict[str, str], which: str) -> str:
    """Table 1 as Markdown: scores x100 per benchmark, average, step; a delta row under each paired ERC run."""
    benches = sorted({bench for val in vals.values() for bench in val.keys})
    columns = [*benches, "Avg."]
    picks = {run.label: vals[run.label].pick(which) for run in runs}
    values = {label: {**p[1], "Avg.": p[2]} if p else {} for label, p in picks.items()}
    shown = {label: {col: _pct(v.get(col)) for col in columns} for label, v in values.items()}
    best = {col: max((float(s[col]) for s in shown.values() if s[col] != DASH), default=None) for col in columns}
    bold = sum(p is not None for p in picks.values()) > 1

    rows = []
    for run in runs:
        pick = picks[run.label]
        cells = [
            f"**{text}**" if bold and text != DASH and float(text) == best[col] else text
            for col, text in shown[run.label].items()
        ]
        rows.append([f"`{run.label}`", *cells, str(pick[0]) if pick else DASH])
        base = pairs.get(run.label)
        if base and pick and picks[base]:
            mine, theirs = values[run.label], values[base]
            deltas = {b: mine[b] - theirs[b] for b in benches if b in mine and b in theirs}
            mean_delta = sum(deltas.values()) / len(deltas) if deltas else None
            delta_cells = [_pct(deltas.get(b), sign=True) for b in benches]
            rows.append([f"Δ `{run.label}` − `{base}`", *delta_cells, _pct(mean_delta, sign=True), ""])
    return _table(["Run", *columns, "step"], rows)


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


def plot_metric(runs: list[RunLog], key: str, title: str, ylabel: str, path: Path) -> bool:
    """One line per run that logged ``key``; False (nothing written) if none did."""
    fig, ax = _figure(title, ylabel)
    drawn = False
    for i, run in enumerate(runs):
        if key in run.scalars and run.scalars[key].notna().any():
            values = run.scalars[key].dropna()
            ax.plot(values.index, values.values, color=_color(i), label=run.label, linewidth=1.2)
            drawn = True
    if drawn:
        ax.legend(fontsize="small")
        fig.savefig(path)
    return drawn


def plot_erc_clipfracs(runs: list[RunLog], path: Path) -> bool:
    """ERC clip fractions (all / above / below the band), one colour per run, one line style per fraction."""
    fig, ax = _figure("ERC clip fraction", "fraction of response tokens")
    drawn = False
    for i, run in enumerate(runs):
        for key, (name, style) in ERC_CLIPFRACS.items():
            if key in run.scalars and run.scalars[key].notna().any():
                values = run.scalars[key].dropna()
                label = f"{run.label} ({name})"
                ax.plot(values.index, values.values, color=_color(i), linestyle=style, label=label, linewidth=1.2)
                drawn = True
    if drawn:
        ax.legend(fontsize="small")
        fig.savefig(path)
    return drawn


def plot_benchmark(runs: list[RunLog], vals: dict[str, Validation], bench: str, path: Path) -> bool:
    """Validation score x100 of ``bench`` over training steps, one line per run."""
    keys = sorted({vals[r.label].keys[bench] for r in runs if bench in vals[r.label].keys})
    fig, ax = _figure(f"{bench}: {', '.join(k.split('/', 2)[2] for k in keys)}", "score ×100")
    for i, run in enumerate(runs):
        scores = vals[run.label].scores
        if bench in scores:
            values = scores[bench].dropna()
            ax.plot(values.index, 100 * values.values, color=_color(i), marker="o", label=run.label, linewidth=1.2)
    ax.legend(fontsize="small")
    fig.savefig(path)
    return True


PLOTS = [
    ("entropy.png", ENTROPY, "Policy entropy", "entropy (nats)"),
    ("grad_norm.png", GRAD_NORM, "Gradient norm", "gradient norm"),
    ("pg_clipfrac.png", PG_CLIPFRAC, "PPO clip fraction", "fraction of response tokens"),
    ("response_length.png", RESPONSE_LENGTH, "Mean response length", "tokens"),
]


def write_report(
    run_dirs: list[Path],
    out: Path,
    pair_specs: list[str] = (),
    spike_factor: float = 3.0,
    spike_window: int = 20,
) -> Path:
    """Read the runs, write ``out/report.md``, ``out/report.html`` and the PNGs; return the Markdown path."""
    labels = run_labels(run_dirs)
    runs = [load_run(Path(path), label) for path, label in zip(run_dirs, labels, strict=True)]
    pairs = pair_runs(labels, list(pair_specs))
    vals = {run.label: validation(run) for run in runs}
    out.mkdir(parents=True, exist_ok=True)

    md = [f"# ERC comparison: {', '.join(f'`{label}`' for label in labels)}", ""]
    md += ["## Runs", ""]
    rows = []
    for run in runs:
        files = ", ".join(f"`{f.relative_to(run.path).as_posix() if run.path.is_dir() else f.name}`" for f in run.files)
        rows.append([f"`{run.label}`", f"`{run.path}`", _num(run.scalars.index.max()), files])
    md += [_table(["Run", "directory", "last logged step", "metrics read from"], rows), ""]
    md += ["Pairs (ERC run → baseline): " + (", ".join(f"`{e}` → `{b}`" for e, b in pairs.items()) or "none"), ""]

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
            score_table(runs, vals, pairs, "last"),
            "",
            "### Best validation step (highest Avg.)",
            "",
            score_table(runs, vals, pairs, "best"),
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
    stats = {run.label: stability(run, spike_factor, spike_window) for run in runs}
    names = list(next(iter(stats.values())))
    md += [_table(["Run", *names], [[f"`{label}`", *(_num(v) for v in s.values())] for label, s in stats.items()]), ""]

    md += ["## Plots", ""]
    missing = []
    for filename, key, title, ylabel in PLOTS:
        if plot_metric(runs, key, title, ylabel, out / filename):
            md += [f"### {title}", "", f"![{title}]({filename})", ""]
        else:
            missing.append(key)
    if plot_erc_clipfracs(runs, out / "erc_clipfrac.png"):
        md += ["### ERC clip fraction", "", "![ERC clip fraction](erc_clipfrac.png)", ""]
    else:
        missing += list(ERC_CLIPFRACS)
    for bench in benches:
        filename = "val_" + re.sub(r"[^A-Za-z0-9._-]+", "_", bench) + ".png"
        plot_benchmark(runs, vals, bench, out / filename)
        md += [f"### Validation: {bench}", "", f"![{bench}]({filename})", ""]
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
        epilog="How a RUN directory is read (verl_erc.runlogs):\n\n" + runlogs.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directory (or file-logger JSONL)")
    parser.add_argument("--out", required=True, type=Path, help="output directory for report.md/.html and PNGs")
    parser.add_argument("--pair", action="append", default=[], metavar="ERC=BASE", help="pair two runs by label")
    parser.add_argument("--spike-factor", type=float, default=3.0, help="grad-norm spike: above this x running median")
    parser.add_argument("--spike-window", type=int, default=20, help="running-median window (logged steps)")
    args = parser.parse_args(argv)
    if args.spike_factor <= 0 or args.spike_window < 1:
        parser.error("--spike-factor must be > 0 and --spike-window >= 1")
    try:
        report = write_report(args.runs, args.out, args.pair, args.spike_factor, args.spike_window)
    except RunLogError as err:
        parser.exit(2, f"error: {err}\n")
    print(f"wrote {report} and {report.with_suffix('.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
