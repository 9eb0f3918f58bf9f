"""What every benchmark here shares: process memory, glibc's allocator settings, the record of the environment.

Imports only the standard library (and psutil/torch where a function needs them), so a benchmark that must run
with torch and transformers alone (``erc_noise_floor.py --device cuda`` on a bare GPU machine) can use it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def use_source_tree() -> None:
    """Make ``import verl_erc`` find this checkout when the package is not installed."""
    import importlib.util

    if importlib.util.find_spec("verl_erc") is None:
        sys.path.insert(0, ROOT)


def rss_bytes() -> int:
    """Resident memory of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux: KiB


def fix_malloc_mmap_threshold(nbytes: int) -> bool:
    """glibc: serve every allocation >= ``nbytes`` by mmap and give it back on free.

    By default glibc raises this threshold (up to 32 MiB) each time a large block is freed, so which later
    tensors land in the never-shrinking heap depends on the allocation history: the same tensors could then
    show peak RSS differing by a GiB between variants. A fixed threshold (which also turns the dynamic
    adjustment off) makes peak RSS track the live tensors. Returns False where mallopt is unavailable.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_MMAP_THRESHOLD = -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, int(nbytes)))
    except Exception:  # noqa: BLE001 -- not glibc
        return False


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def environment(device: str = "cpu") -> dict:
    """Where a measurement was taken: date, machine, package versions (read from metadata, nothing imported but
    torch), the checkout's commit and whether the measured code had uncommitted changes."""
    import torch

    env = {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        **{package: _version(package) for package in ("torch", "transformers", "verl", "verl-erc", "vllm")},
    }
    try:
        env["git_commit"] = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True,
                                           timeout=10).stdout.strip() or None
        env["git_dirty"] = bool(subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "verl_erc", "benchmarks"],
                                               capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
        env["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    return env


def write_report(path, report: dict) -> None:
    """Write a benchmark's JSON report to ``path`` (its folder made if missing) and say where."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
