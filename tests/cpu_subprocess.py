"""Run a test script in a fresh Python process on verl's CPU platform and return what it reports.

verl resolves its platform once per process, and the CPU backend installs its process-group shim
when it activates; both would leak into every other test of a pytest session. Tests of the CPU
backend therefore run their checks in a child process with ``VERL_PLATFORM=cpu``, which prints
one JSON object as its last stdout line.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def skip_if_gpu_visible() -> None:
    """The CPU backend refuses machines where torch sees a CUDA device (by design)."""
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("the CPU backend refuses a machine with a visible CUDA device")


def run_cpu_script(script: str, *, timeout: float = 600, env: dict[str, str] | None = None) -> dict:
    """Run ``script`` with ``VERL_PLATFORM=cpu`` (a one-rank gloo group is ready to init) and return its JSON."""
    skip_if_gpu_visible()
    child_env = {
        **os.environ,
        "VERL_PLATFORM": "cpu",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        **(env or {}),
    }
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"CPU test script failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_cpu_ranks(script: str, world_size: int, *, timeout: float = 600, env: dict[str, str] | None = None) -> dict:
    """Run ``script`` as ``world_size`` ranks of one gloo group (a process each, ``VERL_PLATFORM=cpu``) and
    return rank 0's JSON (its last stdout line); every rank must exit 0."""
    skip_if_gpu_visible()
    port = str(free_port())
    procs = []
    for rank in range(world_size):
        child_env = {**os.environ, "VERL_PLATFORM": "cpu", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                     "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size), **(env or {})}
        procs.append(subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], env=child_env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for proc in procs:
            results.append(proc.communicate(timeout=timeout))
    finally:
        for proc in procs:
            proc.kill()
    for rank, (proc, (out, err)) in enumerate(zip(procs, results)):
        if proc.returncode != 0:
            raise AssertionError(f"rank {rank} of {world_size} failed ({proc.returncode}):\n{out[-4000:]}\n{err[-8000:]}")
    return json.loads(results[0][0].strip().splitlines()[-1])


@contextmanager
def removes_new_shm():
    """Around a child run (serial tests only): remove the ``/dev/shm`` files it created and left unmapped.

    For runs through verl's own entry point, which leaves vLLM's queues behind (``verl_erc.main``
    removes its own): the same selection as the run's clean-up (``verl_erc.run.cleanup.remove_created``).
    """
    from verl_erc.run.cleanup import SHM_DIR, remove_created

    before = set(os.listdir(SHM_DIR))
    try:
        yield
    finally:
        remove_created(set(os.listdir(SHM_DIR)), before)
