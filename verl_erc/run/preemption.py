"""Preemption that keeps the work: a stop request ends training after the step in progress, with a checkpoint.

The driver (``python -m verl_erc.main``) and verl's trainer (a Ray actor, maybe on another node)
share the run directory, so a request is a file there, :func:`stop_file` of the run:

- :func:`stops_gracefully` (the driver): the first SIGTERM or SIGUSR1 (Slurm's time-limit warning,
  a preemption notice, ``kill``, ``timeout``) writes the request and lets the run go on; a second
  one, or SIGINT, stops at once (the run's clean-up still runs).
- :class:`StopOnRequestMixin` (the trainer, any of verl's V1 modes, ERC on or off): at the end of
  each step, if a request is there, it saves the step's checkpoint (unless verl just did) and makes
  this step the last, so verl's loop logs it and returns. Without a request it does nothing.
The launcher finds the outcome in the checkpoints (:mod:`verl_erc.run.launch`).
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from pathlib import Path

from verl_erc.run.checkpoints import is_complete

#: environment variable naming the request file, set for verl's task runner through Ray's runtime env
STOP_FILE_ENV = "VERL_ERC_STOP_FILE"
#: exit code of a launch that stopped on request with its checkpoint (BSD's EX_TEMPFAIL: run it again)
EXIT_STOPPED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def stop_file(run_dir: Path) -> Path:
    return run_dir / "stop_requested"


def stop_reason(path: str | os.PathLike | None) -> str | None:
    """What asked the run to stop (the request file's text), None when nothing did."""
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or "stop requested"
    except FileNotFoundError:
        return None


@contextmanager
def stops_gracefully(path: Path):
    """Around a run in the driver: the first SIGTERM/SIGUSR1 asks for a stop after the step in progress; a
    second one raises ``SystemExit(128 + signal)``; later ones are ignored, so the run's clean-up finishes."""
    seen: list[str] = []

    def handle(signum, frame):
        name = signal.Signals(signum).name
        seen.append(name)
        if len(seen) == 1:
            path.write_text(f"{name} to the driver (pid {os.getpid()})\n")
            print(f"verl_erc: {name}: finishing the step in progress, saving its checkpoint, then stopping "
                  f"(send {name} again to stop at once)", flush=True)
        elif len(seen) == 2:
            print(f"verl_erc: {name} again: stopping now, without finishing the step", flush=True)
            raise SystemExit(128 + signum)
        else:
            print(f"verl_erc: {name}: already stopping, cleaning up", flush=True)

    previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class StopOnRequestMixin:
    """For a verl V1 ``PPOTrainer`` subclass: end training after a step when the run was asked to stop."""

    def on_step_end(self):
        super().on_step_end()
        reason = stop_reason(os.environ.get(STOP_FILE_ENV))
        if reason is None or self.global_steps >= self.total_training_steps:
            return
        trainer = self.config.trainer
        folder = Path(trainer.default_local_dir) / f"global_step_{self.global_steps}"
        if trainer.save_freq > 0 and not is_complete(folder):
            self._save_checkpoint()
        saved = f"checkpoint {folder}" if is_complete(folder) else "no checkpoint (trainer.save_freq <= 0)"
        print(f"verl_erc: stop requested ({reason}): stopping after step {self.global_steps}, {saved}", flush=True)
        self.total_training_steps = self.global_steps  # verl's loop logs this step, then ends
