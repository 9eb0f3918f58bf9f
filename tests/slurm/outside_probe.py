"""A host outside the job tries each listening socket of a running job (run inside the test's outside network
namespace, tests/slurm/run_slurm_test.sh): ``python outside_probe.py TARGETS.json MARKERS_DIR``.

TARGETS.json holds ``ray_ports``, the job's Ray ports by the launcher's names (``ERC_RAY_PORT``: ...; a local
run's: the GCS port alone), ``sockets``, a list of ``[process, address, port]`` (the address a peer connects to),
and optionally ``source``, the address the TCP and ZMQ connections leave from (a one-node run's test stands in for
another host with a loopback address other than 127.0.0.1; Ray's token and vLLM's key do not depend on it). Per
socket, by its Ray role or its process (:func:`kind`), it tries what a peer without the job's token could:

- ``grpc`` (Ray's GCS, raylet, object manager, agents' gRPC, client server, core workers): a read-only or
  empty unary call of a method the port's service has (:data:`GRPC_METHODS`), without the token; the
  result is the gRPC status (``UNAUTHENTICATED``: Ray's token check refused it).
- ``http`` (the dashboard agent's HTTP, the runtime-env agent, Ray's metrics endpoints): ``GET /``; on the
  dashboard agent also a job submission (``POST /api/job_agent/jobs/``) whose entrypoint would write a marker.
- ``vllm`` (verl's vLLM HTTP server): ``GET /v1/models``, then a completion request.
- ``zmq`` (verl's TransferQueue): a request whose payload, if unpickled, writes a marker file
  ``MARKERS_DIR/zmq-<address>-<port>-<how>``, sent with ZMQ's default identity and again with the identity prefix
  that TransferQueue's storage proxy forwards (``TQ_STORAGE_``); the result says, for each, whether it ran.
- ``tcp`` (vLLM's engine queues, torch.distributed's store and gloo, Slurm's I/O): a TCP connection only; the
  probe sends nothing that could break the run.

Prints one JSON list: the targets with their ``kind`` and ``result``.
"""

from __future__ import annotations

import json
import pickle
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

#: the Ray ports (by the launcher's names) that speak HTTP: agent HTTP, runtime-env agent, metrics endpoints
HTTP_ROLES = {"ERC_RAY_METRICS_PORT", "ERC_RAY_AGENT_HTTP_PORT", "ERC_RAY_RUNTIME_ENV_PORT",
              "ERC_RAY_AUTOSCALER_METRICS_PORT", "ERC_RAY_DASHBOARD_METRICS_PORT"}
#: per Ray port, a method of its gRPC service that reads, or changes nothing on an empty request; the ports of
#: the worker range are core workers (:data:`CORE_WORKER_METHOD`)
GRPC_METHODS = {
    "ERC_RAY_PORT": "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo",  # GCS
    "ERC_RAY_NODE_MANAGER_PORT": "/ray.rpc.NodeManagerService/GetSystemConfig",  # raylet
    "ERC_RAY_OBJECT_MANAGER_PORT": "/ray.rpc.ObjectManagerService/Pull",  # object manager (no object named)
    "ERC_RAY_AGENT_GRPC_PORT": "/ray.rpc.ReporterService/HealthCheck",  # dashboard agent
    "ERC_RAY_CLIENT_PORT": "/ray.rpc.RayletDriver/ClusterInfo",  # Ray client server
}
CORE_WORKER_METHOD = "/ray.rpc.CoreWorkerService/NumPendingTasks"
SENTINEL = b"\xc1\xfe\xed"  # transfer_queue's pickle-fallback marker frame (serial_utils._PICKLE_FALLBACK_SENTINEL)


def kind(process: str, role: str | None) -> str:
    """How to probe a socket of ``process`` whose port has the Ray ``role`` (a launcher's port name, ``worker`` for
    the worker range, None for none)."""
    if role in HTTP_ROLES:
        return "http"
    if role is not None:
        return "grpc"
    if process == "ray::vLLMHttpServer":
        return "vllm"
    if process.startswith(("ray::TransferQueue", "ray::SimpleStorage")):
        return "zmq"
    return "tcp"


def tcp(address: str, port: int, source: str | None) -> str:
    try:
        socket.create_connection((address, port), timeout=3, source_address=(source, 0) if source else None).close()
        return "connected"
    except ConnectionRefusedError:
        return "refused"
    except OSError as err:
        return f"no connection ({type(err).__name__})"


