"""Removes the POSIX shared memory a run's processes leave behind in ``/dev/shm``.

vLLM's message queues between its engine and workers live in ``SharedMemory`` segments
(``/dev/shm/psm_*``) that the creating process unlinks when it exits normally. Ray stops a job's
actors with SIGKILL, so every run on vLLM leaves them behind: 240 + 160 MiB per CPU demo run,
which fills a laptop's ``/dev/shm`` within a few runs. Only runs that start their own Ray node
(``ray_kwargs.ray_init.address=local``) are cleaned: while the run lasts, the files under
``/dev/shm`` that the node's processes map are recorded by name every few seconds; after the node
stopped, those still present that no living process maps are removed. Nothing another job
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


def local_ray_node_pids() -> list[int]:
    """PIDs of the Ray node this process started (its processes and all their descendants); [] if none."""
    import psutil
    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # set only where ray.init started the node
    if not ray.is_initialized() or node is None or not node.head:
        return []
    roots = [info.process.pid for infos in node.all_processes.values() for info in infos if info.process]
    pids = set(roots)
    for pid in roots:
        try:
            pids.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    return sorted(pids)


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
def removes_run_shared_memory(poll_s: float = 5.0):
    """Around a run: record the /dev/shm files its Ray node's processes map (every ``poll_s``, since
    Ray may stop vLLM's actors before the run ends), then, at its end (also on error), stop the node
    and remove those files that are still there and that no living process maps."""
    import psutil
    import ray

    names: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(poll_s):
            names.update(mapped_shm_files(local_ray_node_pids()))

    watcher = threading.Thread(target=watch, name="verl_erc-shm-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        pids = local_ray_node_pids()
        names.update(mapped_shm_files(pids))
        if pids:
            ray.shutdown()
            psutil.wait_procs([p for p in map(_process, pids) if p], timeout=30)
        removed = remove_leftovers(names - mapped_shm_files(psutil.pids()))
        if removed:
            listing = ", ".join(f"{name} ({size / 2**20:.0f} MiB)" for name, size in removed.items())
            print(f"verl_erc: removed the shared memory the run left in {SHM_DIR}: {listing}", flush=True)


def _process(pid: int):
    import psutil

    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
