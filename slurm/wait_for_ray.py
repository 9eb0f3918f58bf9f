"""Wait until a Ray cluster shows the expected nodes and GPUs; exit 1 with what it has on timeout,
or at once if one of the processes starting it (``--watch-pids``) has exited.

    python slurm/wait_for_ray.py --address HEAD_IP:PORT --nodes N --gpus G [--timeout 600] [--watch-pids PID...]
"""

import argparse
import sys
import time


def cluster_state(address: str) -> tuple[int, float]:
    """(alive nodes, total GPUs) of the cluster at ``address``."""
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        alive = [n for n in ray.nodes() if n.get("Alive")]
        return len(alive), sum(n.get("Resources", {}).get("GPU", 0.0) for n in alive)
    finally:
        ray.shutdown()


def exited(pid: int) -> bool:
    """True if process ``pid`` is gone or a zombie (exited, not yet reaped by its parent)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--gpus", type=int, required=True, help="total GPUs expected (0 for a CPU cluster)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between checks")
    parser.add_argument("--watch-pids", type=int, nargs="*", default=[], help="fail if one of these exits")
    args = parser.parse_args()

    deadline = time.monotonic() + args.timeout
    state, error = None, None
    while True:
        try:
            state, error = cluster_state(args.address), None
        except Exception as exc:  # GCS not up yet, or connection refused
            error = f"{type(exc).__name__}: {exc}"
        if state and state[0] >= args.nodes and state[1] >= args.gpus:
            print(f"[wait_for_ray] cluster ready: {state[0]} node(s), {state[1]:g} GPU(s) at {args.address}", flush=True)
            return 0
        dead = [pid for pid in args.watch_pids if exited(pid)]
        if dead:
            print(
                f"[wait_for_ray] ERROR: the Ray start-up process(es) {dead} exited before the cluster at "
                f"{args.address} was up; see their output above.",
                file=sys.stderr,
                flush=True,
            )
            return 1
        if time.monotonic() >= deadline:
            break
        time.sleep(args.interval)
    seen = f"{state[0]} node(s), {state[1]:g} GPU(s)" if state else "no connection"
    print(
        f"[wait_for_ray] ERROR: after {args.timeout:g}s the Ray cluster at {args.address} shows {seen}; "
        f"expected {args.nodes} node(s), {args.gpus} GPU(s)." + (f" Last error: {error}" if error else "")
        + " Check the ray start lines of this job's log and that the ports are open between nodes.",
        file=sys.stderr,
        flush=True,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
