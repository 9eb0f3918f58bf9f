"""``python -m verl_erc.laptop.demo``: the laptop rehearsals of the paper's DAPO and ERC-DAPO 7B recipes, then compared.

Runs the rehearsals of ``dapo_7b`` and ``erc_dapo_7b`` (``recipes/rehearse.sh``: the recipes' own
configs and launcher at toy scale on CPU, ``hydra_conf/rehearsal/laptop.yaml``) with their run
directories in one fresh output directory, then writes the comparison report of
:mod:`verl_erc.compare` for the two runs::

    python -m verl_erc.laptop.demo                                   # 2 runs of 7-9 minutes on 2 cores
    python -m verl_erc.laptop.demo --out /tmp/demo trainer.total_training_steps=10   # overrides go to both runs
    python -m verl_erc.laptop.demo --seeds 1 2 3                     # both runs per seed; compare groups seeds

Layout of ``--out`` (default ``outputs/cpu_demo_compare/<date>-<time>``)::

    dapo_7b-seed1/, erc_dapo_7b-seed1/   the recipes' run directories (metrics/, tensorboard/,
                                         checkpoints/, launches.log); rerunning resumes from them
    logs/dapo_7b-seed1.log, ...          each run's full console output
    report/report.html (and .md, PNGs)   the comparison

``--seeds`` sets ``ERC_SEED`` (data order and sampling, part of the run name); the report shows
each method's mean over seeds with 95 % intervals and the paired ERC-minus-DAPO test.

A run that fails stops the demo with its exit code and the path of its log.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from verl_erc.compare import write_report
from verl_erc.recipes import run_name

#: the recipes rehearsed, baseline first: compare pairs erc_<name> with <name>
RECIPES = ("dapo_7b", "erc_dapo_7b")


def rehearsal_command(recipe: str, overrides: list[str]) -> list[str]:
    """The command of one rehearsal, as ``recipes/rehearse.sh`` runs it (its run directory goes under ``$ERC_RUNS_DIR``)."""
    return [sys.executable, "-m", "verl_erc.recipes", "rehearse", recipe, *overrides]


def plan_runs(seeds: list[int] | None) -> list[tuple[str, int]]:
    """(recipe, seed) of every run: :data:`RECIPES` with seed 1 (the recipes' default), or once per seed."""
    return [(recipe, seed) for seed in (seeds or [1]) for recipe in RECIPES]


def run_one(recipe: str, seed: int, out: Path, overrides: list[str]) -> Path:
    """Rehearse one recipe, echoing its output and saving it to ``out/logs/<run>.log``; return its run directory."""
    name = run_name(recipe, seed)
    log_path = out / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = rehearsal_command(recipe, overrides)
    env = {**os.environ, "ERC_RUNS_DIR": str(out), "ERC_SEED": str(seed), "ERC_PYTHON": sys.executable}
    print(f"\n=== {name}: {' '.join(cmd[2:])}\n=== log: {log_path}", flush=True)
    start = time.monotonic()
    with open(log_path, "w") as log, subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
    if proc.returncode != 0:
        raise SystemExit(f"verl_erc.laptop.demo: the {name} run failed (exit {proc.returncode}); see {log_path}")
    print(f"=== {name}: done in {time.monotonic() - start:.0f} s", flush=True)
    return out / name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m verl_erc.laptop.demo",
        description=__doc__.split("\n\n")[0],
        epilog="Extra arguments are Hydra overrides for both runs (e.g. trainer.total_training_steps=10).",
    )
    parser.add_argument("--out", type=Path, help="output directory, must not exist (default: a new dated one)")
    parser.add_argument("--seeds", type=int, nargs="+", help="run both recipes once per seed (data order and sampling)")
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        parser.error(f"unknown option(s) {bad}; Hydra overrides look like key=value")
    out = args.out or Path("outputs/cpu_demo_compare") / datetime.now().strftime("%Y%m%d-%H%M%S")
    out = out.resolve()
    if out.exists():
        parser.error(f"--out {out} exists: pick a new directory (a run there would resume from its checkpoints)")
    if args.seeds and len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds {args.seeds}: each seed once")
    out.mkdir(parents=True)

    runs = plan_runs(args.seeds)
    start = time.monotonic()
    run_dirs = [run_one(recipe, seed, out, overrides) for recipe, seed in runs]
    print(f"verl_erc.laptop.demo: {len(runs)} runs in {time.monotonic() - start:.0f} s", flush=True)
    report = write_report(run_dirs, out / "report")
    print(f"\nverl_erc.laptop.demo: comparison written to {report.with_suffix('.html')} (and {report})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
