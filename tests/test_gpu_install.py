"""The GPU install resolves to verl 0.9.1's own [vllm] set (CPU only: a pip dry run, nothing is installed).

Resolves ``pip install -c requirements/constraints-gpu.txt -e ".[gpu]"`` in a throw-away venv and checks,
from pip's JSON report, that vllm/torch/transformers land on the pins of verl's ``[vllm]`` extra (read from
the installed verl's metadata) and that the resolved set is exactly requirements/constraints-gpu.txt.

Needs the package index (PyPI). pip fetches whole wheels to read their metadata: about 3.4 GB of
downloads (torch, vllm, CUDA libraries), 1-3 minutes here. Deselect with ``pytest -m "not gpu_resolve"``.
"""

import json
import os
import platform
import re
import subprocess
import sys
import time
from importlib.metadata import requires, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "requirements" / "constraints-gpu.txt"
RESOLVE_TIMEOUT_S = 900

# what constraints-gpu.txt was generated for; verl 0.9.1's [vllm] pins, written out
EXPECTED = {"verl": "0.9.1", "vllm": "0.24.0", "torch": "2.11.0", "transformers": "5.9.0"}
PINNED_BY_VERL = ("vllm", "torch", "torchvision", "torchaudio", "transformers")

pytestmark = [
    pytest.mark.gpu_resolve,
    pytest.mark.timeout(RESOLVE_TIMEOUT_S + 300),
    pytest.mark.skipif(
        not (sys.platform == "linux" and platform.machine() == "x86_64" and sys.version_info[:2] == (3, 11)),
        reason="requirements/constraints-gpu.txt is the resolution for CPython 3.11 on Linux x86_64",
    ),
]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _verl_vllm_pins() -> dict[str, str]:
    """``name -> version`` for the ``==`` pins that verl's own ``[vllm]`` extra adds."""
    pins = {}
    for line in requires("verl") or []:
        req = Requirement(line)
        if req.marker is None or not req.marker.evaluate({"extra": "vllm"}) or req.marker.evaluate({"extra": ""}):
            continue  # not specific to the vllm extra
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            pins[_norm(req.name)] = exact[0]
    return pins


def _constraints() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, ver = line.partition("==")
            pins[_norm(name)] = ver
    return pins


def _pip_tail(proc: subprocess.CompletedProcess, n: int = 60) -> str:
    # this machine's pip config may list local indexes: their "Location ... is ignored" lines are noise
    lines = [l for l in (proc.stdout + proc.stderr).splitlines() if "is ignored: it is neither" not in l]
    return "\n".join(lines[-n:])


@pytest.fixture(scope="module")
def gpu_report(tmp_path_factory):
    """pip's ``--report`` for the constrained ``.[gpu]`` resolution, made in a fresh venv."""
    tmp = tmp_path_factory.mktemp("gpu_resolve")
    venv = tmp / "venv"
    # --upgrade-deps: a current pip, as the README asks for (the 23.x pip of a bare venv backtracks for long)
    mk = subprocess.run([sys.executable, "-m", "venv", "--upgrade-deps", str(venv)], capture_output=True, text=True, timeout=300)
    if mk.returncode != 0:
        pytest.fail(f"could not make the throw-away venv (rc={mk.returncode}):\n{_pip_tail(mk)}")
    report = tmp / "report.json"
    cmd = [
        str(venv / "bin" / "python"), "-m", "pip", "install", "--dry-run", "--ignore-installed",
        "--report", str(report), "-c", str(CONSTRAINTS), "-e", ".[gpu]",
    ]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    env.pop("PIP_REQUIRE_VIRTUALENV", None)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RESOLVE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"pip did not resolve .[gpu] within {RESOLVE_TIMEOUT_S} s: {' '.join(cmd)}")
    wall = time.monotonic() - t0
    if proc.returncode != 0 or not report.exists():
        pytest.fail(f"pip could not resolve .[gpu] (rc={proc.returncode}, {wall:.0f} s):\n{_pip_tail(proc)}")
    print(f"resolved .[gpu] in {wall:.0f} s")
    return json.loads(report.read_text())


def _resolved(report: dict) -> dict[str, str]:
    return {_norm(item["metadata"]["name"]): item["metadata"]["version"] for item in report["install"]}


def test_verl_pins_read_from_metadata():
    assert version("verl") == EXPECTED["verl"]
    pins = _verl_vllm_pins()
    for name in ("vllm", "torch", "transformers"):
        assert pins.get(name) == EXPECTED[name], f"verl {version('verl')}'s [vllm] extra pins {name}=={pins.get(name)}"


def test_gpu_set_follows_verl_vllm_extra(gpu_report):
    resolved = _resolved(gpu_report)
    pins = _verl_vllm_pins()
    assert resolved.get("verl") == version("verl") == EXPECTED["verl"]
    for name in PINNED_BY_VERL:
        if name in pins:
            assert resolved.get(name) == pins[name], f"{name}: resolved {resolved.get(name)}, verl[vllm] pins {pins[name]}"
    for name, ver in EXPECTED.items():
        assert resolved.get(name) == ver, f"{name}: resolved {resolved.get(name)}, expected {ver}"
    assert "flash-attn" not in resolved  # sdist that needs torch at build time: a separate step (README)
    ours = [i for i in gpu_report["install"] if _norm(i["metadata"]["name"]) == "verl-erc"]
    assert ours and "gpu" in (ours[0].get("requested_extras") or [])


def test_gpu_set_is_the_constraints_file(gpu_report):
    resolved = _resolved(gpu_report)
    resolved.pop("verl-erc")
    pinned = _constraints()
    missing = sorted(set(resolved) - set(pinned))
    unused = sorted(set(pinned) - set(resolved))
    assert not missing and not unused, (
        f"constraints-gpu.txt is stale: resolved but not pinned {missing}; pinned but not resolved {unused}"
    )
    assert {k: v for k, v in resolved.items() if pinned[k] != v} == {}
