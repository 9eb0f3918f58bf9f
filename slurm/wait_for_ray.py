"""Wait until every node of a Slurm job has joined its Ray cluster with its GPUs; exit 1 naming the
nodes missing (and the GPUs expected) on timeout, or at once if a node's Ray start-up step exits
(the head's too: Ray is asked only once its GCS port accepts connections).

    python slurm/wait_for_ray.py --address HEAD_IP:PORT --gpus-per-node G --node HOST=PID [--node HOST=PID ...]
                                 [--timeout 600]

One ``--node`` per Slurm node: its hostname (``scontrol show hostnames``) and the PID of the
``srun`` step that runs ``ray start`` on it. A Ray node is matched to a Slurm node by hostname
(the part before the first dot), or, where the names differ, the cluster is ready once it shows
as many nodes and GPUs as expected.
"""

import argparse
import socket
import sys
import time


def short(hostname: str) -> str:
    return hostname.split(".", 1)[0]


def cluster_state(address: str) -> dict[str, float]:
    """Hostname -> GPUs of every alive node of the cluster at ``address``."""
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        state: dict[str, float] = {}
        for node in ray.nodes():
            if node.get("Alive"):
                name = short(node.get("NodeManagerHostname", "?"))
                state[name] = state.get(name, 0.0) + node.get("Resources", {}).get("GPU", 0.0)
        return state
    finally:
        ray.shutdown()


def listening(address: str) -> bool:
    """True if the GCS port at ``address`` accepts a connection (``ray.init`` waits minutes for one that does not)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def exited(pid: int) -> bool:
    """True if process ``pid`` is gone or a zombie (exited, not yet reaped by its parent)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def missing(nodes: list[str], state: dict[str, float], gpus_per_node: int) -> list[str]:
    """The Slurm nodes not (yet) in the cluster with their GPUs, as 'HOST (why)'."""
    out = []
    for host in nodes:
        gpus = state.get(short(host))
        if gpus is None:
            out.append(f"{host} (not joined)")
        elif gpus < gpus_per_node:
            out.append(f"{host} (joined with {gpus:g} of {gpus_per_node} GPU(s))")
    return out


def node_pid(text: str) -> tuple[str, int]:
    host, _, pid = text.rpartition("=")
    if not host or not pid.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST=PID, got {text!r}")
    return host, int(pid)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--gpus-per-node", type=int, required=True, help="GPUs each node must show (0 for CPU nodes)")
    parser.add_argument("--node", type=node_pid, action="append", required=True, metavar="HOST=PID",
                        help="a Slurm node and the PID of the step starting Ray on it (one per node)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between checks")
    args = parser.parse_args()

    nodes = [host for host, _ in args.node]
    expected = f"{len(nodes)} node(s) x {args.gpus_per_node} GPU(s)"
    deadline = time.monotonic() + args.timeout
    state, error = None, None
    while True:
        if not listening(args.address):
            state, error = None, f"nothing listens at {args.address} (the head's GCS is not up)"
        else:
            try:
                state, error = cluster_state(args.address), None
            except Exception as exc:  # GCS starting, or gone since
                error = f"{type(exc).__name__}: {exc}"
        absent = missing(nodes, state or {}, args.gpus_per_node)
        # by hostname, or (a Slurm NodeName that is not the host's name) by count
        counted = state is not None and len(state) >= len(nodes) and sum(state.values()) >= len(nodes) * args.gpus_per_node
        if not absent or counted:  # (no state: every node is absent)
            gpus = sum(state.values())
            print(f"[wait_for_ray] cluster ready: {len(state)} node(s), {gpus:g} GPU(s) at {args.address}", flush=True)
            return 0
        dead = [f"{host} (pid {pid})" for host, pid in args.node if exited(pid)]
        if dead:
            print(
                f"[wait_for_ray] ERROR: the Ray start-up step on {', '.join(dead)} exited before the cluster at "
                f"{args.address} was up (expected {expected}; missing: "
                f"{', '.join(absent) if state is not None else 'every node, the head GCS not up yet'}); see its output above.",
                file=sys.stderr,
                flush=True,
            )
            return 1
        if time.monotonic() >= deadline:
            break
        time.sleep(args.interval)
    print(
        f"[wait_for_ray] ERROR: after {args.timeout:g}s the Ray cluster at {args.address} is missing "
        f"{', '.join(absent)}; expected {expected}." + (f" Last error: {error}" if error else "")
        + " Check the ray start lines of this job's log and that the ports are open between the nodes.",
        file=sys.stderr,
        flush=True,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