def grpc_call(address: str, port: int, role: str) -> str:
    import grpc

    with grpc.insecure_channel(f"{address}:{port}") as channel:
        call = channel.unary_unary(GRPC_METHODS.get(role, CORE_WORKER_METHOD))
        try:
            call(b"", timeout=5)
            return "gRPC call answered (OK)"
        except grpc.RpcError as err:
            return f"gRPC {err.code().name}"


def http(method: str, url: str, body: dict | None = None) -> tuple[str, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return str(response.status), response.read()
    except urllib.error.HTTPError as err:
        return str(err.code), err.read()
    except (OSError, ValueError) as err:  # not HTTP, reset, timed out
        return f"no HTTP answer ({type(err).__name__})", b""


def ray_http(address: str, port: int, role: str, markers: Path) -> str:
    status, _ = http("GET", f"http://{address}:{port}/")
    result = f"GET / {status}"
    if role == "ERC_RAY_AGENT_HTTP_PORT":  # the dashboard agent's job API
        marker = markers / f"job-{address}-{port}"
        status, _ = http("POST", f"http://{address}:{port}/api/job_agent/jobs/",
                         {"entrypoint": f"touch {marker}", "submission_id": f"outside-{port}"})
        result += f"; POST /api/job_agent/jobs/ {status}"
    return result


def vllm(address: str, port: int) -> str:
    status, body = http("GET", f"http://{address}:{port}/v1/models")
    result = f"GET /v1/models {status}"
    if status == "200":
        model = json.loads(body)["data"][0]["id"]
        status, body = http("POST", f"http://{address}:{port}/v1/completions",
                            {"model": model, "prompt": "What is 3 * 1?", "max_tokens": 4})
        generated = status == "200" and bool(json.loads(body).get("choices"))
        result += f"; POST /v1/completions {status}" + (" (generated text)" if generated else "")
    return result


class _Payload:
    """Unpickled, it writes its marker file: what any code of a peer could do instead."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


#: the identity TransferQueue's storage proxy forwards (transfer_queue 0.1.11): a peer chooses its own identity
SPOOFED_IDENTITY = b"TQ_STORAGE_outside_probe"


def zmq_request(address: str, port: int, markers: Path, source: str | None) -> str:
    """The payload sent twice, with ZMQ's default identity and with the identity the storage unit forwards."""
    import zmq

    results = []
    for label, identity in (("plain", None), ("as TQ_STORAGE_", SPOOFED_IDENTITY)):
        marker = markers / f"zmq-{address}-{port}-{label.replace(' ', '_')}"
        context = zmq.Context.instance()
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        if identity:
            dealer.setsockopt(zmq.IDENTITY, identity)
        try:
            dealer.connect(f"tcp://{source}:0;{address}:{port}" if source else f"tcp://{address}:{port}")
            dealer.send_multipart([SENTINEL, pickle.dumps(_Payload(marker))])
            answered = bool(dealer.poll(3000))
        finally:
            dealer.close()
        for _ in range(20):  # the payload runs as the request is decoded; the answer may come first
            if marker.exists():
                break
            time.sleep(0.1)
        results.append(f"{label}: " + ("payload ran" if marker.exists() else "payload did not run")
                       + (", answered" if answered else ", no answer"))
    return "; ".join(results)


def probe(process: str, address: str, port: int, role: str | None, markers: Path, source: str | None) -> tuple[str, str]:
    how = kind(process, role)
    reached = tcp(address, port, source)
    if reached != "connected" or how == "tcp":
        return how, reached
    if how == "grpc":
        return how, grpc_call(address, port, role)
    if how == "http":
        return how, ray_http(address, port, role, markers)
    if how == "vllm":
        return how, vllm(address, port)
    return how, zmq_request(address, port, markers, source)


def ray_roles(ray_ports: dict[str, str]) -> dict[int, str]:
    """Port -> its launcher's name, the worker range's ports -> ``worker``."""
    roles = {int(port): name for name, port in ray_ports.items() if "_WORKER_PORT" not in name}
    if "ERC_RAY_MIN_WORKER_PORT" not in ray_ports:  # a local run: Ray chose its workers' ports
        return roles
    workers = range(int(ray_ports["ERC_RAY_MIN_WORKER_PORT"]), int(ray_ports["ERC_RAY_MAX_WORKER_PORT"]) + 1)
    return roles | dict.fromkeys(workers, "worker")


def main(targets_file: str, markers_dir: str) -> int:
    markers = Path(markers_dir)
    targets = json.loads(Path(targets_file).read_text())
    roles = ray_roles(targets["ray_ports"])
    results = []
    for process, address, port in targets["sockets"]:
        how, result = probe(process, address, port, roles.get(port), markers, targets.get("source"))
        results.append({"process": process, "address": address, "port": port, "kind": how, "result": result})
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
