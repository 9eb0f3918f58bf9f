"""One launch of a run, checked before Ray starts: the run it continues, from where, and whether it may.

A run lives in its run directory (recipes: ``$ERC_RUNS_DIR/<run name>``, passed as
``$VERL_ERC_RUN_DIR``; otherwise ``trainer.default_local_dir``), next to or around verl's checkpoint
folder ``trainer.default_local_dir``. :func:`prepare_launch` (called by ``python -m verl_erc.main``):

1. reads the run's identity (``identity.json``, ``config.yaml``: :mod:`verl_erc.run_identity`) and
   refuses a launch that changes an experiment key, listing each, unless ``run_guard.allow_changes``;
2. picks the newest *complete* checkpoint (:mod:`verl_erc.checkpoints`): a truncated or dangling
   pointer falls back to it (``trainer.resume_from_path``); a run directory with earlier launches and
   checkpoints but none complete is refused, never silently restarted from scratch;
3. refuses a finished run (its checkpoint at ``trainer.total_training_steps``) in seconds;
4. on a resume, skips verl's step-0 validation (``val_before_train`` applies to a fresh run);
5. records the launch (``launches.log``, ``identity.json``), and the state the Slurm job reads
   (``$VERL_ERC_LAUNCH_STATE``), and sets up the stop request (:mod:`verl_erc.preemption`).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from verl_erc.checkpoints import newest_complete_step, resume_point, step_folders
from verl_erc.cpu.preflight import set_ray_env_var
from verl_erc.preemption import STOP_FILE_ENV, stop_file, stop_reason
from verl_erc.run_identity import config_hash, differences, flat_config, new_and_dropped_keys, versions

RUN_DIR_ENV = "VERL_ERC_RUN_DIR"
LAUNCH_ENV = "VERL_ERC_LAUNCH"
LAUNCH_STATE_ENV = "VERL_ERC_LAUNCH_STATE"
IDENTITY_FILE, CONFIG_FILE, LAUNCHES_FILE = "identity.json", "config.yaml", "launches.log"
FORCE_KEY = "run_guard.allow_changes"


class LaunchRefused(RuntimeError):
    """This launch would mix, repeat or silently restart a run; the message says why and the ways out."""


@dataclass
class Launch:
    run_dir: Path
    checkpoint_dir: Path
    launch_id: str
    start_step: int
    total_steps: int | None

    @property
    def stop_file(self) -> Path:
        return stop_file(self.run_dir)


def _now_id() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def _log(launch_id: str, run_dir: Path, text: str) -> None:
    with open(run_dir / LAUNCHES_FILE, "a") as log:
        log.write(f"{launch_id} {text}\n")


def _ways_out(run_dir: Path) -> str:
    return (f"  - start a new run: another run directory (recipes: ERC_RUN_NAME=<name> or ERC_RUNS_DIR; otherwise "
            f"trainer.default_local_dir), or\n  - continue {run_dir} with this launch's settings on purpose: "
            f"add {FORCE_KEY}=true (the change is recorded in {IDENTITY_FILE})")


def prepare_launch(config: DictConfig, argv: list[str] | None = None) -> Launch:
    """Check this launch against its run directory and record it (see the module docstring); may change
    ``trainer.val_before_train``, ``trainer.resume_mode``/``resume_from_path`` and Ray's runtime env."""
    trainer = config.trainer
    checkpoint_dir = Path(os.path.abspath(trainer.default_local_dir))
    run_dir = Path(os.path.abspath(os.environ.get(RUN_DIR_ENV) or checkpoint_dir))
    launch_id = os.environ.get(LAUNCH_ENV) or _now_id()
    command = shlex.join(argv if argv is not None else sys.argv)
    flat = flat_config(config)
    identity_path = run_dir / IDENTITY_FILE
    identity = json.loads(identity_path.read_text()) if identity_path.exists() else None
    run_dir.mkdir(parents=True, exist_ok=True)

    def refuse(message: str) -> LaunchRefused:
        _log(launch_id, run_dir, f"refused: {message.splitlines()[0]}")
        return LaunchRefused(message)

    changed: list = []
    added: list = []
    if identity is not None:
        old = flat_config(OmegaConf.load(run_dir / CONFIG_FILE))
        changed = differences(old, flat)
        added, dropped = new_and_dropped_keys(old, flat)
        if added or dropped:
            print(f"verl_erc: this launch's config has {len(added)} key(s) the run's recorded config lacks and lacks "
                  f"{len(dropped)} it had (another verl or verl-erc version; recorded): "
                  + ", ".join([*(f"+{k}" for k in added), *(f"-{k}" for k in dropped)][:10]), flush=True)
            added = [*(f"+{k}" for k in added), *(f"-{k}" for k in dropped)]
        if changed and not OmegaConf.select(config, FORCE_KEY, default=False):
            listing = "\n".join(f"  {key}: {before!r} -> {after!r}" for key, before, after in changed)
            raise refuse(
                f"{run_dir} holds a run ({len(identity['launches'])} launch(es)) whose experiment this launch changes:\n"
                f"{listing}\nContinuing would mix two experiments in one run (its checkpoints, optimizer state and "
                f"metrics). Either\n{_ways_out(run_dir)}\n(keys a relaunch may change: "
                "verl_erc.run_identity.RELAUNCH_KEYS)"
            )

    if trainer.resume_mode == "resume_path":
        start = resume_point(Path(trainer.resume_from_path).parent)
        start_step = int(str(trainer.resume_from_path).rstrip("/").rsplit("global_step_", 1)[-1])
        source = f"trainer.resume_from_path={trainer.resume_from_path}"
    else:
        start = resume_point(checkpoint_dir)
        start_step, source = start.step, f"checkpoint {start.folder}" if start.folder else "a fresh run"
        saved_before = step_folders(checkpoint_dir) or (checkpoint_dir / "latest_checkpointed_iteration.txt").exists()
        if trainer.resume_mode == "disable" and (identity is not None or saved_before):
            raise refuse(f"trainer.resume_mode=disable, but {run_dir} already holds a run: it would restart from "
                         f"scratch into the same directory. Either\n{_ways_out(run_dir)}")
        if start_step == 0 and saved_before:
            paths = "\n".join(f"  {p}" for p in start.incomplete) or "  (none)"
            raise refuse(
                f"{checkpoint_dir} holds checkpoints of an earlier launch, but none is complete (verl writes data.pt "
                f"last; its pointer: {start.pointer_problem}); incomplete folders:\n{paths}\nRefusing to restart it from "
                "scratch. Remove them to start over, or pass trainer.resume_mode=resume_path "
                "trainer.resume_from_path=<a global_step_N folder>"
            )
        if start.pointer_problem and start.folder is not None:
            print(f"verl_erc: {checkpoint_dir}/latest_checkpointed_iteration.txt {start.pointer_problem}: resuming "
                  f"from the newest complete checkpoint, {start.folder}", flush=True)
            with open_dict(trainer):
                trainer.resume_mode, trainer.resume_from_path = "resume_path", str(start.folder)
    for folder in start.incomplete:
        if int(folder.name.rsplit("_", 1)[-1]) > start_step:
            print(f"verl_erc: ignoring {folder}: a save cut short (no whole data.pt)", flush=True)

    total = trainer.total_training_steps
    if total is not None and start_step >= total:
        raise refuse(
            f"{run_dir.name} already finished at step {start_step} of {total} ({source}); nothing was started. "
            f"To train on, raise trainer.total_training_steps (e.g. trainer.total_training_steps={total + total // 2 or 1}); "
            f"to start anew, use another run directory (recipes: ERC_RUN_NAME=<name>)"
        )
    if start_step > 0 and trainer.get("val_before_train", True):
        print(f"verl_erc: resuming at step {start_step}: skipping the step-0 validation (val_before_train applies "
              "to a fresh run)", flush=True)
        with open_dict(trainer):
            trainer.val_before_train = False

    launch = Launch(run_dir, checkpoint_dir, launch_id, start_step, total)
    launch.stop_file.unlink(missing_ok=True)  # a request of an earlier launch is not this one's
    set_ray_env_var(config, STOP_FILE_ENV, str(launch.stop_file))

    record = {"launch": launch_id, "started": datetime.now().isoformat(timespec="seconds"), "host": socket.gethostname(),
              "slurm_job": os.environ.get("SLURM_JOB_ID"), "slurm_restart": os.environ.get("SLURM_RESTART_COUNT"),
              "start_step": start_step, "source": source, "versions": versions()}
    if added:
        record["keys_added_or_dropped"] = added
    if changed:
        record["changed"] = [[key, before, after] for key, before, after in changed]
        print(f"verl_erc: {FORCE_KEY}=true: continuing {run_dir} with {len(changed)} changed experiment key(s): "
              + ", ".join(key for key, _, _ in changed), flush=True)
    if identity is None:
        identity = {"config_hash": config_hash(flat), "first_launch": launch_id, "launches": []}
    identity["config_hash"] = config_hash(flat)
    identity["launches"].append(record)
    (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(OmegaConf.create(OmegaConf.to_container(config, resolve=True))))
    identity_path.write_text(json.dumps(identity, indent=1, default=str) + "\n")
    _log(launch_id, run_dir, f"start step {start_step} ({source}): {command}")
    write_state(launch)
    return launch


