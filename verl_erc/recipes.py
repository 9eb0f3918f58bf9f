"""The paper's runs as recipes: one table, and the one function that turns a recipe into its command.

Each recipe is a config in ``hydra_conf/`` and a thin launcher ``recipes/<name>.sh`` (``exec python -m
verl_erc.recipes run <name> "$@"``). :func:`recipe_command` builds what a launch runs:
``python -m verl_erc.main --config-name <name>`` with the model, data and run-directory paths from the
environment, the seed, verl's logger locations, then the user's overrides, unchanged (they come last,
so they win). The launchers (``recipes/*.sh``, ``recipes/rehearse.sh``, ``recipes/evaluate.sh``), the
pre-queue check (:mod:`verl_erc.cluster.submit_check`), the evaluation (:mod:`verl_erc.evaluate`) and the laptop
demo (:mod:`verl_erc.laptop.demo`) all call it; nothing parses another program's output.

Environment:

- ``ERC_MODEL_1P5B`` / ``ERC_MODEL_7B``: the model for the recipe's size (local folder or hub id), required;
- ``ERC_DATA_DIR``: the folder ``python -m verl_erc.data`` wrote (``train.parquet``, ``val.parquet`` and one
  parquet per benchmark), required;
- ``ERC_RUNS_DIR``: where run directories go (checkpoints, TensorBoard, metrics), required;
- ``ERC_SEED``: seed of data order and sampling (default 1), part of the run name;
- ``ERC_RUN_NAME``: the run directory's name (default ``<recipe>-seed<ERC_SEED>``; keep the ``-seed<N>``
  ending, which ``python -m verl_erc.compare`` groups seeds by, :func:`split_run_name`);
- ``ERC_PYTHON``: the interpreter (default: this one); ``VERL_ERC_ENTRYPOINT``: a command replacing
  ``$ERC_PYTHON -m verl_erc.main`` (tests); ``VERL_ERC_DRY_RUN=1``: print the command, run nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Mapping

#: the launch id's format, which names a launch's metrics file (and its entry in launches.log)
LAUNCH_ID_FORMAT = "%Y%m%d-%H%M%S"
#: a run directory's name: the recipe (or group) and the seed
RUN_NAME = "{recipe}-seed{seed}"
_SEEDED = re.compile(r"^(?P<recipe>.+)[-_/]seed(?P<seed>\d+)$")
#: the model environment variable of each size
MODEL_ENV = {"1p5b": "ERC_MODEL_1P5B", "7b": "ERC_MODEL_7B"}
#: the laptop profile a rehearsal adds (hydra_conf/rehearsal/laptop.yaml)
REHEARSAL_PROFILE = "+rehearsal=laptop"


@dataclass(frozen=True)
class Recipe:
    """One of the paper's runs: ``hydra_conf/<name>.yaml``, launched by ``recipes/<name>.sh``."""

    name: str
    size: str  # "1p5b" or "7b": which ERC_MODEL_* it trains
    summary: str
    #: the validation parquet files under ERC_DATA_DIR (python -m verl_erc.data writes val.parquet, all of them)
    val_files: tuple[str, ...] = ("val",)

    @property
    def model_env(self) -> str:
        return MODEL_ENV[self.size]


