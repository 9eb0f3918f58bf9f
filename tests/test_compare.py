"""python -m verl_erc.compare on runs logged through verl's own Tracking (file + tensorboard backends),
laid out as verl_erc.recipes does: <recipe>-seed<N>/metrics/<launch>.jsonl and .../tensorboard/.

``python tests/test_compare.py DIR`` writes the same fixture runs into DIR (used for docs/).
"""

from __future__ import annotations

import glob
import re
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import LAUNCH, log_run, markdown_tables
from pngcheck import assert_real_png

from verl_erc.compare import main
from verl_erc.report.grouping import pair_runs, run_labels
from verl_erc.report.runlogs import RunLogError, load_run

ROOT = Path(__file__).resolve().parents[1]

BASE, ERC = "dapo_7b-seed1", "erc_dapo_7b-seed1"
# validation accuracy per step (the last and the best step differ; values are exact at 1 decimal x100)
VAL = {
    BASE: {
        "aime24": {0: 0.20, 10: 0.25, 20: 0.31, 30: 0.28, 40: 0.35, 50: 0.33, 60: 0.34},
        "math500": {0: 0.70, 10: 0.74, 20: 0.78, 30: 0.77, 40: 0.81, 50: 0.80, 60: 0.79},
    },
    ERC: {  # still running: 40 of 60 steps
        "aime24": {0: 0.20, 10: 0.27, 20: 0.33, 30: 0.37, 40: 0.36},
        "math500": {0: 0.70, 10: 0.75, 20: 0.79, 30: 0.82, 40: 0.81},
    },
}
LAST_STEP = {BASE: 60, ERC: 40}
SPIKES = {BASE: (25, 45), ERC: ()}  # steps where the gradient norm jumps 10x


def _val_metrics(run: str, step: int) -> dict[str, float]:
    """What verl's _val_metrics_update logs: val-core mean/best/maj at the largest n, val-aux the rest."""
    metrics = {}
    for bench, n in (("aime24", 32), ("math500", 4)):
        acc = VAL[run][bench][step]
        metrics[f"val-core/{bench}/acc/mean@{n}"] = acc
        metrics[f"val-core/{bench}/acc/best@{n}/mean"] = min(1.0, acc + 0.3)
        metrics[f"val-core/{bench}/acc/maj@{n}/mean"] = acc + 0.05
        metrics[f"val-aux/{bench}/acc/mean@2"] = acc - 0.1
        metrics[f"val-aux/{bench}/reward/mean@{n}"] = 2 * acc - 1
    return metrics


def fixture_metrics(run: str) -> dict[int, dict[str, float]]:
    """Per-step metrics of a DAPO-like baseline (noisy entropy, grad spikes) or its ERC run (smooth)."""
    rng = np.random.default_rng(0 if run == BASE else 1)
    erc = run == ERC
    steps = {0: _val_metrics(run, 0)}  # val_before_train, logged alone at step 0
    for step in range(1, LAST_STEP[run] + 1):
        if erc:  # stays near its start
            entropy = 0.6 - 0.001 * step + rng.normal(0, 0.005)
        else:  # collapses and oscillates
            entropy = 0.6 * np.exp(-step / 30) + 0.05 + abs(rng.normal(0, 0.04))
        grad = 0.3 + rng.uniform(-0.03, 0.03)
        metrics = {
            "actor/entropy": entropy,
            "actor/grad_norm": 10 * grad if step in SPIKES[run] else grad,
            "actor/pg_clipfrac": rng.uniform(0.001, 0.003),
            "actor/pg_clipfrac_lower": 0.0,
            "response_length/mean": 1000 + 8 * step + rng.normal(0, 20),
            "critic/score/mean": rng.uniform(0, 1),
        }
        if erc:
            high, low = rng.uniform(0.01, 0.02), rng.uniform(0.005, 0.01)
            metrics |= {"actor/erc_clipfrac": high + low, "actor/erc_clipfrac_high": high}
            metrics |= {"actor/erc_clipfrac_low": low}
        if step % 10 == 0:
            metrics |= _val_metrics(run, step)
        steps[step] = metrics
    return steps


def write_fixture_runs(root: Path) -> dict[str, Path]:
    """The baseline and the (still running) ERC run under ``root``; returns their directories."""
    dirs = {}
    for run in (BASE, ERC):
        dirs[run] = root / run
        log_run(dirs[run], run, fixture_metrics(run))
    with (dirs[ERC] / "metrics" / f"{LAUNCH}.jsonl").open("ab") as fp:  # a line being written right now
        fp.write(b'{"step": 41, "data": {"actor/entro')
    return dirs


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return write_fixture_runs(tmp_path_factory.mktemp("runs"))


