"""Check, on this node, that the TCP ports a Ray node of this job will listen on are free.

    python slurm/check_ports.py NAME=PORT [NAME=PORT ...]

Exit 1 naming every port in use (for instance by another job's Ray on the same node: with the
same ports, this job's ``ray start`` would fail, or its driver would find the other job's cluster).
"""

import socket
import sys


def in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free to listen on
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def main(argv: list[str]) -> int:
    ports = [(name, int(port)) for name, _, port in (arg.rpartition("=") for arg in argv)]
    busy = [f"{port} ({name})" for name, port in ports if in_use(port)]
    if busy:
        print(
            f"[erc-slurm] ERROR: on {socket.gethostname()} port(s) {', '.join(busy)} are in use, by another "
            "job's Ray on this node or another program; give this job other ports (the variables named) "
            "or run it on other nodes",
            file=sys.stderr,
            flush=True,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
