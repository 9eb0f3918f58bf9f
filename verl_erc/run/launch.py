"""One launch of a run, checked before Ray starts: the run it continues, from where, and whether it may.

A run lives in its run directory (recipes: ``$ERC_RUNS_DIR/<run name>``, passed as
``$VERL_ERC_RUN_DIR``; otherwise ``trainer.default_local_dir``), next to or around verl's checkpoint
folder ``trainer.default_local_dir``. Three steps, each its own function:

- :func:`observe` reads what the run directory holds (:class:`RunDirectory`): its identity
  (``identity.json``, ``config.yaml``: :mod:`verl_erc.run.identity`), the newest *complete* checkpoint of this
  launch's checkpoint folder (:mod:`verl_erc.run.checkpoints`), the furthest step earlier launches reached;
- :func:`launch_refusal`, pure, says why a launch must not run, or None: a damaged record; a changed experiment
  key or input (data files, model folder) unless ``run_guard.allow_changes``; a restart from scratch into a
  directory that holds a run (``resume_mode=disable``, checkpoints none of which is complete, or a checkpoint
  folder without the run's checkpoints); a finished run. The pre-queue check (:mod:`verl_erc.cluster.submit_check`)
  asks the same function;
- :func:`prepare_launch` (``python -m verl_erc.main``) refuses, or resumes from the newest complete checkpoint
  (a truncated or dangling verl pointer falls back to it), skips verl's step-0 validation on a resume, and
  records the launch (``launches.log``, ``identity.json``, written atomically), the state the Slurm job reads
  (``$VERL_ERC_LAUNCH_STATE``) and the stop request (:mod:`verl_erc.run.preemption`).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from verl_erc.run.checkpoints import ResumePoint, newest_complete_step, resume_point, step_folders
from verl_erc.run.preflight import set_ray_env_var
from verl_erc.run.preemption import STOP_FILE_ENV, stop_file, stop_reason
from verl_erc.recipes import LAUNCH_ID_FORMAT
from verl_erc.run.identity import (
    changed_inputs,
    config_hash,
    differences,
    flat_config,
    input_fingerprints,
    new_and_dropped_keys,
    versions,
)

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


@dataclass(frozen=True)
class RunDirectory:
    """What a run directory holds when a launch starts (read by :func:`observe`)."""

    path: Path
    checkpoint_dir: Path
    #: identity.json, or None when the directory holds no run yet
    identity: dict | None
    #: the recorded config.yaml, flat (run_identity.flat_config), with identity
    recorded: dict | None
    #: why identity.json or config.yaml could not be read (None when they could, or are absent)
    damaged: str | None
    #: the newest complete checkpoint of the checkpoint folder this launch names
    resume: ResumePoint
    #: whether that folder holds anything verl saved (step folders or its pointer)
    saved_before: bool
    #: the furthest step an earlier launch of this run started from or ended at, or saved in its checkpoint folder
    reached_step: int
    #: the checkpoint folder the run's earlier launches used
    recorded_checkpoint_dir: str | None
    #: the inputs' fingerprints now (run_identity.input_fingerprints)
    inputs: dict = field(default_factory=dict)


def run_directory(config: DictConfig) -> tuple[Path, Path]:
    """(run directory, checkpoint folder) of a launch of ``config``."""
    checkpoint_dir = Path(os.path.abspath(config.trainer.default_local_dir))
    return Path(os.path.abspath(os.environ.get(RUN_DIR_ENV) or checkpoint_dir)), checkpoint_dir


def observe(config: DictConfig, run_dir: Path, checkpoint_dir: Path) -> RunDirectory:
    """Read what ``run_dir`` holds for a launch of ``config`` (nothing is written)."""
    identity = recorded = damaged = None
    if (run_dir / IDENTITY_FILE).exists():
        try:
            identity = json.loads((run_dir / IDENTITY_FILE).read_text())
            recorded = flat_config(OmegaConf.load(run_dir / CONFIG_FILE))
        except Exception as error:  # noqa: BLE001 -- any unreadable record: refused below, naming it
            damaged = f"{type(error).__name__}: {error}"
    launches = (identity or {}).get("launches", [])
    recorded_checkpoint_dir = launches[-1].get("checkpoint_dir") if launches else None
    reached = max([0, *(int(launch.get(key) or 0) for launch in launches for key in ("start_step", "end_step")),
                   *([newest_complete_step(Path(recorded_checkpoint_dir))] if recorded_checkpoint_dir else [])])
    return RunDirectory(
        path=run_dir, checkpoint_dir=checkpoint_dir, identity=identity, recorded=recorded, damaged=damaged,
        resume=resume_point(checkpoint_dir),
        saved_before=bool(step_folders(checkpoint_dir)) or (checkpoint_dir / "latest_checkpointed_iteration.txt").exists(),
        reached_step=reached, recorded_checkpoint_dir=recorded_checkpoint_dir,
        inputs=input_fingerprints(config),
    )


def _ways_out(run_dir: Path) -> str:
    return (f"  - start a new run: another run directory (recipes: ERC_RUN_NAME=<name> or ERC_RUNS_DIR; otherwise "
            f"trainer.default_local_dir), or\n  - continue {run_dir} with this launch's settings on purpose: "
            f"add {FORCE_KEY}=true (the change is recorded in {IDENTITY_FILE})")


def start_step(config: DictConfig, run: RunDirectory) -> tuple[int, str]:
    """The step this launch starts from, and from what."""
    trainer = config.trainer
    if trainer.resume_mode == "resume_path":
        return int(str(trainer.resume_from_path).rstrip("/").rsplit("global_step_", 1)[-1]), \
            f"trainer.resume_from_path={trainer.resume_from_path}"
    if trainer.resume_mode == "disable" or run.resume.folder is None:
        return 0, "a fresh run"
    return run.resume.step, f"checkpoint {run.resume.folder}"


def launch_refusal(config: DictConfig, run: RunDirectory) -> str | None:
    """Why a launch of ``config`` into ``run`` must not run (the message names the keys and the ways out), or None.

    Pure: it reads only its arguments. ``python -m verl_erc.main`` refuses with it before Ray starts, and
    ``slurm/submit.sh --check`` before the queue."""
    trainer = config.trainer
    allowed = bool(OmegaConf.select(config, FORCE_KEY, default=False))
    if run.damaged:
        return (f"{run.path / IDENTITY_FILE} or {CONFIG_FILE} cannot be read ({run.damaged}): this run directory's "
                "record is damaged, so no launch can be checked against it. Restore the files, or move them aside "
                "to treat the directory as holding no run")
    if run.identity is not None:
        changed = differences(run.recorded, flat_config(config))
        if changed and not allowed:
            listing = "\n".join(f"  {key}: {before!r} -> {after!r}" for key, before, after in changed)
            return (f"{run.path} holds a run ({len(run.identity.get('launches', []))} launch(es)) whose experiment this launch "
                    f"changes:\n{listing}\nContinuing would mix two experiments in one run (its checkpoints, optimizer "
                    f"state and metrics). Either\n{_ways_out(run.path)}\n(keys a relaunch may change: "
                    "verl_erc.run.identity.RELAUNCH_KEYS; the total steps only where no learning-rate schedule depends "
                    "on them)")
        inputs = changed_inputs(run.identity.get("inputs", {}), run.inputs)
        if inputs and not allowed:
            listing = "\n".join(f"  {name}: {before} -> {after}" for name, before, after in inputs)
            return (f"{run.path} holds a run whose inputs changed since its last launch (the same paths, other "
                    f"contents):\n{listing}\nContinuing would train one run on two datasets or from two models. "
                    f"Either\n{_ways_out(run.path)}")
    step, source = start_step(config, run)
    holds_run = run.identity is not None or run.saved_before
    if trainer.resume_mode == "disable" and holds_run:
        return (f"trainer.resume_mode=disable, but {run.path} already holds a run: it would restart from scratch into "
                f"the same directory. Either\n{_ways_out(run.path)}")
    if trainer.resume_mode != "resume_path" and step == 0 and run.saved_before:
        paths = "\n".join(f"  {p}" for p in run.resume.incomplete) or "  (none)"
        return (f"{run.checkpoint_dir} holds checkpoints of an earlier launch, but none is complete (verl writes "
                f"data.pt last; its pointer: {run.resume.pointer_problem}); incomplete folders:\n{paths}\nRefusing to "
                "restart it from scratch. Remove them to start over, or pass trainer.resume_mode=resume_path "
                "trainer.resume_from_path=<a global_step_N folder>")
    if step == 0 and run.reached_step > 0:
        was = run.recorded_checkpoint_dir or "its earlier checkpoint folder"
        return (f"{run.path} holds a run that reached step {run.reached_step} (checkpoints in {was}), but this "
                f"launch's trainer.default_local_dir={run.checkpoint_dir} holds none of them: it would train from "
                f"step 0 into a directory that holds a run. Point trainer.default_local_dir at the run's checkpoints, "
                f"or\n{_ways_out(run.path)}")
    total = trainer.total_training_steps
    if total is not None and step >= total:
        return (f"{run.path.name} already finished at step {step} of {total} ({source}); nothing was started. To "
                f"train on, raise trainer.total_training_steps (e.g. trainer.total_training_steps={total + total // 2 or 1}); "
                "to start anew, use another run directory (recipes: ERC_RUN_NAME=<name>)")
    return None


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` in one rename: a kill leaves the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _log(launch_id: str, run_dir: Path, text: str) -> None:
    """One line appended to launches.log in one write (O_APPEND: whole or not at all on a local file system)."""
    fd = os.open(run_dir / LAUNCHES_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{launch_id} {text}\n".encode())
    finally:
        os.close(fd)


def _announce_changes(run: RunDirectory, flat: dict, now: dict) -> list[str]:
    """Print what changed beside the experiment (keys of another verl or verl-erc version, package versions);
    return the keys added (+) and dropped (-) for the record."""
    added, dropped = new_and_dropped_keys(run.recorded, flat)
    keys = [*(f"+{k}" for k in added), *(f"-{k}" for k in dropped)]
    if keys:
        print(f"verl_erc: this launch's config has {len(added)} key(s) the run's recorded config lacks and lacks "
              f"{len(dropped)} it had (another verl or verl-erc version; recorded): " + ", ".join(keys[:10]), flush=True)
    before = run.identity["launches"][-1].get("versions", {}) if run.identity.get("launches") else {}
    moved = [f"{name} {before[name]} -> {now[name]}" for name in sorted(before.keys() & now.keys()) if before[name] != now[name]]
    if moved:
        print("verl_erc: package versions changed since this run's last launch (recorded): " + ", ".join(moved), flush=True)
    return keys


def prepare_launch(config: DictConfig, argv: list[str] | None = None) -> Launch:
    """Check this launch against its run directory and record it (see the module docstring); may change
    ``trainer.val_before_train``, ``trainer.resume_mode``/``resume_from_path`` and Ray's runtime env."""
    trainer = config.trainer
    run_dir, checkpoint_dir = run_directory(config)
    launch_id = os.environ.get(LAUNCH_ENV) or datetime.now().strftime(LAUNCH_ID_FORMAT)
    run = observe(config, run_dir, checkpoint_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    refusal = launch_refusal(config, run)
    if refusal:
        _log(launch_id, run_dir, f"refused: {refusal.splitlines()[0]}")
        raise LaunchRefused(refusal)

    flat, now = flat_config(config), versions()
    step, source = start_step(config, run)
    if trainer.resume_mode != "resume_path" and run.resume.pointer_problem and run.resume.folder is not None:
        print(f"verl_erc: {checkpoint_dir}/latest_checkpointed_iteration.txt {run.resume.pointer_problem}: resuming "
              f"from the newest complete checkpoint, {run.resume.folder}", flush=True)
        with open_dict(trainer):
            trainer.resume_mode, trainer.resume_from_path = "resume_path", str(run.resume.folder)
    for folder in run.resume.incomplete:
        if int(folder.name.rsplit("_", 1)[-1]) > step:
            print(f"verl_erc: ignoring {folder}: a save cut short (no whole data.pt)", flush=True)
    if step > 0 and trainer.get("val_before_train", True):
        print(f"verl_erc: resuming at step {step}: skipping the step-0 validation (val_before_train applies "
              "to a fresh run)", flush=True)
        with open_dict(trainer):
            trainer.val_before_train = False

    launch = Launch(run_dir, checkpoint_dir, launch_id, step, trainer.total_training_steps)
    launch.stop_file.unlink(missing_ok=True)  # a request of an earlier launch is not this one's
    set_ray_env_var(config, STOP_FILE_ENV, str(launch.stop_file))

    record = {"launch": launch_id, "started": datetime.now().isoformat(timespec="seconds"), "host": socket.gethostname(),
              "slurm_job": os.environ.get("SLURM_JOB_ID"), "slurm_restart": os.environ.get("SLURM_RESTART_COUNT"),
              "start_step": step, "source": source, "checkpoint_dir": str(checkpoint_dir), "versions": now}
    identity = run.identity
    if identity is not None:
        keys = _announce_changes(run, flat, now)
        if keys:
            record["keys_added_or_dropped"] = keys
        changed = differences(run.recorded, flat)
        inputs = changed_inputs(identity.get("inputs", {}), run.inputs)
        if changed or inputs:
            record["changed"] = [[key, before, after] for key, before, after in [*changed, *inputs]]
            print(f"verl_erc: {FORCE_KEY}=true: continuing {run_dir} with {len(changed) + len(inputs)} changed "
                  "experiment key(s) or input(s): " + ", ".join(key for key, _, _ in [*changed, *inputs]), flush=True)
    else:
        identity = {"first_launch": launch_id, "launches": []}
    identity["config_hash"] = config_hash(flat)
    identity["inputs"] = run.inputs
    identity["launches"].append(record)
    write_atomically(run_dir / CONFIG_FILE,
                     OmegaConf.to_yaml(OmegaConf.create(OmegaConf.to_container(config, resolve=True))))
    write_atomically(run_dir / IDENTITY_FILE, json.dumps(identity, indent=1, default=str) + "\n")
    _log(launch_id, run_dir, f"start step {step} ({source}): {shlex.join(argv if argv is not None else sys.argv)}")
    write_state(launch)
    return launch


def write_state(launch: Launch, **outcome) -> None:
    """The launch state the Slurm job reads (``$VERL_ERC_LAUNCH_STATE``, if set)."""
    path = os.environ.get(LAUNCH_STATE_ENV)
    if path:
        state = {"run_dir": str(launch.run_dir), "checkpoint_dir": str(launch.checkpoint_dir),
                 "start_step": launch.start_step, "total_steps": launch.total_steps, **outcome}
        write_atomically(Path(path), json.dumps(state) + "\n")


def finish_launch(launch: Launch, error: BaseException | None = None) -> str:
    """Record how the launch ended and return it: ``finished`` (checkpoint at ``total_training_steps``),
    ``stopped`` (on request, :mod:`verl_erc.run.preemption`), ``interrupted``, ``failed`` or ``ended``."""
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
    write_atomically(identity_path, json.dumps(identity, indent=1, default=str) + "\n")
    _log(launch.launch_id, launch.run_dir, f"end: {outcome}, newest checkpoint step {end_step}")
    write_state(launch, end_step=end_step, outcome=outcome)
    print(f"verl_erc: launch {launch.launch_id} {outcome}; newest checkpoint: step {end_step}", flush=True)
    return outcome
