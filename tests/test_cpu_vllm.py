"""verl's vLLM rollout on the CPU: the ``vllm`` alias, the vLLM shim and its pin, the /dev/shm clean-up.

The vLLM checks run in one child process (importing vLLM is slow, and the shim patches a vLLM
class for the process). ``test_vllm_cpu_drops_linear_weights`` pins the vLLM code under shim 3
(``verl_erc/cpu/shims.py``): it fails when vLLM changes there; re-check the shim then.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cpu_subprocess import run_cpu_script

from verl_erc.cpu.checks import WORKER_EXTENSION
from verl_erc.run.cleanup import SHM_DIR, kill_survivors, mapped_shm_files, remove_leftovers

ROOT = Path(__file__).resolve().parents[1]

VLLM_SCRIPT = r"""
import inspect, json
import torch
import verl.third_party.vllm as verl_vllm  # reads importlib.metadata.version("vllm")
from vllm.platforms import current_platform
from vllm.model_executor.layers.linear import UnquantizedLinearMethod

from verl_erc.cpu import shims

report = {"verl_sees_vllm": verl_vllm.package_version, "vllm_platform_is_cpu": current_platform.is_cpu()}
report["process_weights_source"] = inspect.getsource(UnquantizedLinearMethod.process_weights_after_loading)

torch.manual_seed(0)
x, w1, w2 = torch.randn(3, 8), torch.randn(4, 8), torch.randn(4, 8)


def linear_layer():
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(w1.clone(), requires_grad=False)
    return layer


layer = linear_layer()
UnquantizedLinearMethod().process_weights_after_loading(layer)  # vLLM's own post-load step
report["vllm_weight_numel_after_packing"] = layer.weight.numel()

shims.keep_vllm_cpu_linear_weights()
shims.keep_vllm_cpu_linear_weights()  # idempotent
method, layer = UnquantizedLinearMethod(), linear_layer()
method.process_weights_after_loading(layer)
report["shim_weight_kept"] = torch.equal(layer.weight, w1)
report["shim_packed_matches_linear"] = (method.apply(layer, x) - x @ w1.T).abs().max().item()
layer.weight.data.copy_(w2)  # verl's in-place reload, then its second post-load pass
method.process_weights_after_loading(layer)
report["shim_after_reload_matches_new_weights"] = (method.apply(layer, x) - x @ w2.T).abs().max().item()

from verl.workers.rollout.vllm_rollout.utils import vLLMColocateWorkerExtension
from verl_erc.cpu.vllm_worker import CPUColocateWorkerExtension

report["extension_is_verls"] = issubclass(CPUColocateWorkerExtension, vLLMColocateWorkerExtension)
report["extension_path"] = f"{CPUColocateWorkerExtension.__module__}.{CPUColocateWorkerExtension.__qualname__}"
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def report():
    return run_cpu_script(VLLM_SCRIPT, timeout=300)


@pytest.mark.process
def test_vllm_alias_names_the_cpu_build_verl_and_vllm_read(report):
    cpu_build = importlib.metadata.version("vllm-cpu")
    assert importlib.metadata.version("vllm") == f"{cpu_build}+cpu"
    assert importlib.metadata.requires("vllm") == [f"vllm-cpu=={cpu_build}"]
    alias_setup = (ROOT / "packaging" / "vllm-cpu-alias" / "setup.py").read_text()
    assert f'VLLM_CPU = "{cpu_build}"' in alias_setup
    assert f"vllm-cpu=={cpu_build}\n" in (ROOT / "requirements" / "constraints-cpu.txt").read_text()
    assert report["verl_sees_vllm"] == f"{cpu_build}+cpu"
    assert report["vllm_platform_is_cpu"] is True  # vLLM infers its device from the "+cpu"


@pytest.mark.process
def test_vllm_cpu_drops_linear_weights_after_packing(report):
    """Why shim 3 exists: vLLM-CPU empties the weight verl's sync loads into."""
    assert "dispatch_cpu_unquantized_gemm(layer, remove_weight=True)" in report["process_weights_source"]
    assert report["vllm_weight_numel_after_packing"] == 0


@pytest.mark.process
def test_shim_keeps_the_weight_and_repacks_after_an_in_place_reload(report):
    assert report["shim_weight_kept"] is True
    assert report["shim_packed_matches_linear"] < 1e-5
    assert report["shim_after_reload_matches_new_weights"] < 1e-5


@pytest.mark.process
def test_cpu_configs_name_the_worker_extension_that_installs_the_shim(report):
    assert report["extension_is_verls"] is True
    assert report["extension_path"] == WORKER_EXTENSION
    assert f"worker_extension_cls: {WORKER_EXTENSION}" in (ROOT / "hydra_conf" / "rehearsal" / "laptop.yaml").read_text()
    assert "shims.keep_vllm_cpu_linear_weights()" in (ROOT / "verl_erc" / "cpu" / "vllm_worker.py").read_text()