def write_state(launch: Launch, **outcome) -> None:
    """The launch state the Slurm job reads (``$VERL_ERC_LAUNCH_STATE``, if set)."""
    path = os.environ.get(LAUNCH_STATE_ENV)
    if path:
        state = {"run_dir": str(launch.run_dir), "checkpoint_dir": str(launch.checkpoint_dir),
                 "start_step": launch.start_step, "total_steps": launch.total_steps, **outcome}
        Path(path).write_text(json.dumps(state) + "\n")


def finish_launch(launch: Launch, error: BaseException | None = None) -> str:
    """Record how the launch ended and return it: ``finished`` (checkpoint at ``total_training_steps``),
    ``stopped`` (on request, :mod:`verl_erc.preemption`), ``interrupted``, ``failed`` or ``ended``."""
    end_step = newest_complete_step(launch.checkpoint_dir)
    if isinstance(error, (KeyboardInterrupt, SystemExit)):
        outcome = "interrupted"
    elif error is not None:
        outcome = "failed"
    elif launch.total_steps is not None and end_step >= launch.total_steps:
        outcome = "finished"
    elif stop_reason(launch.stop_file):
        outcome = "stopped"
    else:
        outcome = "ended"
    identity_path = launch.run_dir / IDENTITY_FILE
    identity = json.loads(identity_path.read_text())
    identity["launches"][-1].update(end_step=end_step, outcome=outcome)
    identity_path.write_text(json.dumps(identity, indent=1, default=str) + "\n")
    _log(launch.launch_id, launch.run_dir, f"end: {outcome}, newest checkpoint step {end_step}")
    write_state(launch, end_step=end_step, outcome=outcome)
    print(f"verl_erc: launch {launch.launch_id} {outcome}; newest checkpoint: step {end_step}", flush=True)
    return outcome
