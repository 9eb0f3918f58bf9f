"""Post-import hooks: run a callback right after a module is first imported, without importing it.

verl imports our plugin in every process that imports verl, Ray workers included, and most of
them (the reward pool's processes, agent-loop workers, the rollout server) never build an FSDP
engine or a trainer. Importing verl's engine and V1 trainer modules just to register into them
cost every such process ~4 s (``python -c "import verl"`` with ``VERL_PLATFORM=cpu`` on a 2-core
machine: 12.0-12.6 s registering eagerly, 7.6 s through these hooks). :func:`after_import`
registers when, and only when, something imports the module.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Callable

_HOOKS: dict[str, list[Callable[[], None]]] = {}
#: module name -> what failed in a callback run after it (e.g. verl renamed a registry we register into)
FAILED: dict[str, str] = {}


def _run(name: str, callback: Callable[[], None]) -> None:
    """``callback()``; an error is recorded and printed, never raised: installing verl-erc must not break
    ``import verl`` (ERC-enabled runs refuse to start instead, :class:`verl_erc.config.ErcConfig`)."""
    try:
        callback()
    except Exception as error:  # noqa: BLE001 -- any registration error, reported below
        FAILED[name] = f"{type(error).__name__}: {error}"
        print(f"verl_erc: WARNING: registering verl-erc after importing {name} failed ({FAILED[name]}); verl works "
              "as without verl-erc, and runs with ERC on refuse to start", file=sys.stderr, flush=True)


def after_import(name: str, callback: Callable[[], None]) -> None:
    """Call ``callback()`` once module ``name`` has executed (now, if it already has)."""
    if name in sys.modules:
        _run(name, callback)
        return
    _HOOKS.setdefault(name, []).append(callback)
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


class _Finder(importlib.abc.MetaPathFinder):
    """Finds a hooked module's spec with the other finders and wraps its loader."""

    def find_spec(self, name, path, target=None):
        if name not in _HOOKS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


class _Loader(importlib.abc.Loader):
    """The module's own loader, then the hooks registered for it."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, attr):  # get_resource_reader, is_package, ... stay the real loader's
        return getattr(self._loader, attr)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        for callback in _HOOKS.pop(module.__name__, []):
            _run(module.__name__, callback)