def _pick(run: str, which: str) -> tuple[int, dict[str, float]]:
    steps = sorted(VAL[run]["aime24"])
    avg = {s: np.mean([VAL[run][b][s] for b in ("aime24", "math500")]) for s in steps}
    step = steps[-1] if which == "last" else max(steps, key=lambda s: avg[s])
    return step, {b: VAL[run][b][step] for b in ("aime24", "math500")} | {"Avg.": avg[step]}


def _check_report(out: Path) -> str:
    md = (out / "report.md").read_text()
    tables = markdown_tables(md)
    assert tables["Last validation step"]["Run"] == ["aime24", "math500", "Avg.", "step"]
    for which, heading in (("last", "Last validation step"), ("best", "Best validation step (highest Avg.)")):
        table = tables[heading]
        picks = {run: _pick(run, which) for run in (BASE, ERC)}
        for run, (step, scores) in picks.items():
            assert table[f"`{run}`"] == [f"{100 * scores[c]:.1f}" for c in ("aime24", "math500", "Avg.")] + [str(step)]
        delta = {c: picks[ERC][1][c] - picks[BASE][1][c] for c in ("aime24", "math500", "Avg.")}
        expected = [f"{100 * delta[c]:+.1f}" for c in ("aime24", "math500", "Avg.")] + [""]
        assert table[f"Δ `{ERC}` − `{BASE}`"] == expected
    # the paper's bold: best value of each column
    assert f"| `{ERC}` | **36.0** | **81.0** | **58.5** | 40 |" in md
    assert f"| `{ERC}` | **37.0** | **82.0** | **59.5** | 30 |" in md  # best table
    assert f"| `{BASE}` | 35.0 | 81.0 | 58.0 | 40 |" in md

    stats = tables["Training stability"]
    header = stats["Run"]
    for run in (BASE, ERC):
        row = dict(zip(header, stats[f"`{run}`"], strict=True))
        metrics = fixture_metrics(run)
        train = [m for s, m in sorted(metrics.items()) if s > 0]
        entropy = np.array([m["actor/entropy"] for m in train])
        assert row["training steps"] == str(LAST_STEP[run])
        assert row["entropy step-change std"] == f"{np.std(np.diff(entropy), ddof=1):.3g}"
        assert row["grad-norm spikes"] == str(len(SPIKES[run]))
        assert row["PPO clip frac"] == f"{np.mean([m['actor/pg_clipfrac'] for m in train]):.3g}"
        for key, col in (
            ("actor/erc_clipfrac", "all"),
            ("actor/erc_clipfrac_high", "above band"),
            ("actor/erc_clipfrac_low", "below band"),
        ):
            expected = f"{np.mean([m[key] for m in train]):.3g}" if run == ERC else "–"
            assert row[f"ERC clip frac ({col})"] == expected
    return md


PNGS = ["reward", "entropy", "grad_norm", "pg_clipfrac", "response_length", "erc_clipfrac", "val_aime24", "val_math500"]


