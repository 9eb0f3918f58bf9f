"""``python -m verl_erc.cpu.demo``: the CPU demo's DAPO baseline and ERC-DAPO, one after the other, then compared.

Runs ``python -m verl_erc.main --config-name cpu_demo_baseline`` and ``--config-name cpu_demo``
(verl's real trainer on CPU, see ``hydra_conf/cpu_demo_base.yaml``) into one fresh output
directory, then writes the comparison report of :mod:`verl_erc.compare` for the two runs::

    python -m verl_erc.cpu.demo                                   # ~2 x 9 minutes on 2 cores
    python -m verl_erc.cpu.demo --out /tmp/demo trainer.total_training_steps=10   # overrides go to both runs
    python -m verl_erc.cpu.demo --seeds 1 2 3                     # both runs per seed; compare groups seeds

Layout of ``--out`` (default ``outputs/cpu_demo_compare/<date>-<time>``)::

    dapo.jsonl, erc_dapo.jsonl         verl's file-logger metrics, one line per step
    dapo/checkpoints, erc_dapo/...     verl checkpoints (rerunning a config there resumes from them)
    logs/dapo.log, logs/erc_dapo.log   each run's full console output
    report/report.html (and .md, PNGs) the comparison

With ``--seeds``, each run is named ``<name>-seed<N>`` (``dapo-seed1.jsonl``, ...) and runs with
``data.seed=N`` (the data order) and ``actor_rollout_ref.rollout.seed=N`` (sampling); the report
shows each method's mean over seeds with 95 % intervals and the paired ERC-minus-DAPO test.

A run that fails stops the demo with its exit code and the path of its log.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from verl_erc.compare import write_report

#: (config name, experiment name) of the two runs, baseline first: compare pairs erc_<name> with <name>
RUNS = (("cpu_demo_baseline", "dapo"), ("cpu_demo", "erc_dapo"))


def run_command(config_name: str, experiment: str, out: Path, overrides: list[str]) -> list[str]:
    """The ``verl_erc.main`` command of one run, writing its metrics and checkpoints under ``out``."""
    return [
        sys.executable,
        "-m",
        "verl_erc.main",
        "--config-name",
        config_name,
        f"trainer.experiment_name={experiment}",
        f"trainer.default_local_dir={out / experiment / 'checkpoints'}",
        f"+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={out / (experiment + '.jsonl')}",
        *overrides,
    ]


def plan_runs(seeds: list[int] | None, overrides: list[str]) -> list[tuple[str, str, list[str]]]:
    """(config name, experiment name, overrides) of every run: :data:`RUNS`, once per seed if ``seeds``."""
    if not seeds:
        return [(config, name, overrides) for config, name in RUNS]
    return [
        (config, f"{name}-seed{seed}", [f"data.seed={seed}", f"actor_rollout_ref.rollout.seed={seed}", *overrides])
        for seed in seeds
        for config, name in RUNS
    ]


def run_one(config_name: str, experiment: str, out: Path, overrides: list[str]) -> Path:
    """Run one config, echoing its output and saving it to ``out/logs/<experiment>.log``; return the metrics file."""
    log_path = out / "logs" / f"{experiment}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = run_command(config_name, experiment, out, overrides)
    print(f"\n=== {experiment}: {' '.join(cmd[1:])}\n=== log: {log_path}", flush=True)
    start = time.monotonic()
    with open(log_path, "w") as log, subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
    if proc.returncode != 0:
        raise SystemExit(f"verl_erc.cpu.demo: the {experiment} run failed (exit {proc.returncode}); see {log_path}")
    print(f"=== {experiment}: done in {time.monotonic() - start:.0f} s", flush=True)
    return out / f"{experiment}.jsonl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m verl_erc.cpu.demo",
        description=__doc__.split("\n\n")[0],
        epilog="Extra arguments are Hydra overrides for both runs (e.g. trainer.total_training_steps=10).",
    )
    parser.add_argument("--out", type=Path, help="output directory, must not exist (default: a new dated one)")
    parser.add_argument("--seeds", type=int, nargs="+", help="run both configs once per seed (data order and sampling)")
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

    runs = plan_runs(args.seeds, overrides)
    start = time.monotonic()
    metrics = [run_one(config_name, experiment, out, run_overrides) for config_name, experiment, run_overrides in runs]
    print(f"verl_erc.cpu.demo: {len(runs)} runs in {time.monotonic() - start:.0f} s", flush=True)
    report = write_report(metrics, out / "report")
    print(f"\nverl_erc.cpu.demo: comparison written to {report.with_suffix('.html')} (and {report})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
