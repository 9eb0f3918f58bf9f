"""``python -m verl_erc.compare RUN [RUN ...] --out DIR``: ERC runs against their baselines (the report).

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

The pieces: reading runs (:mod:`verl_erc.report.runlogs`), groups and pairs (:mod:`verl_erc.report.grouping`),
statistics over seeds (:mod:`verl_erc.report.stats`), tables (:mod:`verl_erc.report.tables`), plots
(:mod:`verl_erc.report.plots`); :func:`write_report` writes them as Markdown and HTML.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import markdown

from verl_erc.metrics import ALL_GENERATED, ENTROPY, GRAD_NORM, PG_CLIPFRAC, SCORE
from verl_erc.report import runlogs
from verl_erc.report.grouping import Group, group_runs, pair_runs, run_labels
from verl_erc.report.plots import PLOTS, POINTS_UP_TO, plot_benchmark, plot_caption, plot_lines
from verl_erc.report.runlogs import RunLogError, load_run
from verl_erc.report.stats import CONFIDENCE, Estimate
from verl_erc.report.tables import (
    ERC_CLIPFRACS,
    SIGNIFICANT,
    SPIKE_MIN_HISTORY,
    _num,
    _table,
    parse_window,
    score_table,
    stability,
    stability_table,
    tests_note,
    validation,
    window_table,
)


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