LEAKER = r"""
import signal, sys, time
from multiprocessing import resource_tracker, shared_memory
shm = shared_memory.SharedMemory(create=True, size=1 << 20)
resource_tracker.unregister(shm._name, "shared_memory")  # as a SIGKILLed vLLM process: nobody unlinks it
print(shm.name, flush=True)
time.sleep(600)
"""


@pytest.mark.process
def test_shared_memory_a_killed_process_mapped_is_removed_by_name_and_nothing_else():
    other = SHM_DIR / "verl_erc_test_not_ours"
    other.write_bytes(b"x")
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(LEAKER)], stdout=subprocess.PIPE, text=True)
    try:
        name = child.stdout.readline().strip()
        assert re.fullmatch(r"psm_\w+", name)
        names = mapped_shm_files([child.pid, 999999999])  # a gone PID is skipped
        assert names == {name}
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        assert (SHM_DIR / name).exists()  # the leak the run clean-up is for
        assert remove_leftovers(names | {"psm_never_there"}) == {name: 1 << 20}
        assert not (SHM_DIR / name).exists() and other.exists()
    finally:
        child.kill()
        other.unlink()


@pytest.mark.process
def test_a_process_that_outlives_the_run_is_killed_and_its_shared_memory_removed():
    import psutil

    # an orphaned vLLM engine: holds its queue, ignores SIGTERM; and a process of the run that already exited
    script = textwrap.dedent(LEAKER).replace("print(shm.name", "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint(shm.name")
    survivor = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    name = survivor.stdout.readline().strip()
    try:
        procs = [psutil.Process(survivor.pid), psutil.Process(exited.pid)]
        exited.wait(timeout=30)
        names, label = mapped_shm_files([survivor.pid]), f"{procs[0].name()} ({survivor.pid})"
        assert kill_survivors(procs, grace_s=0.5) == [label]
        assert not psutil.pid_exists(survivor.pid)  # killed, and reaped by kill_survivors' wait
        assert remove_leftovers(names - mapped_shm_files(psutil.pids())) == {name: 1 << 20}
    finally:
        survivor.kill()
        survivor.wait(timeout=30)
        if name:  # also when an assertion failed
            remove_leftovers({name})


def test_the_run_clean_up_removes_only_new_multiprocessing_files_and_nothing_when_a_mapper_is_unreadable(monkeypatch):
    """verl_erc.run.cleanup.remove_created: a file staged before the run (a model in /dev/shm) and a new file of another
    kind (verl's model.use_shm cache) survive; a new unmapped psm_ file of this user goes; nothing goes when
    some process's mappings cannot be read."""
    from verl_erc.run import cleanup as shm

    staged, cache = SHM_DIR / "psm_verl_erc_test_staged", SHM_DIR / "verl_erc_test_cache"
    staged.write_bytes(b"x")
    before = set(os.listdir(SHM_DIR))
    new = SHM_DIR / "psm_verl_erc_test_new"
    new.write_bytes(b"y" * 10)
    cache.write_bytes(b"z")
    try:
        names = {staged.name, new.name, cache.name}
        monkeypatch.setattr(shm, "_read_mappings", lambda pids: (set(), [4242]))
        assert shm.remove_created(names, before) == ({}, "the mappings of process(es) 4242 cannot be read")
        monkeypatch.undo()
        assert shm.remove_created(names, before) == ({new.name: 10}, None)
        assert staged.exists() and cache.exists() and not new.exists()
    finally:
        for path in (staged, new, cache):
            path.unlink(missing_ok=True)


def test_a_failing_clean_up_never_replaces_the_runs_result(monkeypatch, capsys):
    """verl_erc.run.cleanup.removes_run_leftovers: an error of the clean-up is printed; the run's own exception (or its
    success) is what the caller sees."""
    from verl_erc.run import cleanup as shm

    def broken(*args):
        raise OSError("clean-up broke")

    monkeypatch.setattr(shm, "_clean_up", broken)
    monkeypatch.setattr(shm, "local_ray_node_processes", lambda: [])
    with pytest.raises(KeyError, match="the run's own error"):
        with shm.removes_run_leftovers(poll_s=60):
            raise KeyError("the run's own error")
    with shm.removes_run_leftovers(poll_s=60):
        pass  # a run that succeeded still succeeds
    out = capsys.readouterr().out
    assert out.count("the run's clean-up failed (OSError: clean-up broke)") == 2
