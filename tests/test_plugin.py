"""The plugin registers into verl's modules when they are imported, and costs nothing where they are not.

verl imports the plugin in every process that imports verl; the reward pool's processes, the
agent-loop workers and the rollout server never import verl's engine or V1 trainer modules, and
must not pay for them (:mod:`verl_erc.hooks.after_import`).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
from cpu_subprocess import skip_if_gpu_visible

from verl_erc.hooks.after_import import after_import

HEAVY = ["verl.trainer.ppo.core_algos", "verl.workers.engine", "verl.trainer.ppo.v1", "vllm"]


def _fresh(script: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.process
def test_import_verl_loads_the_plugin_without_verls_engine_trainer_or_loss_modules():
    report = _fresh(f"""
        import json, sys
        import verl
        print(json.dumps({{"plugin": "verl_erc.plugin" in sys.modules,
                           "loaded": sorted(m for m in {HEAVY!r} if m in sys.modules)}}))
    """)
    assert report == {"plugin": True, "loaded": []}


@pytest.mark.process
def test_each_registration_happens_when_its_verl_module_is_imported():
    report = _fresh("""
        import json
        import verl
        from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY
        gppo = "gppo" in POLICY_LOSS_REGISTRY
        from verl.trainer.ppo.v1 import get_trainer_cls
        from verl_erc.hooks.trainer import ErcTrainerMixin
        trainers = {m: issubclass(get_trainer_cls(m), ErcTrainerMixin) for m in ("sync", "colocate_async", "separate_async")}
        from verl.workers.engine import EngineRegistry
        engine = EngineRegistry._engines["language_model"]["fsdp2"][("cuda", "nvidia")].__name__
        print(json.dumps({"gppo": gppo, "trainers": trainers, "engine": engine}))
    """)
    assert report == {
        "gppo": True,
        "trainers": {"sync": True, "colocate_async": True, "separate_async": True},
        "engine": "ErcFSDPEngineWithLMHead",
    }


@pytest.mark.process
def test_on_the_cpu_platform_the_cpu_engines_and_gloo_shim_also_wait_for_verls_modules():
    skip_if_gpu_visible()
    report = _fresh(f"""
        import json, sys
        import verl
        loaded = sorted(m for m in {HEAVY!r} if m in sys.modules)
        from verl.workers import engine_workers
        from verl.workers.engine import EngineRegistry
        print(json.dumps({{
            "loaded": loaded,
            "engine": EngineRegistry._engines["language_model"]["fsdp2"]["cpu"].__name__,
            "shim": getattr(engine_workers.initialize_global_process_group_ray, "_verl_erc_cpu_shim", False),
        }}))
    """, VERL_PLATFORM="cpu")
    assert report == {"loaded": [], "engine": "CPUFSDPEngineWithLMHead", "shim": True}


@pytest.mark.process
def test_importing_our_modules_first_registers_them_too():
    """Importing verl_erc.hooks.trainer (or .engine) before verl's module still registers, exactly once."""
    report = _fresh("""
        import json
        from verl_erc.hooks.trainer import ErcTrainerMixin
        from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY
        from verl_erc.hooks.engine import ErcFSDPEngineWithLMHead
        from verl.workers.engine import EngineRegistry
        print(json.dumps({
            "trainers": sorted(n for n, c in TRAINER_REGISTRY.items() if issubclass(c, ErcTrainerMixin)),
            "wrapped_once": not any(issubclass(c._verl_cls, ErcTrainerMixin) for c in TRAINER_REGISTRY.values()),
            "engine": EngineRegistry._engines["language_model"]["fsdp2"][("cuda", "nvidia")] is ErcFSDPEngineWithLMHead,
        }))
    """)
    assert report == {"trainers": ["colocate_async", "separate_async", "sync"], "wrapped_once": True, "engine": True}


@pytest.mark.process
def test_importing_the_replay_buffer_first_registers_the_trainers():
    """verl_erc.sampler imports verl's V1 package, whose post-import hook wires the trainers: that wiring must not
    import the sampler back (a circular import there once turned the whole plugin off)."""
    report = _fresh("""
        import json
        import verl_erc.sampler
        from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY
        print(json.dumps(sorted(n for n, c in TRAINER_REGISTRY.items() if "ErcTrainerMixin" in {b.__name__ for b in c.__mro__})))
    """)
    assert report == ["colocate_async", "separate_async", "sync"]


@pytest.mark.process
@pytest.mark.parametrize("first", ["verl_erc.hooks.engine", "verl_erc.hooks.entropy_hook", "verl_erc.cpu.engines"])
def test_on_the_cpu_platform_any_of_our_engine_modules_imports_first(first):
    """Our engine modules import verl's engine package, whose hooks import the CPU engines: no import cycle."""
    skip_if_gpu_visible()
    report = _fresh(f"""
        import json
        import {first}
        from verl.workers.engine import EngineRegistry
        from verl_erc.hooks.entropy_hook import ErcEntropyMixin
        engines = EngineRegistry._engines["language_model"]["fsdp2"]
        print(json.dumps({{"cpu": engines["cpu"].__name__, "cuda": engines[("cuda", "nvidia")].__name__,
                           "hooked": issubclass(engines["cpu"], ErcEntropyMixin)}}))
    """, VERL_PLATFORM="cpu")
    assert report == {"cpu": "CPUFSDPEngineWithLMHead", "cuda": "ErcFSDPEngineWithLMHead", "hooked": True}


def test_after_import_runs_after_the_module_executed_once_and_at_once_if_already_imported(tmp_path, monkeypatch):
    (tmp_path / "hooked_pkg").mkdir()
    (tmp_path / "hooked_pkg" / "__init__.py").write_text("VALUE = 41\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    after_import("hooked_pkg", lambda: seen.append(sys.modules["hooked_pkg"].VALUE))
    assert seen == []  # not imported by registering
    import hooked_pkg

    assert seen == [41] and hooked_pkg.__spec__.loader.is_package("hooked_pkg")  # the real loader's methods
    importlib.reload(hooked_pkg)
    assert seen == [41]  # once
    after_import("hooked_pkg", lambda: seen.append("now"))
    assert seen == [41, "now"]
    monkeypatch.delitem(sys.modules, "hooked_pkg")


@pytest.mark.process
def test_a_failed_registration_leaves_verl_working_and_erc_runs_refuse_naming_it():
    """A registration error (here: our trainer module cannot be imported, as when verl renames the registry it
    uses) is printed, ``import verl.trainer.ppo.v1`` still works with verl's trainers, and ERC on is refused."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import json, sys
        import verl
        sys.modules["verl_erc.hooks.trainer"] = None  # importing it now raises ImportError
        from verl.trainer.ppo.v1 import get_trainer_cls
        trainer = get_trainer_cls("sync")
        from verl_erc.config import ErcConfig, ErcConfigError
        ErcConfig(enable=False)
        try:
            ErcConfig(enable=True)
            refused = None
        except ErcConfigError as error:
            refused = str(error)
        print(json.dumps({"trainer": f"{trainer.__module__}.{trainer.__name__}", "refused": refused}))
    """)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["trainer"].startswith("verl.trainer.ppo.v1")
    assert "registering verl-erc after importing verl.trainer.ppo.v1 failed (ModuleNotFoundError" in out.stderr
    assert report["refused"].startswith("actor_rollout_ref.actor.erc.enable=true, but verl-erc could not register itself")
    assert "after verl.trainer.ppo.v1: ModuleNotFoundError" in report["refused"]