#: the official code's validation: AIME24 and AIME25 at avg@32 (Kwai-Klear/ERC recipe/dapo/*_erc_1_05.sh)
OFFICIAL_VAL = ("aime24", "aime25")

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("grpo_1p5b", "1p5b", "GRPO on DeepSeek-R1-Distill-Qwen-1.5B (Table 1)"),
    Recipe("dapo_1p5b", "1p5b", "DAPO on DeepSeek-R1-Distill-Qwen-1.5B (Table 1)"),
    Recipe("erc_dapo_1p5b", "1p5b", "ERC-DAPO on DeepSeek-R1-Distill-Qwen-1.5B (Table 1, Fig. 7)"),
    Recipe("gppo_1p5b", "1p5b", "GPPO on DeepSeek-R1-Distill-Qwen-1.5B"),
    Recipe("erc_gppo_1p5b", "1p5b", "ERC-GPPO on DeepSeek-R1-Distill-Qwen-1.5B"),
    Recipe("entropy_reg_1p5b", "1p5b", "Entropy-regularised DAPO on DeepSeek-R1-Distill-Qwen-1.5B (Fig. 7)"),
    Recipe("grpo_7b", "7b", "GRPO on DeepSeek-R1-Distill-Qwen-7B (Table 1)"),
    Recipe("dapo_7b", "7b", "DAPO on DeepSeek-R1-Distill-Qwen-7B (Table 1)"),
    Recipe("erc_dapo_7b", "7b", "ERC-DAPO on DeepSeek-R1-Distill-Qwen-7B (Table 1, Fig. 6, 8)"),
    Recipe("gppo_7b", "7b", "GPPO on DeepSeek-R1-Distill-Qwen-7B (Table 3)"),
    Recipe("erc_gppo_7b", "7b", "ERC-GPPO on DeepSeek-R1-Distill-Qwen-7B (Table 3)"),
    Recipe("kl_penalty_7b", "7b", "DAPO with a KL penalty on DeepSeek-R1-Distill-Qwen-7B (Fig. 8)"),
    Recipe("gspo_7b", "7b", "GSPO on DeepSeek-R1-Distill-Qwen-7B (section 5.7)"),
    Recipe("erc_gspo_7b", "7b", "ERC on top of GSPO on DeepSeek-R1-Distill-Qwen-7B (section 5.7)"),
    # as the official code ran them (docs/recipes.md): the paper-text recipe plus hydra_conf/official.yaml
    *(Recipe(f"{name}_official", size, f"{what} on DeepSeek-R1-Distill-Qwen-{label} as the official code ran it",
             OFFICIAL_VAL)
      for name, size, label, what in (
          ("erc_dapo_7b", "7b", "7B", "ERC-DAPO"), ("dapo_7b", "7b", "7B", "DAPO"),
          ("erc_gppo_7b", "7b", "7B", "ERC-GPPO"), ("gppo_7b", "7b", "7B", "GPPO"),
          ("erc_dapo_1p5b", "1p5b", "1.5B", "ERC-DAPO"), ("dapo_1p5b", "1p5b", "1.5B", "DAPO"),
          ("erc_gppo_1p5b", "1p5b", "1.5B", "ERC-GPPO"), ("gppo_1p5b", "1p5b", "1.5B", "GPPO"))),
)}


class RecipeError(ValueError):
    """A recipe cannot be launched as asked (an unknown name, a missing path); the message says how to fix it."""


def recipe(name: str) -> Recipe:
    """The recipe named ``name`` (a ``recipes/<name>.sh`` path or ``<name>.sh`` too); :class:`RecipeError` naming
    the recipes otherwise."""
    key = Path(name).name.removesuffix(".sh")
    if key not in RECIPES:
        raise RecipeError(f"no recipe {name!r}; RECIPE is one of: {' '.join(RECIPES)}")
    return RECIPES[key]


def run_name(recipe_name: str, seed: int) -> str:
    return RUN_NAME.format(recipe=recipe_name, seed=seed)


def split_run_name(name: str) -> tuple[str, int | None]:
    """(recipe or group, seed) of a run name ``<recipe>-seed<N>`` (``_seed<N>`` and ``/seed<N>`` too); the name
    itself and None when it holds no seed."""
    match = _SEEDED.match(name)
    return (match["recipe"], int(match["seed"])) if match else (name, None)


@dataclass
class RecipeCommand:
    """A launch of a recipe: its command and environment, its run directory and its logs' locations."""

    recipe: Recipe
    argv: list[str]
    run_dir: Path
    launch_id: str
    overrides: list[str] = field(default_factory=list)

    @property
    def config_name(self) -> str:
        return self.argv[self.argv.index("--config-name") + 1]

    @property
    def tensorboard_dir(self) -> Path:
        return self.run_dir / "tensorboard"

    @property
    def metrics_file(self) -> Path:
        return self.run_dir / "metrics" / f"{self.launch_id}.jsonl"

    @property
    def env(self) -> dict[str, str]:
        """What the entry point reads (verl_erc.run.launch records the launch under this run directory and id)."""
        return {"VERL_ERC_RUN_DIR": str(self.run_dir), "VERL_ERC_LAUNCH": self.launch_id}


def _required(environ: Mapping[str, str], name: str, what: str) -> str:
    value = environ.get(name, "")
    if not value:
        raise RecipeError(f"{name} is not set: export {name}=<{what}>")
    return value