def test_report_tables_stability_and_plots(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main([str(runs[BASE]), str(runs[ERC]), "--out", str(out)]) == 0
    md = _check_report(out)
    assert f"`{ERC}` → `{BASE}`" in md  # paired by name
    html = (out / "report.html").read_text()
    assert "<table>" in html and "<td>`" not in html
    for name in PNGS:
        assert_real_png(out / f"{name}.png")
        assert f"]({name}.png)" in md and f'src="{name}.png"' in html
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(PNGS)


@pytest.mark.parametrize("keep", ["tensorboard", "jsonl"])
def test_either_log_alone_gives_the_same_report(runs, tmp_path, keep):
    copies = {}
    for run, path in runs.items():
        copies[run] = shutil.copytree(path, tmp_path / "runs" / run)
        if keep == "tensorboard":
            shutil.rmtree(copies[run] / "metrics")
        else:
            shutil.rmtree(copies[run] / "tensorboard")
    assert main([str(copies[BASE]), str(copies[ERC]), "--out", str(tmp_path / "out")]) == 0
    _check_report(tmp_path / "out")


@pytest.mark.parametrize("second_launch", ["20260102-000000", LAUNCH], ids=["file-per-launch", "same-file"])
def test_resumed_run_keeps_history_and_takes_the_newer_steps(tmp_path, second_launch):
    run_dir = tmp_path / "dapo"
    first = {s: {"actor/entropy": 0.1 + s} for s in range(0, 31)}
    log_run(run_dir, "dapo", first)
    second = {s: {"actor/entropy": 100.1 + s} for s in range(26, 41)}  # resumed from a step-25 checkpoint
    log_run(run_dir, "dapo", second, launch=second_launch)  # same file: verl's FileLogger truncates it
    entropy = load_run(run_dir, "dapo").scalars["actor/entropy"]
    expected = {s: (100.1 if s >= 26 else 0.1) + s for s in range(41)}
    if second_launch == LAUNCH:  # steps 0-25 survive only in TensorBoard, as float32
        expected |= {s: float(np.float32(0.1 + s)) for s in range(26)}
    assert entropy.to_dict() == expected  # elsewhere the JSONL's full precision wins


def test_long_tensorboard_history_is_read_in_full(tmp_path):
    steps = {step: {"actor/entropy": step % 7} for step in range(10_050)}  # > tensorboard's default 10,000
    log_run(tmp_path / "long", "long", steps, backends=("tensorboard",))
    entropy = load_run(tmp_path / "long", "long").scalars["actor/entropy"]
    assert entropy.to_dict() == {step: float(step % 7) for step in range(10_050)}


def test_runs_given_as_metrics_files(runs, tmp_path):
    """The CPU demo's layout: <project>/<experiment>.jsonl side by side (VERL_FILE_LOGGER_ROOT only)."""
    files = []
    for run in (BASE, ERC):
        files.append(tmp_path / "cpu_demo" / f"{run}.jsonl")
        files[-1].parent.mkdir(exist_ok=True)
        shutil.copy(runs[run] / "metrics" / f"{LAUNCH}.jsonl", files[-1])
    assert main([*map(str, files), "--out", str(tmp_path / "out")]) == 0
    _check_report(tmp_path / "out")


def test_run_without_metrics_is_a_clear_error(runs, tmp_path, capsys):
    empty = tmp_path / "empty_run"
    (empty / "generations").mkdir(parents=True)
    (empty / "generations" / "1.jsonl").write_text('{"input": "q", "output": "a", "score": 1}\n')
    with pytest.raises(SystemExit) as exit_info:
        main([str(runs[BASE]), str(empty), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "empty_run" in err and "no metrics" in err
    with pytest.raises(RunLogError, match="does not exist"):
        load_run(tmp_path / "missing", "missing")
    with pytest.raises(RunLogError, match="not a verl file-logger JSONL"):
        load_run(empty / "generations" / "1.jsonl", "generations")


def test_labels_and_pairing():
    assert pair_runs(run_labels([Path("/r/dapo_7b-seed1"), Path("/r/erc_dapo_7b-seed1")]), []) == {
        "erc_dapo_7b-seed1": "dapo_7b-seed1"
    }
    labels = run_labels([Path("/r/erc_dapo_7b/seed1"), Path("/r/dapo_7b/seed1"), Path("/r/gppo_7b/seed1")])
    assert labels == ["erc_dapo_7b/seed1", "dapo_7b/seed1", "gppo_7b/seed1"]
    assert pair_runs(labels, []) == {"erc_dapo_7b/seed1": "dapo_7b/seed1"}
    assert pair_runs(labels, ["erc_dapo_7b/seed1=gppo_7b/seed1"]) == {"erc_dapo_7b/seed1": "gppo_7b/seed1"}
    with pytest.raises(RunLogError, match="ERC=BASE"):
        pair_runs(labels, ["erc_dapo_7b/seed1=nope"])
    assert run_labels([Path("/r/a"), Path("/r/b")]) == ["a", "b"]


def test_explicit_pair_on_the_command_line(runs, tmp_path):
    renamed = {name: shutil.copytree(runs[run], tmp_path / name) for run, name in ((BASE, "base"), (ERC, "mine"))}
    out = tmp_path / "out"
    main([str(renamed["base"]), str(renamed["mine"]), "--out", str(out)])
    assert "Δ `" not in (out / "report.md").read_text()
    main([str(renamed["base"]), str(renamed["mine"]), "--out", str(out), "--pair", "mine=base"])
    assert "Δ `mine` − `base`" in (out / "report.md").read_text()


if __name__ == "__main__":
    print(write_fixture_runs(Path(sys.argv[1])))


def test_the_laptop_study_report_is_regenerated_from_its_committed_metrics(tmp_path, monkeypatch):
    """docs/laptop_study.md's command, rerun on the per-step metrics committed beside the page, writes the committed
    report.md exactly (the page's figures are its tables) and the plots the page shows."""
    page = ROOT / "docs" / "laptop_study.md"
    command = next(line for line in page.read_text().splitlines() if line.startswith("python -m verl_erc.compare "))
    monkeypatch.chdir(ROOT)  # the page's command runs from the repository's root
    args = []
    for word in shlex.split(command)[3:]:
        args += sorted(glob.glob(word)) if "*" in word else [word]
    committed = Path(args[args.index("--out") + 1])
    args[args.index("--out") + 1] = str(tmp_path / "report")
    assert len([a for a in args if a.endswith(".jsonl")]) == 10  # 5 seeds of each method
    assert main(args) == 0
    assert (tmp_path / "report" / "report.md").read_text() == (committed / "report.md").read_text()
    written = {p.name for p in (tmp_path / "report").glob("*.png")}
    assert written == {p.name for p in committed.glob("*.png")}
    shown = re.findall(r"!\[[^\]]*\]\(laptop_study/([^)]+)\)", page.read_text())
    assert shown and set(shown) <= written
