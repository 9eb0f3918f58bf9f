"""What docs/security.md says of the components verl runs beside Ray, checked against the installed versions.

If a check here fails after an upgrade, the component changed: update docs/security.md (and the README's
Slurm section) with it.
"""

from __future__ import annotations

import builtins
import json
import os
import pickle
import subprocess
import sys

import pytest
from omegaconf import OmegaConf
from transfer_queue.utils.zmq_utils import ZMQMessage

from verl_erc.run.preflight import RAY_AUTH_ENV, PreflightError, protect_private_ray
from verl_erc.run.zmq_allowlist import ALLOW_ENV, SETUP_HOOK, allowlist, setup_hook_runtime_env


class _Probe:
    """Unpickling this runs code: it sets ``builtins._erc_probe`` (what a peer's payload could do instead)."""

    def __reduce__(self):
        return exec, ("import builtins; builtins._erc_probe = 'ran'",)


def test_transfer_queue_runs_code_from_a_message_it_receives():
    """TransferQueue's controller and storage decode every ZMQ request with ZMQMessage.deserialize; a request whose
    first frame is its pickle-fallback marker is unpickled, before anything checks who sent it (no ZMQ CURVE or
    ZAP authentication in transfer_queue 0.1.11). Its ports listen on the node's address."""
    frames = [b"\xc1\xfe\xed", pickle.dumps(_Probe())]  # serial_utils._PICKLE_FALLBACK_SENTINEL, then the payload
    try:
        with pytest.raises(Exception):  # not a message: refused, but only after the payload ran
            ZMQMessage.deserialize(frames)
        assert getattr(builtins, "_erc_probe", None) == "ran"
    finally:
        builtins.__dict__.pop("_erc_probe", None)


# --- the job's ZMQ allowlist (verl_erc.run.zmq_allowlist) -------------------------------------------------------


def test_the_allowlist_is_the_nodes_loopback_and_the_extra_addresses_in_both_forms_zap_reports():
    assert allowlist(["10.0.0.2", "10.0.0.1"], "192.168.1.5, [fd00::7]") == tuple(sorted({
        "10.0.0.1", "10.0.0.2", "192.168.1.5", "127.0.0.1", "::ffff:10.0.0.1", "::ffff:10.0.0.2",
        "::ffff:192.168.1.5", "::ffff:127.0.0.1", "fd00::7", "::1"}))
    with pytest.raises(ValueError, match="node7"):
        allowlist([], "node7")


def test_the_launch_sets_rays_setup_hook_and_refuses_a_hook_of_its_own(monkeypatch):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    ray_init = OmegaConf.create({"runtime_env": {"env_vars": {"VERL_PLATFORM": "cpu"}}})
    assert setup_hook_runtime_env(ray_init) is None
    assert ray_init.runtime_env.worker_process_setup_hook == SETUP_HOOK == "verl_erc.run.zmq_allowlist.install"
    assert dict(ray_init.runtime_env.env_vars) == {"VERL_PLATFORM": "cpu"}
    monkeypatch.setenv(ALLOW_ENV, "10.1.2.3")  # the workers get the extra addresses
    setup_hook_runtime_env(ray_init)
    assert ray_init.runtime_env.env_vars[ALLOW_ENV] == "10.1.2.3"
    with pytest.raises(ValueError, match="worker_process_setup_hook=my.hook: verl-erc sets it"):
        setup_hook_runtime_env(OmegaConf.create({"runtime_env": {"worker_process_setup_hook": "my.hook"}}))
    monkeypatch.setenv(ALLOW_ENV, "not-an-address")
    with pytest.raises(ValueError, match="not-an-address"):
        setup_hook_runtime_env(OmegaConf.create({}))
    monkeypatch.setenv(ALLOW_ENV, "off")  # off: said, and no hook
    ray_init = OmegaConf.create({})
    assert "accept connections from any host" in setup_hook_runtime_env(ray_init)
    assert "runtime_env" not in ray_init


GUARDED_STORAGE = r"""
import json, os, pickle, sys, time
from verl_erc.run import zmq_allowlist
if sys.argv[1] == "guarded":
    zmq_allowlist.guard(zmq_allowlist.allowlist([]))  # loopback (127.0.0.1) only
import zmq
import transfer_queue.storage.simple_storage as storage
storage.get_node_ip_address = lambda: "127.0.0.1"  # Ray's node address, here loopback
unit = storage.SimpleStorageUnit.__ray_metadata__.modified_class(
    config={"total_storage_size": 8, "num_data_storage_units": 1})
port = unit.zmq_server_info.ports["put_get_socket"]

class Payload:
    def __init__(self, marker):
        self.marker = marker
    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)

results = {}
context = zmq.Context()
# the storage unit's proxy forwards identities starting with TQ_STORAGE_ only: a peer may choose that one
for source in ("127.0.0.2", "127.0.0.1"):
    marker = os.path.join(sys.argv[2], source)
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, b"TQ_STORAGE_probe")
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"tcp://{source}:0;127.0.0.1:{port}")  # from source, to the unit
    dealer.send_multipart([b"\xc1\xfe\xed", pickle.dumps(Payload(marker))])  # the pickle-fallback marker, the payload
    refused = sys.argv[1] == "guarded" and source == "127.0.0.2"
    answered = bool(dealer.poll(3000 if refused else 20000))  # a busy machine answers late
    dealer.close()
    for _ in range(50):  # the payload runs as the request is decoded: the answer may come first
        if os.path.exists(marker):
            break
        time.sleep(0.1)
    results[source] = {"answered": answered, "payload_ran": os.path.exists(marker)}
context.destroy(0)
unit.shutdown()  # closes its context: returns with the ZAP handler stopped
print(json.dumps(results))
"""


