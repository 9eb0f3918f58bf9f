"""``python -m verl_erc.cluster.submit_check RECIPE --nodes N --gpus-per-node G``: will the job run on its allocation?

``slurm/submit.sh`` runs this before every submission (``--check`` alone, ``--no-check`` skips it), on
the CPU, in seconds, on the exact config the job will run: the recipe's command (:mod:`verl_erc.recipes`) with
the node and GPU counts ``slurm/erc_ray.sbatch`` adds, then the user's overrides. It runs verl's own
``validate_config`` and config dataclasses and ERC's ``validate_erc_config``, then what verl 0.9.1
asserts only on the GPU workers, once the job has started (see :func:`shape_problems`), the inputs
(data, model, run directory) and an estimate of the memory per GPU of the FSDP states next to vLLM's
share. Each problem names the key, its value and a fix; only what would fail (or silently train
something else than the config says) is refused.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30
BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


@dataclass
class Problem:
    key: str
    value: Any
    why: str
    fix: str

    def __str__(self) -> str:
        return f"{self.key}={self.value}: {self.why}. Fix: {self.fix}"


class CheckError(RuntimeError):
    """The recipe's command could not be built (its own error says why)."""


def job_command(recipe: str, nodes: int, gpus: int, overrides: list[str]) -> tuple[str, list[str], Path]:
    """(config name, Hydra overrides, run directory) of the job's command (:func:`verl_erc.recipes.recipe_command`,
    or an evaluation's, :func:`verl_erc.evaluate.plan`), with the allocation's keys where erc_ray.sbatch puts them
    (before the user's overrides, which win)."""
    from verl_erc.evaluate import plan
    from verl_erc.recipes import RecipeError, recipe_command

    shape = [f"trainer.nnodes={nodes}", f"trainer.n_gpus_per_node={gpus}"]
    try:
        if recipe == "evaluate":
            command = plan([*shape, *overrides], {**os.environ, "VERL_ERC_DRY_RUN": "1"}).command()
        else:
            command = recipe_command(recipe, [*shape, *overrides])
    except RecipeError as error:
        raise CheckError(str(error)) from error
    argv = command.argv
    return command.config_name, argv[argv.index("--config-name") + 2:], command.run_dir


def compose_job_config(name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="verl_erc.hydra_conf", version_base=None):
        return compose(config_name=name, overrides=overrides)


def verl_problems(cfg: DictConfig) -> list[Problem]:
    """verl's own start-up checks (``validate_config``, its config dataclasses) and ERC's."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils import omega_conf_to_dataclass
    from verl.utils.config import validate_config

    from verl_erc.hooks.trainer import validate_erc_config

    checks = [("verl's validate_config", lambda: validate_config(cfg, need_reference_policy(cfg), need_critic(cfg))),
              ("ERC's validate_erc_config", lambda: validate_erc_config(cfg))]
    checks += [(f"verl's config dataclass of {key}", lambda key=key: omega_conf_to_dataclass(OmegaConf.select(cfg, key)))
               for key in ("actor_rollout_ref.actor", "actor_rollout_ref.rollout", "algorithm")]
    problems, seen = [], set()
    for what, check in checks:
        try:
            check()
        except Exception as error:  # noqa: BLE001 - any refusal of verl's is the user's to read
            while error.__cause__ is not None:  # hydra's instantiation wraps the dataclass's own error
                error = error.__cause__
            message = f"{type(error).__name__}: {' '.join(str(error).split())}"
            if message not in seen:
                seen.add(message)
                problems.append(Problem("config", "(as composed)", f"{what} refuses it: {message}", "the key it names"))
    return problems


@dataclass
class ModelFacts:
    heads: int
    kv_heads: int
    max_positions: int
    parameters: int


def model_problems(path: str) -> tuple[list[Problem], ModelFacts | None]:
    """The model folder holds a config and a tokenizer; its shape (None for a hub id, not checked offline)."""
    key = "actor_rollout_ref.model.path"
    folder = Path(path)
    if not folder.is_dir():
        if folder.is_absolute() or path.startswith("."):
            return [Problem(key, path, "no such folder", "the model folder (ERC_MODEL_1P5B / ERC_MODEL_7B)")], None
        return [], None  # a hub id: resolved by the job
    problems = []
    if not (folder / "config.json").is_file():
        problems.append(Problem(key, path, "no config.json in the model folder", "a Hugging Face model folder"))
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        problems.append(Problem(key, path, f"no tokenizer in the model folder (none of {', '.join(TOKENIZER_FILES)})",
                                "save the tokenizer beside the model (tokenizer.save_pretrained)"))
    if problems:
        return problems, None
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        parameters = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    heads = config.num_attention_heads
    return [], ModelFacts(heads, getattr(config, "num_key_value_heads", None) or heads,
                          config.max_position_embeddings, parameters)


def data_problems(cfg: DictConfig) -> list[Problem]:
    """Each parquet file is readable with the columns verl's dataset and reward read; training has a batch."""
    import pyarrow.parquet as pq

    problems = []
    for key in ("data.train_files", "data.val_files"):
        files = OmegaConf.select(cfg, key)
        files = [files] if isinstance(files, str) else list(files)
        rows = 0
        for path in files:
            try:
                parquet = pq.ParquetFile(path)
            except Exception as error:  # noqa: BLE001 - missing, unreadable or not parquet: all the same to the job
                problems.append(Problem(key, path, f"not a readable parquet file ({error})", "python -m verl_erc.data"))
                continue
            schema, rows = parquet.schema_arrow, rows + parquet.metadata.num_rows
            needed = {cfg.data.prompt_key: "data.prompt_key", cfg.data.get("reward_fn_key", "data_source"): "data.reward_fn_key",
                      "reward_model": "the reward's ground truth"}
            for column, why in needed.items():
                if column not in schema.names:
                    problems.append(Problem(key, path, f"no column '{column}' ({why})", "python -m verl_erc.data"))
            if "reward_model" in schema.names and "ground_truth" not in str(schema.field("reward_model").type):
                problems.append(Problem(key, path, "its reward_model column has no ground_truth", "python -m verl_erc.data"))
        if key == "data.train_files" and not problems and rows < cfg.data.train_batch_size:
            problems.append(Problem("data.train_batch_size", cfg.data.train_batch_size,
                                    f"more than the {rows} training rows: verl's dataloader drops the last partial "
                                    "batch, so no step would run", "more data or a smaller batch"))
    return problems