def recipe_command(name: str, overrides: list[str] = (), environ: Mapping[str, str] | None = None,
                   rehearsal: bool = False) -> RecipeCommand:
    """The command a launch of recipe ``name`` runs, with ``overrides`` last (see the module docstring).

    ``rehearsal``: the laptop rehearsal (:func:`rehearsal_environ`): the laptop profile first among the overrides,
    and the toy's held-out validation sources (``val.parquet``) standing in for the recipe's benchmarks."""
    environ = os.environ if environ is None else environ
    spec = recipe(name)
    val_files = ("val",) if rehearsal else spec.val_files
    if rehearsal:
        overrides = [REHEARSAL_PROFILE, *overrides]
    model = _required(environ, spec.model_env, f"DeepSeek-R1-Distill-Qwen-{spec.size.upper().replace('P', '.')} "
                                               "(local folder or hub id)")
    data_dir = Path(os.path.abspath(_required(environ, "ERC_DATA_DIR", "folder written by 'python -m verl_erc.data'")))
    runs_dir = Path(os.path.abspath(_required(environ, "ERC_RUNS_DIR", "folder for run directories")))
    if model.startswith(("/", ".")):  # absolute paths: Ray workers do not share the launcher's working directory
        if not Path(model).is_dir():
            raise RecipeError(f"{spec.model_env}={model} is not a folder")
        model = str(Path(model).resolve())
    for split in ("train", *val_files):
        if not (data_dir / f"{split}.parquet").is_file():
            raise RecipeError(f"{data_dir}/{split}.parquet not found: run 'python -m verl_erc.data --out-dir {data_dir}'")
    val = [str(data_dir / f"{split}.parquet") for split in val_files]
    seed = int(environ.get("ERC_SEED") or 1)
    run_dir = runs_dir / (environ.get("ERC_RUN_NAME") or run_name(spec.name, seed))
    launch_id = datetime.now().strftime(LAUNCH_ID_FORMAT)
    for variable in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT"):
        if environ.get(variable):
            launch_id += f"-{'job' if variable == 'SLURM_JOB_ID' else 'restart'}{environ[variable]}"
    entry = shlex.split(environ.get("VERL_ERC_ENTRYPOINT") or f"{shlex.quote(environ.get('ERC_PYTHON') or sys.executable)} "
                                                               "-m verl_erc.main")
    command = RecipeCommand(spec, [], run_dir, launch_id, list(overrides))
    command.argv += [
        *entry, "--config-name", spec.name,
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={data_dir / 'train.parquet'}",
        f"data.val_files={val[0] if len(val) == 1 else '[' + ','.join(val) + ']'}",
        f"data.seed={seed}",
        f"trainer.experiment_name={run_dir.name}",
        f"trainer.default_local_dir={run_dir / 'checkpoints'}",
        # verl's TensorBoard and file loggers read their locations in its task runner, a Ray actor: passed in Ray's
        # runtime env (a cluster started apart from the driver does not see its environment); one metrics file per
        # launch, since verl's file logger truncates the file it opens
        f"++ray_kwargs.ray_init.runtime_env.env_vars.TENSORBOARD_DIR={command.tensorboard_dir}",
        f"++ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={command.metrics_file}",
        *overrides,
    ]
    return command


def rehearsal_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` with the laptop rehearsal's defaults: the tiny local model and the toy task (built on first use,
    :mod:`verl_erc.laptop.assets`) as every size's model and the data, and ``outputs/rehearsals`` for runs."""
    from verl_erc.laptop.assets import ensure_assets

    environ = dict(os.environ if environ is None else environ)
    paths = ensure_assets()
    environ.update({variable: str(paths["model"]) for variable in MODEL_ENV.values()})
    environ["ERC_DATA_DIR"] = str(paths["train"].parent)
    environ.setdefault("ERC_RUNS_DIR", "outputs/rehearsals")
    return environ


def launch(command: RecipeCommand, environ: Mapping[str, str] | None = None) -> int:
    """Print the run directory and the command, then run it in this process (exec), or only print it under
    ``VERL_ERC_DRY_RUN=1``."""
    environ = dict(os.environ if environ is None else environ)
    print(f"run directory: {command.run_dir} (TensorBoard: {command.tensorboard_dir}, metrics: {command.metrics_file})")
    print(f"command: {shlex.join(command.argv)}", flush=True)
    if environ.get("VERL_ERC_DRY_RUN") == "1":
        return 0
    command.metrics_file.parent.mkdir(parents=True, exist_ok=True)
    command.tensorboard_dir.mkdir(parents=True, exist_ok=True)
    os.execvpe(command.argv[0], command.argv, {**environ, **command.env})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m verl_erc.recipes", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("Environment:", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    for action, what in (("run", "launch a recipe"), ("rehearse", "launch a recipe's laptop rehearsal (CPU, toy scale)"),
                         ("validate", "exit 0 if RECIPE names a recipe, else 2 naming them")):
        sub.add_parser(action, help=what).add_argument("recipe", nargs="?", default="")
    sub.add_parser("list", help="the recipes' names, one per line")
    args, overrides = parser.parse_known_args(argv)
    try:
        if args.action == "list":
            print("\n".join(RECIPES))
            return 0
        spec = recipe(args.recipe)
        if args.action == "validate":
            return 0
        if args.action == "rehearse":
            environ = rehearsal_environ()
            return launch(recipe_command(spec.name, overrides, environ, rehearsal=True), environ)
        return launch(recipe_command(spec.name, overrides))
    except RecipeError as error:
        usage = f"usage: recipes/{'rehearse.sh' if args.action == 'rehearse' else '<recipe>.sh'} RECIPE [hydra overrides...]"
        print(f"error: {error}\n{usage}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