@pytest.mark.process
@pytest.mark.parametrize("mode", ["guarded", "unguarded"])
def test_transfer_queues_storage_runs_a_payload_only_from_an_allowed_host(mode, tmp_path):
    """A real TransferQueue storage unit, its socket on 127.0.0.1; a peer with the identity the unit forwards sends
    a pickled payload from 127.0.0.2 (not allowed) and from 127.0.0.1 (allowed). Guarded, the first is refused before
    a byte reaches TransferQueue (and the refusal is logged, naming the peer); unguarded, both payloads run."""
    out = subprocess.run([sys.executable, "-c", GUARDED_STORAGE, mode, str(tmp_path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert results["127.0.0.1"]["payload_ran"] is True
    assert results["127.0.0.2"] == ({"answered": False, "payload_ran": False} if mode == "guarded" else
                                    {"answered": True, "payload_ran": True})
    refused = "verl_erc: refused a ZMQ connection from 127.0.0.2 (not a host of this job's Ray cluster"
    assert (refused in out.stderr) == (mode == "guarded"), out.stderr[-3000:]


RAY_WORKER = r"""
import json, sys
import ray, zmq
from verl_erc.run.zmq_allowlist import SETUP_HOOK

@ray.remote(num_cpus=0)
class Server:
    def start(self):
        from ray.util import get_node_ip_address
        self.socket = zmq.Context().socket(zmq.ROUTER)
        self.ip = get_node_ip_address()
        return self.ip, self.socket.bind_to_random_port(f"tcp://{self.ip}")
    def received(self):
        got = []
        while self.socket.poll(100):
            got.append(self.socket.recv_multipart()[-1].decode())
        return got

ray.init(address="local", num_cpus=1, include_dashboard=False,
         runtime_env={"worker_process_setup_hook": SETUP_HOOK, "env_vars": {"VERL_ERC_ZMQ_ALLOW": sys.argv[1]}})
server = Server.remote()
ip, port = ray.get(server.start.remote())
context = zmq.Context()
for source in (ip, "127.0.0.2", "127.0.0.3"):  # the node's own address, a stranger, an extra allowed address
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 1000)
    dealer.connect(f"tcp://{source}:0;{ip}:{port}")
    dealer.send(source.encode())
received = ray.get(server.received.remote())
import time; time.sleep(1)
received += ray.get(server.received.remote())
print(json.dumps({"node": ip, "received": sorted(received)}))
context.destroy(0)
ray.shutdown()
"""


@pytest.mark.process
def test_rays_setup_hook_guards_the_sockets_a_job_worker_binds():
    """In a Ray worker of a job whose runtime_env names the setup hook (as the launch sets it), a ZMQ socket bound on
    the node's address takes messages from the node and the extra addresses, not from another source."""
    out = subprocess.run([sys.executable, "-c", RAY_WORKER, "127.0.0.3"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "RAY_ADDRESS": ""})
    assert out.returncode == 0, out.stderr[-5000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["received"] == sorted([report["node"], "127.0.0.3"]), (report, out.stderr[-3000:])


def test_a_private_ray_gets_a_fresh_token_and_vllm_key_unless_set_or_turned_off(monkeypatch, capsys):
    monkeypatch.delenv(RAY_AUTH_ENV, raising=False)
    protect_private_ray()  # conftest's environment_stays_in_its_test unsets the others
    first = {name: os.environ[name] for name in ("RAY_AUTH_TOKEN", "VLLM_API_KEY")}
    assert "RAY_AUTH_MODE" not in os.environ  # Ray's default for a local instance: token (read at import)
    assert len(first["RAY_AUTH_TOKEN"]) == len(first["VLLM_API_KEY"]) == 64
    protect_private_ray()  # set: kept (a relaunch in the same shell, or the user's own)
    assert {name: os.environ[name] for name in first} == first
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(PreflightError, match="RAY_AUTH_MODE=disabled: a run's Ray instance uses token authentication"):
        protect_private_ray()
    for name in first:
        monkeypatch.delenv(name)
    monkeypatch.setenv(RAY_AUTH_ENV, "0")
    protect_private_ray()
    assert os.environ["RAY_AUTH_MODE"] == "disabled" and "RAY_AUTH_TOKEN" not in os.environ
    assert len(os.environ["VLLM_API_KEY"]) == 64
    assert "ERC_RAY_AUTH=0: Ray's token authentication is off" in capsys.readouterr().out
    monkeypatch.setenv(RAY_AUTH_ENV, "yes")
    with pytest.raises(PreflightError, match="ERC_RAY_AUTH must be 1 .* or 0 .*, got 'yes'"):
        protect_private_ray()