def run_dir_problems(cfg: DictConfig, run_dir: Path) -> list[Problem]:
    """The run directory can be written, and a launch into it would not be refused (the launch's own rule,
    :func:`verl_erc.run.launch.launch_refusal`)."""
    from verl_erc.run.launch import launch_refusal, observe

    existing = run_dir
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK):
        return [Problem("run directory", run_dir, f"{existing} is not writable", "ERC_RUNS_DIR on a writable file system")]
    refusal = launch_refusal(cfg, observe(cfg, run_dir, Path(os.path.abspath(cfg.trainer.default_local_dir))))
    if refusal:
        return [Problem("run directory", run_dir, f"the launch would be refused: {refusal}",
                        "another ERC_RUN_NAME, or what the refusal names")]
    return []


def shape_problems(cfg: DictConfig, model: ModelFacts | None) -> list[Problem]:
    """What verl 0.9.1 asserts only on the workers, at the allocation's shape.

    - ``workers/engine_workers.py`` (update_actor): mini-batch x rollout.n divisible by the actor's data-parallel
      size, world / ulysses_sequence_parallel_size. verl pads the whole batch to it (``_balance_batch``), not
      the mini-batch, so e.g. 16 x 8 = 128 on 3 x 8 GPUs fails at the first update;
    - the Ulysses mesh (world divisible by sp; heads, and kv heads either way, by sp), FSDP's fsdp_size;
    - the rollout replicas: world divisible by tp x dp x pp, a replica whole GPUs of one node or whole nodes,
      vLLM's heads divisible by tp;
    - vLLM's max_model_len (None: the model's max_position_embeddings) against prompt + response length;
    - dynamic batch sizes: each token budget x sp holds one whole sequence (``seqlen_balancing``'s assert).
    """
    from verl.trainer.ppo.utils import need_reference_policy
    from verl.utils import omega_conf_to_dataclass

    aro = cfg.actor_rollout_ref
    nodes, gpus = cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node
    world = nodes * gpus
    if gpus < 1:
        return [Problem("trainer.n_gpus_per_node", gpus, "the recipes train and generate on GPUs",
                        "-g G; a CPU rehearsal is slurm/submit.sh --rehearse")]
    problems = []
    sp = omega_conf_to_dataclass(aro.actor).fsdp_config.ulysses_sequence_parallel_size
    sp_key = "actor_rollout_ref.actor.ulysses_sequence_parallel_size"
    if world % sp:
        problems.append(Problem(sp_key, sp, f"does not divide the {world} GPUs ({nodes} x {gpus})", "a divisor of the GPU count"))
    elif (aro.actor.ppo_mini_batch_size * aro.rollout.n) % (world // sp):
        mini = aro.actor.ppo_mini_batch_size * aro.rollout.n
        fits = [f"{n} x {gpus}" for n in range(1, 17) if (n * gpus) % sp == 0 and mini % (n * gpus // sp) == 0]
        problems.append(Problem("actor_rollout_ref.actor.ppo_mini_batch_size", aro.actor.ppo_mini_batch_size,
                                f"x rollout.n {aro.rollout.n} = {mini} responses per mini-batch do not split over the "
                                f"{world // sp} data-parallel ranks ({world} GPUs / sp {sp}): verl asserts this at the "
                                "first actor update, after the first rollout (workers/engine_workers.py)",
                                f"nodes x GPUs that fit ({', '.join(fits[:4]) or 'none of 1-16 nodes'}), or "
                                f"ppo_mini_batch_size x rollout.n divisible by {world // sp}"))
    if model is not None:
        if model.heads % sp:
            problems.append(Problem(sp_key, sp, f"does not divide the model's {model.heads} attention heads", "a divisor"))
        elif model.kv_heads % sp and sp % model.kv_heads:
            problems.append(Problem(sp_key, sp, f"and the model's {model.kv_heads} kv heads do not divide one another",
                                    "a divisor or multiple of the kv heads"))
    fsdp_size = aro.actor.fsdp_config.fsdp_size
    if 0 < fsdp_size < world and world % fsdp_size:
        problems.append(Problem("actor_rollout_ref.actor.fsdp_config.fsdp_size", fsdp_size, f"does not divide the {world} GPUs",
                                "a divisor, or -1 (shard over all)"))

    tp = aro.rollout.tensor_model_parallel_size
    replica = tp * aro.rollout.data_parallel_size * aro.rollout.pipeline_model_parallel_size
    if world % replica or replica % min(gpus, replica):
        problems.append(Problem("actor_rollout_ref.rollout.tensor_model_parallel_size", tp,
                                f"a rollout replica of {replica} GPUs (tp x dp x pp) does not tile {nodes} node(s) of {gpus} GPUs",
                                "a replica size dividing the GPUs per node, or a whole number of nodes"))
    if model is not None and model.heads % tp:
        problems.append(Problem("actor_rollout_ref.rollout.tensor_model_parallel_size", tp,
                                f"does not divide the model's {model.heads} attention heads (vLLM refuses it)", "a divisor"))

    length = cfg.data.max_prompt_length + cfg.data.max_response_length
    max_model_len = aro.rollout.max_model_len
    if max_model_len is not None and model is not None and max_model_len > model.max_positions:
        problems.append(Problem("actor_rollout_ref.rollout.max_model_len", max_model_len,
                                f"exceeds the model's max_position_embeddings {model.max_positions} (verl's vLLM server refuses it)",
                                "at most that"))
    limit = max_model_len if max_model_len is not None else (model.max_positions if model is not None else None)
    if limit is not None and limit < length:
        key = "actor_rollout_ref.rollout.max_model_len" if max_model_len is not None else "data.max_response_length"
        problems.append(Problem(key, max_model_len if max_model_len is not None else cfg.data.max_response_length,
                                f"prompt + response ({cfg.data.max_prompt_length} + {cfg.data.max_response_length} = {length}) "
                                f"exceed vLLM's max_model_len {limit}: verl cuts each response to fit without an error",
                                "max_model_len >= prompt + response, or a shorter data.max_response_length"))

    budgets = [("actor_rollout_ref.actor.ppo_max_token_len_per_gpu", aro.actor.use_dynamic_bsz),
               ("actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu", aro.rollout.log_prob_use_dynamic_bsz)]
    if need_reference_policy(cfg):
        budgets.append(("actor_rollout_ref.ref.log_prob_max_token_len_per_gpu", aro.ref.log_prob_use_dynamic_bsz))
    for key, dynamic in budgets:
        budget = OmegaConf.select(cfg, key)
        if dynamic and budget is not None and budget * sp < length:
            problems.append(Problem(key, budget, f"x sp {sp} holds fewer tokens than one sequence ({length}): verl "
                                    "asserts on the first response that long", f"at least {-(-length // sp)}"))
    return problems


def memory_rows(cfg: DictConfig, model: ModelFacts, gpu_mem_gib: float) -> list[tuple[str, float]]:
    """GiB per GPU, estimated: the actor's FSDP states (parameters and gradients at its model_dtype, AdamW's two
    moments), the reference model if used, vLLM's reservation (gpu_memory_utilization of the GPU). Activations
    and logits are not counted."""
    from verl.trainer.ppo.utils import need_reference_policy

    aro = cfg.actor_rollout_ref
    world = cfg.trainer.nnodes * cfg.trainer.n_gpus_per_node
    fsdp = aro.actor.fsdp_config
    shard = fsdp.fsdp_size if 0 < fsdp.fsdp_size < world else world
    dtype = BYTES[str(fsdp.get("model_dtype", "fp32"))]
    per_gpu = model.parameters / shard / GiB
    rows = [(f"actor parameters ({fsdp.get('model_dtype', 'fp32')}, 1/{shard} each)", 0.0 if fsdp.param_offload else dtype * per_gpu),
            ("actor gradients", dtype * per_gpu),
            ("actor AdamW moments (2 x fp32)", 0.0 if fsdp.optimizer_offload else 8 * per_gpu)]
    if need_reference_policy(cfg):
        ref = aro.ref.fsdp_config
        rows.append(("reference model", 0.0 if ref.param_offload else BYTES[str(ref.get("model_dtype", "bf16"))] * per_gpu))
    rows.append((f"vLLM (gpu_memory_utilization {aro.rollout.gpu_memory_utilization})",
                 aro.rollout.gpu_memory_utilization * gpu_mem_gib))
    return rows


def memory_problems(cfg: DictConfig, model: ModelFacts, gpu_mem_gib: float) -> list[Problem]:
    """Prints the memory estimate's table; a problem when it exceeds the GPU."""
    rows = memory_rows(cfg, model, gpu_mem_gib)
    total = sum(gib for _, gib in rows)
    width = max(len(label) for label, _ in rows)
    print(f"  memory per GPU, estimated ({model.parameters / 1e9:.2f} B parameters; activations and logits not counted):")
    for label, gib in [*rows, ("total", total)]:
        print(f"    {label:<{width}}  {gib:6.1f} GiB")
    if total <= gpu_mem_gib:
        return []
    return [Problem("trainer.n_gpus_per_node x trainer.nnodes", f"{cfg.trainer.n_gpus_per_node} x {cfg.trainer.nnodes}",
                    f"the estimate, {total:.1f} GiB per GPU, exceeds the GPU's {gpu_mem_gib:g} GiB",
                    "more GPUs (FSDP shards the states over all), fsdp_config.param_offload / optimizer_offload, "
                    "or a lower rollout.gpu_memory_utilization")]


def check(recipe: str, nodes: int, gpus: int, gpu_mem_gib: float, overrides: list[str]) -> int:
    name, job_overrides, run_dir = job_command(recipe, nodes, gpus, overrides)
    cfg = compose_job_config(name, job_overrides)
    print(f"verl_erc.cluster.submit_check: {recipe} (config {name}) on {nodes} node(s) x {gpus} GPU(s) of {gpu_mem_gib:g} GiB; "
          f"run directory {run_dir}", flush=True)
    refused = verl_problems(cfg)
    found, model = model_problems(str(cfg.actor_rollout_ref.model.path))
    problems = refused + found + data_problems(cfg) + run_dir_problems(cfg, run_dir)
    if not refused:  # the shape and memory checks read verl's config dataclasses, which refuse this config
        problems += shape_problems(cfg, model)
        if model is None and not found:
            print("  model shape not checked (a hub id): heads, max_position_embeddings and memory skipped")
        if model is not None and gpus > 0:
            problems += memory_problems(cfg, model, gpu_mem_gib)
    if problems:
        print(f"verl_erc.cluster.submit_check: {len(problems)} problem(s); the job would fail (or train other than configured):")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print("verl_erc.cluster.submit_check: ok")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m verl_erc.cluster.submit_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="a recipe of recipes/ (evaluate: its arguments follow as overrides)")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--gpu-mem", type=float, default=80.0, help="GiB per GPU (default 80)")
    args, overrides = parser.parse_known_args(argv)
    try:
        return check(args.recipe, args.nodes, args.gpus_per_node, args.gpu_mem, overrides)
    except CheckError as error:
        print(f"verl_erc.cluster.submit_check: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
