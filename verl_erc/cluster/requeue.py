"""``python -m verl_erc.cluster.requeue requeue STATE --restarts N --max M``: the Slurm job's decision after a stop request.

``slurm/erc_ray.sbatch`` asks it when the trainer stopped on the time-limit signal: requeue only when the run's newest
complete checkpoint advanced during the launch (``STATE``: the launch state :mod:`verl_erc.run.launch` writes), at
most M times. It imports nothing heavy: the batch script runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from verl_erc.run.checkpoints import newest_complete_step


def requeue_decision(state_file: Path, restarts: int, max_requeues: int) -> tuple[bool, str]:
    """Whether the Slurm job should requeue the run after a stop, and why."""
    if not state_file.exists():
        return False, "the recipe recorded no launch (it stopped before training started): a relaunch would do the same"
    state = json.loads(state_file.read_text())
    start, newest = state["start_step"], newest_complete_step(Path(state["checkpoint_dir"]))
    total = state["total_steps"]
    if total is not None and newest >= total:
        return False, f"the run finished at step {newest}"
    if newest <= start:
        return False, (f"its newest checkpoint (step {newest}) did not advance during this launch (started from step "
                       f"{start}): a relaunch would not get further")
    if restarts >= max_requeues:
        return False, f"it was requeued {restarts} times already (ERC_SLURM_MAX_REQUEUES={max_requeues})"
    return True, f"its checkpoint advanced from step {start} to {newest} (requeue {restarts + 1} of at most {max_requeues})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m verl_erc.cluster.requeue", description="the Slurm job's requeue decision")
    sub = parser.add_subparsers(dest="command", required=True)
    requeue = sub.add_parser("requeue", help="exit 0 and say why if the run should be requeued, else exit 1")
    requeue.add_argument("state", type=Path, help="the launch state file ($VERL_ERC_LAUNCH_STATE)")
    requeue.add_argument("--restarts", type=int, required=True, help="requeues so far (SLURM_RESTART_COUNT)")
    requeue.add_argument("--max", type=int, required=True, help="requeues allowed (ERC_SLURM_MAX_REQUEUES)")
    args = parser.parse_args(argv)
    ok, why = requeue_decision(args.state, args.restarts, args.max)
    print(why)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
