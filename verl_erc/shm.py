"""Removes what a run's processes leave behind: processes that outlive its Ray node, and their
POSIX shared memory in ``/dev/shm``.

vLLM's message queues between its engine and workers live in ``SharedMemory`` segments
(``/dev/shm/psm_*``) that the creating process unlinks when it exits normally. Ray stops a job's
actors with SIGKILL, so every run on vLLM leaves them behind: 240 + 160 MiB per CPU demo run,
which fills a laptop's ``/dev/shm`` within a few runs. vLLM's engine-core process, a child of
verl's vLLM server actor, does not watch its parent: when Ray kills the actor before the actor's
own exit stops it, the engine and its worker keep running after the run (seen once in a CI pair
of rehearsals: 2.5 GB of memory and the queues, until killed by hand). Only runs that start their
own Ray node (``ray_kwargs.ray_init.address=local``) are cleaned: while the run lasts, the node's
processes and all their descendants, and the files under ``/dev/shm`` they map, are recorded
every few seconds; after the node stopped, those processes still alive are killed, and the
recorded files still present that no living process maps are removed. Nothing another job
created is touched.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path

SHM_DIR = Path("/dev/shm")


def mapped_shm_files(pids) -> set[str]:
    """Names of the files under ``/dev/shm`` that the processes ``pids`` map (gone processes are skipped)."""
    prefix = f"{SHM_DIR}/"
    names = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
            path = fields[5] if len(fields) == 6 else ""
            if path.startswith(prefix) and not path.endswith("(deleted)"):
                names.add(path[len(prefix) :])
    return names


def local_ray_node_processes() -> list:
    """The processes of the Ray node this process started and all their descendants (``psutil.Process``
    objects, which tell a reused PID apart); [] if it started none."""
    import psutil
    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # set only where ray.init started the node
    if not ray.is_initialized() or node is None or not node.head:
        return []
    roots = [info.process.pid for infos in node.all_processes.values() for info in infos if info.process]
    procs = []
    for pid in roots:
        try:
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return procs


def kill_survivors(procs, grace_s: float = 10.0) -> list[str]:
    """Wait up to ``grace_s`` for ``procs`` to exit, then SIGKILL those still running (as Ray stops its
    actors) and wait for them; returns ``"name (pid)"`` of each one killed."""
    import psutil

    _, alive = psutil.wait_procs([proc for proc in procs if proc.is_running()], timeout=grace_s)  # not a reused PID
    killed = []
    for proc in alive:
        try:
            killed.append(f"{proc.name()} ({proc.pid})")
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=grace_s)
    return killed


def remove_leftovers(names: set[str]) -> dict[str, int]:
    """Unlink those of ``names`` still under ``/dev/shm``; returns the removed ones' sizes in bytes."""
    removed = {}
    for name in sorted(names):
        try:
            size = (SHM_DIR / name).stat().st_size
            os.unlink(SHM_DIR / name)
        except FileNotFoundError:
            continue
        removed[name] = size
    return removed


@contextmanager
def removes_run_leftovers(poll_s: float = 5.0):
    """Around a run: record its Ray node's processes and the /dev/shm files they map (every ``poll_s``,
    since Ray may stop vLLM's actors before the run ends), then, at its end (also on error), stop the
    node, kill the recorded processes that outlive it, and remove the recorded files that are still
    there and that no living process maps."""
    import psutil
    import ray

    procs: set = set()  # psutil.Process compares by PID and create time: a reused PID is another process
    names: set[str] = set()
    stop = threading.Event()

    def record() -> None:
        live = local_ray_node_processes()
        procs.update(live)
        names.update(mapped_shm_files(proc.pid for proc in live))

    def watch() -> None:
        while not stop.wait(poll_s):
            record()

    watcher = threading.Thread(target=watch, name="verl_erc-shm-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        record()
        if procs:
            ray.shutdown()
            killed = kill_survivors(list(procs))
            if killed:
                listing = ", ".join(killed)
                print(f"verl_erc: killed the processes the run left running after its Ray node stopped: {listing}", flush=True)
        removed = remove_leftovers(names - mapped_shm_files(psutil.pids()))
        if removed:
            listing = ", ".join(f"{name} ({size / 2**20:.0f} MiB)" for name, size in removed.items())
            print(f"verl_erc: removed the shared memory the run left in {SHM_DIR}: {listing}", flush=True)
