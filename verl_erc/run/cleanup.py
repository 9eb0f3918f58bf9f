"""Removes what a run's processes leave behind: processes that outlive its Ray node, and the POSIX shared
memory in ``/dev/shm`` that those processes created.

vLLM's message queues between its engine and workers live in ``SharedMemory`` segments
(``/dev/shm/psm_*``) that the creating process unlinks when it exits normally. Ray stops a job's
actors with SIGKILL, so every run on vLLM leaves them behind: 240 + 160 MiB per CPU rehearsal,
which fills a laptop's ``/dev/shm`` within a few runs. vLLM's engine-core process, a child of
verl's vLLM server actor, does not watch its parent: when Ray kills the actor before the actor's
own exit stops it, the engine and its worker keep running after the run.

Only runs that start their own Ray node (``ray_kwargs.ray_init.address=local``) are cleaned: while the
run lasts, the node's processes and all their descendants, and the files under ``/dev/shm`` they
map, are recorded every few seconds; after the node stopped, those processes still alive are
killed, and a recorded file is removed only if it is one the run created: its name was not there
when the run started, it is one of Python's ``multiprocessing`` names (``psm_*`` segments,
``sem.mp-*`` semaphores: what vLLM and Ray's workers create), it belongs to this user, and no living
process maps it. Files staged in ``/dev/shm`` (a model, verl's ``model.use_shm`` cache) are never
touched, and if a process of this user cannot be read the files stay. A clean-up error is printed,
never raised over the run's own result.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from fnmatch import fnmatchcase
from pathlib import Path

SHM_DIR = Path("/dev/shm")
#: what Python's multiprocessing creates there (shared_memory segments, named semaphores)
RUN_CREATED = ("psm_*", "sem.mp-*")


def mapped_shm_files(pids) -> set[str]:
    """Names of the files under ``/dev/shm`` that the processes ``pids`` map (gone processes are skipped)."""
    return _read_mappings(pids)[0]


def _read_mappings(pids) -> tuple[set[str], list[int]]:
    """The ``/dev/shm`` names ``pids`` map, and the PIDs of this user whose mappings could not be read."""
    prefix = f"{SHM_DIR}/"
    names, unreadable = set(), []
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except PermissionError:
            try:  # PID 1 (a container's or VM's init, which a sandbox may hide) maps no run's queues
                if int(pid) != 1 and os.stat(f"/proc/{pid}").st_uid == os.getuid():
                    unreadable.append(pid)
            except OSError:
                pass
            continue
        except OSError:
            continue
        for line in maps.splitlines():
            fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
            path = fields[5] if len(fields) == 6 else ""
            if path.startswith(prefix) and not path.endswith("(deleted)"):
                names.add(path[len(prefix) :])
    return names, unreadable


def created_by_run(names: set[str], existing_before: set[str]) -> set[str]:
    """Those of ``names`` the run may have created: new since it started, a multiprocessing name, this user's."""
    chosen = set()
    for name in names - existing_before:
        try:
            owned = (SHM_DIR / name).stat().st_uid == os.getuid()
        except OSError:
            continue
        if owned and any(fnmatchcase(name, pattern) for pattern in RUN_CREATED):
            chosen.add(name)
    return chosen


def unmapped(names: set[str]) -> tuple[set[str], str | None]:
    """Those of ``names`` no living process maps, and why none may be removed (a process that cannot be read)."""
    import psutil

    mapped, unreadable = _read_mappings(psutil.pids())
    if unreadable:
        return set(), f"the mappings of process(es) {', '.join(map(str, unreadable[:5]))} cannot be read"
    return names - mapped, None


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
        except (psutil.NoSuchProcess, psutil.AccessDenied):
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
        except (psutil.NoSuchProcess, psutil.AccessDenied):
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


def remove_created(names: set[str], existing_before: set[str]) -> tuple[dict[str, int], str | None]:
    """Remove those of ``names`` the run created that nothing maps any more (:func:`created_by_run`,
    :func:`unmapped`); returns the removed sizes and, if nothing could be removed safely, why."""
    free, why_not = unmapped(created_by_run(names, existing_before))
    return remove_leftovers(free), why_not


@contextmanager
def removes_run_leftovers(poll_s: float = 5.0):
    """Around a run: record its Ray node's processes and the /dev/shm files they map (every ``poll_s``,
    since Ray may stop vLLM's actors before the run ends), then, at its end (also on error), stop the
    node, kill the recorded processes that outlive it, and remove the recorded files the run created."""
    existing_before = set(os.listdir(SHM_DIR)) if SHM_DIR.is_dir() else set()
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
        try:
            _clean_up(record, procs, names, existing_before)
        except Exception as error:  # the run's own result (or exception) stands
            print(f"verl_erc: WARNING: the run's clean-up failed ({type(error).__name__}: {error}); check for "
                  f"leftover processes and files in {SHM_DIR}", flush=True)


def _clean_up(record, procs: set, names: set[str], existing_before: set[str]) -> None:
    import ray

    record()
    if procs:
        ray.shutdown()
        killed = kill_survivors(list(procs))
        if killed:
            print(f"verl_erc: killed the processes the run left running after its Ray node stopped: {', '.join(killed)}",
                  flush=True)
    removed, why_not = remove_created(names, existing_before)
    if removed:
        listing = ", ".join(f"{name} ({size / 2**20:.0f} MiB)" for name, size in removed.items())
        print(f"verl_erc: removed the shared memory the run left in {SHM_DIR}: {listing}", flush=True)
    if why_not:
        print(f"verl_erc: left the run's files in {SHM_DIR}: {why_not}", flush=True)
