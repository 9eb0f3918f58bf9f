"""python -m verl_erc.compare on seed groups: means and Student-t intervals over seeds, the paired (or
Welch) ERC-minus-baseline difference, and the seed band in plots. The fixture runs are logged through
verl's Tracking file logger as verl_erc.recipes lays them out: <recipe>-seed<N>/metrics/<launch>.jsonl.

Expected values are worked out by hand below with the closed forms of Student's t for 1 and 2 degrees
of freedom: t_{q,1} = tan(pi (q - 1/2)), two-sided p_1(t) = 1 - 2/pi atan|t|;
t_{q,2} = (2q - 1) sqrt(2 / (4q(1 - q))), p_2(t) = 1 - |t| / sqrt(2 + t^2).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from pngcheck import assert_real_png
from helpers import log_run, markdown_tables

from verl_erc.compare import main
from verl_erc.report.grouping import group_runs, pair_runs
from verl_erc.report.plots import _draw
from verl_erc.report.stats import difference, seed_mean
from verl_erc.report.runlogs import RunLogError

T1 = math.tan(math.pi * 0.475)  # t_{0.975,1} = 12.706
T2 = 0.95 * math.sqrt(2 / 0.0975)  # t_{0.975,2} = 4.303


def p1(t: float) -> float:
    return 1 - 2 / math.pi * math.atan(abs(t))


def p2(t: float) -> float:
    return 1 - abs(t) / math.sqrt(2 + t * t)


RUNS = ["dapo-seed1", "dapo-seed2", "erc_dapo-seed1", "erc_dapo-seed2"]
# validation accuracy at step 0 (before training) and step 3 (the last); dapo-seed2 is best at step 0
VAL = {
    "dapo-seed1": {0: {"aime24": 0.20, "math500": 0.70}, 3: {"aime24": 0.30, "math500": 0.74}},
    "dapo-seed2": {0: {"aime24": 0.30, "math500": 0.80}, 3: {"aime24": 0.26, "math500": 0.78}},
    "erc_dapo-seed1": {0: {"aime24": 0.20, "math500": 0.70}, 3: {"aime24": 0.34, "math500": 0.80}},
    "erc_dapo-seed2": {0: {"aime24": 0.22, "math500": 0.72}, 3: {"aime24": 0.32, "math500": 0.844}},
}
ENTROPY = {  # steps 1-3
    "dapo-seed1": [0.5, 0.3, 0.5],  # step changes -0.2, +0.2: std 0.2 sqrt(2)
    "dapo-seed2": [0.5, 0.4, 0.5],  # std 0.1 sqrt(2)
    "erc_dapo-seed1": [0.5, 0.5, 0.5],  # std 0
    "erc_dapo-seed2": [0.5, 0.45, 0.5],  # std 0.05 sqrt(2)
}
PG_CLIPFRAC = {"dapo-seed1": 0.2, "dapo-seed2": 0.4, "erc_dapo-seed1": 0.3, "erc_dapo-seed2": 0.1}
ERC_CLIPFRAC = {"erc_dapo-seed1": (0.015, 0.005), "erc_dapo-seed2": (0.03, 0.01)}  # (above, below the band)


def run_metrics(run: str) -> dict[int, dict[str, float]]:
    steps = {0: {}}
    for step in (1, 2, 3):
        metrics = {"actor/entropy": ENTROPY[run][step - 1], "actor/grad_norm": 0.3}
        metrics["actor/pg_clipfrac"] = PG_CLIPFRAC[run]
        if run in ERC_CLIPFRAC:
            high, low = ERC_CLIPFRAC[run]
            metrics |= {"actor/erc_clipfrac": high + low, "actor/erc_clipfrac_high": high}
            metrics["actor/erc_clipfrac_low"] = low
        steps[step] = metrics
    for step, scores in VAL[run].items():
        steps[step] |= {f"val-core/{bench}/acc/mean@4": acc for bench, acc in scores.items()}
    return steps


@pytest.fixture(scope="module")
def seed_runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seeds")
    for run in RUNS:
        log_run(root / run, run, run_metrics(run), backends=("file",))
    return {run: root / run for run in RUNS}


def test_seed_mean_and_difference_by_hand():
    assert seed_mean({1: 0.30, 2: 0.26}).half == pytest.approx(T1 * 0.02)  # s/sqrt(2) = |a - b| / 2
    assert seed_mean({1: 0.3}) == seed_mean({1: 0.3, 2: math.nan})  # one seed: the value, no interval
    paired = difference({1: 0.34, 2: 0.32, 3: 0.9}, {1: 0.30, 2: 0.26})  # seed 3 has no partner
    assert (paired.mean, paired.kind) == (pytest.approx(0.05), "paired on seeds 1, 2")
    assert (paired.half, paired.p) == (pytest.approx(T1 * 0.01), pytest.approx(p1(5)))
    welch = difference({"a": 0.3, "b": 0.1}, {"c": 0.2, "d": 0.4})  # equal variances: df 2
    assert welch.kind == "unpaired, Welch"
    assert (welch.half, welch.p) == (pytest.approx(T2 * math.sqrt(0.02)), pytest.approx(p2(0.1 / math.sqrt(0.02))))
    same = difference({1: 1.0, 2: 2.0}, {1: 0.0, 2: 1.0})  # no spread of the difference: no p-value
    assert (same.mean, same.half, math.isnan(same.p)) == (1.0, 0.0, True)


def test_grouping_by_seed_in_the_name_and_by_option():
    labels = ["dapo-seed1", "erc_dapo/seed2", "dapo_seed2", "erc_dapo/seed1", "other"]
    assert group_runs(labels, []) == {
        "dapo": {1: "dapo-seed1", 2: "dapo_seed2"},
        "erc_dapo": {2: "erc_dapo/seed2", 1: "erc_dapo/seed1"},
        "other": {"other": "other"},
    }
    assert pair_runs(list(group_runs(labels, [])), []) == {"erc_dapo": "dapo"}
    assert group_runs(["x", "y-seed3", "z"], ["mine=x,y-seed3"]) == {"mine": {"x": "x", 3: "y-seed3"}, "z": {"z": "z"}}
    for bad in (["mine=x,nope"], ["mine=x", "yours=x"], ["mine"], ["mine=x,x"]):
        with pytest.raises(RunLogError, match="NAME=RUN"):
            group_runs(["x", "y"], bad)
    with pytest.raises(RunLogError, match="seed 1 twice"):
        group_runs(["dapo-seed1", "dapo/seed1"], [])


def test_the_official_variants_and_the_nll_ablation_pair_as_docs_recipes_md_runs_them():
    from verl_erc.recipes import run_name

    labels = [run_name(recipe, seed) for seed in (1, 2) for recipe in
              ("erc_dapo_7b_official", "dapo_7b_official", "erc_dapo_7b_official_nonll", "dapo_7b_official_nonll")]
    groups = group_runs(labels, [])
    assert {name: sorted(seeds) for name, seeds in groups.items()} == dict.fromkeys(
        ["erc_dapo_7b_official", "dapo_7b_official", "erc_dapo_7b_official_nonll", "dapo_7b_official_nonll"], [1, 2])
    assert pair_runs(list(groups), []) == {"erc_dapo_7b_official": "dapo_7b_official",
                                           "erc_dapo_7b_official_nonll": "dapo_7b_official_nonll"}


def test_seed_groups_report_mean_interval_and_paired_test(seed_runs, tmp_path):
    out = tmp_path / "report"
    assert main([*map(str, seed_runs.values()), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    tables = markdown_tables(md)
    assert "Seed groups: `dapo` (n=2: `dapo-seed1`, `dapo-seed2`); `erc_dapo` (n=2" in md
    assert "Pairs (ERC run → baseline): `erc_dapo` → `dapo`" in md

    # last step (3), x100. dapo aime24 30, 26: mean 28, se |30 - 26| / 2 = 2; math500 74, 78; Avg. 52, 52
    last = tables["Last validation step"]
    assert last["`dapo` (n=2)"] == ["28.0 ± 25.4", "76.0 ± 25.4", "52.0 ± 0.0", "3"]
    assert f"{T1 * 2:.1f}" == "25.4"
    # erc_dapo aime24 34, 32 (se 1); math500 80, 84.4 (se 2.2); Avg. 57, 58.2 (se 0.6)
    assert last["`erc_dapo` (n=2)"] == ["33.0 ± 12.7", "82.2 ± 28.0", "57.6 ± 7.6", "3"]
    assert (f"{T1 * 1:.1f}", f"{T1 * 2.2:.1f}", f"{T1 * 0.6:.1f}") == ("12.7", "28.0", "7.6")
    # paired differences: aime24 4, 6 (mean 5, se 1, t 5); math500 6, 6.4 (6.2, se 0.2, t 31); Avg. 5, 6.2
    assert (f"{p1(5):.2g}", f"{p1(31):.2g}", f"{p1(5.6 / 0.6):.2g}") == ("0.13", "0.021", "0.068")
    assert last["Δ `erc_dapo` − `dapo` (paired on seeds 1, 2)"] == [
        "+5.0 ± 12.7 (p=0.13)",
        "+6.2 ± 2.5 (p=0.021) †",  # the only interval that excludes 0
        "+5.6 ± 7.6 (p=0.068)",
        "",
    ]
    assert "| `erc_dapo` (n=2) | **33.0 ± 12.7** | **82.2 ± 28.0** | **57.6 ± 7.6** | 3 |" in md

    # best step: each seed its own; dapo-seed2's is step 0 (Avg. 55 > 52): Avg. 52, 55 -> 53.5, se 1.5
    best = tables["Best validation step (highest Avg.)"]
    assert best["`dapo` (n=2)"] == ["30.0 ± 0.0", "77.0 ± 38.1", "53.5 ± 19.1", "0–3"]  # aime24 30, 30; 74, 80
    assert (f"{T1 * 3:.1f}", f"{T1 * 1.5:.1f}") == ("38.1", "19.1")

    stats = tables["Training stability"]
    header = stats["Run"]
    assert header[:4] == ["training steps", "entropy step-change std", "grad-norm spikes", "PPO clip frac"]
    root2 = math.sqrt(2)
    # entropy step-change std: dapo 0.2 sqrt2, 0.1 sqrt2 (mean 0.15 sqrt2, se 0.05 sqrt2); erc 0, 0.05 sqrt2
    dapo = dict(zip(header, stats["`dapo` (n=2)"], strict=True))
    assert dapo["entropy step-change std"] == f"{0.15 * root2:.3g} ± {T1 * 0.05 * root2:.3g}" == "0.212 ± 0.898"
    assert dapo["PPO clip frac"] == f"0.3 ± {T1 * 0.1:.3g}" == "0.3 ± 1.27"
    assert (dapo["training steps"], dapo["grad-norm spikes"]) == ("3 ± 0", "0 ± 0")  # no spread over seeds
    assert dapo["ERC clip frac (all)"] == "–"  # not logged
    erc = dict(zip(header, stats["`erc_dapo` (n=2)"], strict=True))
    assert erc["entropy step-change std"] == f"{0.025 * root2:.3g} ± {T1 * 0.025 * root2:.3g}" == "0.0354 ± 0.449"
    assert erc["ERC clip frac (all)"] == f"0.03 ± {T1 * 0.01:.3g}"  # 0.02, 0.04
    delta = dict(zip(header, stats["Δ `erc_dapo` − `dapo` (paired on seeds 1, 2)"], strict=True))
    # entropy: differences -0.2 sqrt2, -0.05 sqrt2 (mean -0.125 sqrt2, se 0.075 sqrt2, t -5/3)
    assert delta["entropy step-change std"] == f"{-0.125 * root2:.3g} ± {T1 * 0.075 * root2:.3g} (p={p1(5 / 3):.2g})"
    assert delta["entropy step-change std"] == "-0.177 ± 1.35 (p=0.34)"
    # PPO clip frac: 0.3 - 0.2, 0.1 - 0.4 (mean -0.1, se 0.2, t -0.5)
    assert delta["PPO clip frac"] == f"-0.1 ± {T1 * 0.2:.3g} (p={p1(0.5):.2g})" == "-0.1 ± 2.54 (p=0.7)"
    assert (delta["grad-norm spikes"], delta["ERC clip frac (all)"]) == ("+0 ± 0", "–")  # no spread; not logged

    for name in ("entropy", "pg_clipfrac", "erc_clipfrac", "val_aime24"):
        assert_real_png(out / f"{name}.png")


def test_explicit_groups_without_seeds_compare_unpaired(seed_runs, tmp_path):
    names = {"dapo-seed1": "b1", "dapo-seed2": "b2", "erc_dapo-seed1": "e1", "erc_dapo-seed2": "e2"}
    copies = [shutil.copytree(seed_runs[run], tmp_path / "runs" / name) for run, name in names.items()]
    out = tmp_path / "out"
    main([*map(str, copies), "--out", str(out), "--group", "erc_dapo=e1,e2", "--group", "dapo=b1,b2"])
    stats = markdown_tables((out / "report.md").read_text())["Training stability"]
    delta = dict(zip(stats["Run"], stats["Δ `erc_dapo` − `dapo` (unpaired, Welch)"], strict=True))
    # PPO clip frac 0.3, 0.1 vs 0.2, 0.4: variances 0.02 each, se sqrt(0.01 + 0.01), Welch df 2
    se = math.sqrt(0.02)
    assert delta["PPO clip frac"] == f"-0.1 ± {T2 * se:.3g} (p={p2(0.1 / se):.2g})" == "-0.1 ± 0.608 (p=0.55)"
    # a run label in --pair stands for its group
    main([*map(str, copies), "--out", str(out), "--group", "mine=e1,e2", "--group", "base=b1,b2", "--pair", "e1=b2"])
    assert "Δ `mine` − `base` (unpaired, Welch)" in (out / "report.md").read_text()


def test_one_seed_per_recipe_reports_as_single_runs(seed_runs, tmp_path):
    out = tmp_path / "out"
    main([str(seed_runs["dapo-seed1"]), str(seed_runs["erc_dapo-seed1"]), "--out", str(out)])
    md = (out / "report.md").read_text()
    assert "±" not in md and "Seed groups" not in md
    assert "Pairs (ERC run → baseline): `erc_dapo-seed1` → `dapo-seed1`" in md
    last = markdown_tables(md)["Last validation step"]
    assert last["`dapo-seed1`"] == ["30.0", "74.0", "52.0", "3"]
    assert last["`erc_dapo-seed1`"] == ["34.0", "80.0", "57.0", "3"]
    assert last["Δ `erc_dapo-seed1` − `dapo-seed1`"] == ["+4.0", "+6.0", "+5.0", ""]
    stats = markdown_tables(md)["Training stability"]
    assert list(stats) == ["Run", "`dapo-seed1`", "`erc_dapo-seed1`"]  # no Δ row, as before seeds
    assert stats["`dapo-seed1`"][:4] == ["3", f"{0.2 * math.sqrt(2):.3g}", "0", "0.2"]


def test_plots_draw_a_group_as_its_mean_and_min_max_band():
    seeds = [pd.Series([1.0, 2.0, 3.0], index=[1, 2, 3]), pd.Series([3.0, 4.0], index=[1, 2])]
    ax = Figure().add_subplot()
    _draw(ax, seeds, "C0", "dapo")
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [1, 2] and list(line.get_ydata()) == [2.0, 3.0]  # steps both seeds logged
    assert line.get_label() == "dapo: mean of 2 seeds, band min–max"
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    ys = band.get_paths()[0].vertices[:, 1]
    assert (ys.min(), ys.max()) == (1.0, 4.0)
    single = Figure().add_subplot()
    _draw(single, seeds[:1], "C0", "dapo-seed1")
    assert not single.collections and list(single.get_lines()[0].get_ydata()) == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("bad", [math.inf, -math.inf])
def test_an_infinite_value_among_the_seeds_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"non-finite value\(s\) among the seeds \(seed 2: -?inf\)"):
        seed_mean({1: 0.3, 2: bad, 3: 0.4})
    with pytest.raises(ValueError, match="seed 2"):
        difference({1: 0.3, 2: bad}, {1: 0.2, 2: 0.1})


def test_step_windows_table_the_tests_tally_and_the_plot_captions(seed_runs, tmp_path):
    out = tmp_path / "report"
    assert main([*map(str, seed_runs.values()), "--out", str(out), "--windows", "1-2", "3"]) == 0
    md = (out / "report.md").read_text()
    table = markdown_tables(md)["Training metrics over step windows"]
    assert table["figure"] == ["`dapo` (n=2)", "`erc_dapo` (n=2)", "Δ `erc_dapo` − `dapo`"]
    # entropy, steps 1-2: dapo 0.4, 0.45 (se 0.025); erc_dapo 0.5, 0.475 (se 0.0125); paired Δ 0.1, 0.025
    assert table["policy entropy, step 1–2"] == [
        f"{0.425:.3g} ± {T1 * 0.025:.3g}", f"{0.4875:.3g} ± {T1 * 0.0125:.3g}",
        f"+{0.0625:.3g} ± {T1 * 0.0375:.3g} (p={p1(0.0625 / 0.0375):.2g})"]
    assert table["policy entropy, step 3"] == ["0.5 ± 0", "0.5 ± 0", "+0 ± 0"]  # a single step; no spread, no test
    assert "gradient norm (before clipping), step 3" in table
    assert not [row for row in table if row.startswith("training reward")]  # not logged: no row
    # the tally counts the p-values of every Δ cell outside the best-step table, and those below 0.05
    tested = md.split("### Best validation step")[0] + md.split("## Training stability")[1].split("## How many")[0]
    note = md.split("## How many tests")[1].split("##")[0]
    assert f"makes {tested.count('(p=')} two-sided t-tests" in note and tested.count("(p=") >= 4
    cells = "".join(line for line in tested.splitlines() if line.startswith("|"))
    assert f"with p < 0.05 in {cells.count('†')} of them" in note
    # seed groups: lines with a min-max band; validation at two steps as points with min-max bars
    assert "### Policy entropy\n\n![Policy entropy](entropy.png)\n\n*Each line: a group's mean over its seeds; shaded" in md
    assert "![aime24](val_aime24.png)\n\n*Each point: a group's mean over its seeds; bars: the min–max" in md
    for bad in ("5-3", "a-b"):
        with pytest.raises(SystemExit):
            main([*map(str, seed_runs.values()), "--out", str(tmp_path / "bad"), "--windows", bad])
