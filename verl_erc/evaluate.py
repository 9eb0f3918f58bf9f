"""``python -m verl_erc.evaluate`` (``recipes/evaluate.sh``): a recipe's validation only, for a model or a run.

verl's ``trainer.val_only`` on the recipe's validation set (the paper's benchmarks at their avg@k) into a run
directory that ``python -m verl_erc.compare`` reads like any run::

    recipes/evaluate.sh [--step N] [--laptop] RECIPE MODEL [hydra overrides...]     (in any order)

MODEL is ``base`` (the recipe's own model, ``ERC_MODEL_1P5B`` / ``ERC_MODEL_7B``: Table 1's first row), a run
directory (its newest complete checkpoint, or ``--step N``, exported first into the evaluation's run directory
with :mod:`verl_erc.export`), or a Hugging Face model folder or hub id. ``--laptop``: as ``recipes/rehearse.sh``
(the laptop profile, the toy task, ``base`` the tiny local model). The run directory is
``$ERC_RUNS_DIR/$ERC_RUN_NAME``, by default ``eval_<model folder name>`` for a model and, for a run
``<recipe>-seed<S>`` at step N, ``<recipe>_step<N>_eval-seed<S>`` (so compare groups seeds and pairs
``erc_`` runs with their baselines). An evaluated directory is not evaluated again (remove it to). The Slurm
launcher (``slurm/submit.sh evaluate RECIPE MODEL``) puts its own overrides before RECIPE and MODEL: the first
two words that are not Hydra overrides (``key=value``, ``~key``) are RECIPE and MODEL.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from verl_erc.recipes import RecipeCommand, RecipeError, launch, recipe, recipe_command, rehearsal_environ, split_run_name

USAGE = ("usage: recipes/evaluate.sh [--step N] [--laptop] RECIPE MODEL [hydra overrides...] "
         "(MODEL: base, a run directory, a model folder or hub id)")
#: verl's validation-only run
VAL_ONLY = ["trainer.val_only=true", "trainer.val_before_train=true"]


@dataclass
class Evaluation:
    """What an evaluation runs: the recipe's validation-only launch, and the checkpoint it exports first (if any)."""

    recipe_name: str
    environ: dict[str, str]
    overrides: list[str]
    laptop: bool
    run_dir: Path
    #: (the run directory whose checkpoint is exported, its actor folder, the Hugging Face folder to write), or None
    export: tuple[Path, Path, Path] | None

    def command(self) -> RecipeCommand:
        """The recipe's command; an exported model must exist by then (:func:`main` exports first)."""
        return recipe_command(self.recipe_name, [*VAL_ONLY, *self.overrides], self.environ, rehearsal=self.laptop)


def parse(argv: list[str]) -> tuple[int | None, bool, str, str, list[str]]:
    """(step, laptop, RECIPE, MODEL, overrides) of the command line, options and words in any order."""
    step, laptop, words, overrides = None, False, [], []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--step":
            if not args or not args[0].isdigit():
                raise RecipeError(f"--step needs a step number; {USAGE}")
            step = int(args.pop(0))
        elif arg == "--laptop":
            laptop = True
        elif arg.startswith("-"):
            raise RecipeError(f"unknown option {arg}; {USAGE}")
        elif "=" in arg or arg.startswith("~"):
            overrides.append(arg)
        else:
            words.append(arg)
    if len(words) != 2:
        raise RecipeError(USAGE)
    return step, laptop, words[0], words[1], overrides


def plan(argv: list[str], environ: dict[str, str] | None = None) -> Evaluation:
    """The evaluation ``argv`` asks for (nothing is run or written). Until its checkpoint is exported, a run's
    model is the Hugging Face folder verl saved beside the shards (its config and tokenizer: what the pre-queue
    check reads)."""
    from verl_erc.export import actor_folder

    step, laptop, recipe_name, target, overrides = parse(argv)
    spec = recipe(recipe_name)
    environ = rehearsal_environ(environ) if laptop else dict(os.environ if environ is None else environ)
    if not environ.get("ERC_RUNS_DIR"):
        raise RecipeError("ERC_RUNS_DIR is not set: export ERC_RUNS_DIR=<folder for run directories>")
    source = folder = None
    target_path = Path(target)
    if target == "base":
        if not environ.get(spec.model_env):
            raise RecipeError(f"{spec.model_env} is not set: export {spec.model_env}=<the recipe's model folder or hub id>")
        if step is not None:
            raise RecipeError("--step is for a run directory")
        name = f"eval_{Path(environ[spec.model_env]).name}"
    elif target_path.is_dir() and ((target_path / "identity.json").is_file() or (target_path / "checkpoints").is_dir()):
        source = target_path.resolve()
        folder = actor_folder(source, step)  # .../global_step_N/actor
        base, seed = split_run_name(source.name)
        name = f"{base}_step{folder.parent.name.removeprefix('global_step_')}_eval" + (f"-seed{seed}" if seed is not None else "")
    else:
        if step is not None:
            raise RecipeError(f"--step is for a run directory; {target} is not one (no identity.json or checkpoints/)")
        if target.startswith(("/", ".")) and not target_path.is_dir():
            raise RecipeError(f"{target} is not a folder")
        environ[spec.model_env] = target
        name = f"eval_{target_path.name}"
    environ["ERC_RUN_NAME"] = environ.get("ERC_RUN_NAME") or name
    run_dir = Path(os.path.abspath(environ["ERC_RUNS_DIR"])) / environ["ERC_RUN_NAME"]
    export = None
    if folder is not None:
        export = (source, folder, run_dir / "model")
        environ[spec.model_env] = str(run_dir / "model" if (run_dir / "model").is_dir() else folder / "huggingface")
    if any('"val-core/' in path.read_text() for path in (run_dir / "metrics").glob("*.jsonl")):
        raise RecipeError(f"{run_dir} already holds this evaluation's scores; remove it to evaluate again")
    return Evaluation(spec.name, environ, overrides, laptop, run_dir, export)


def main(argv: list[str] | None = None) -> int:
    try:
        evaluation = plan(sys.argv[1:] if argv is None else argv)
        if evaluation.export is not None:
            source, folder, out = evaluation.export
            if evaluation.environ.get("VERL_ERC_DRY_RUN") == "1":
                print(f"would export: {folder} -> {out}")
            elif not out.is_dir():  # exported into model.partial, renamed once whole and checked
                from verl_erc.export import main as export_main

                partial = out.with_name("model.partial")
                shutil.rmtree(partial, ignore_errors=True)
                if export_main([str(source), "--step", folder.parent.name.removeprefix("global_step_"),
                                "--out", str(partial)]) != 0:
                    return 1
                partial.rename(out)
                evaluation.environ[recipe(evaluation.recipe_name).model_env] = str(out)
        return launch(evaluation.command(), evaluation.environ)
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
