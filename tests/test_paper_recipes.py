"""The paper's runs (hydra_conf/<run>.yaml, recipes/<run>.sh): composition, verl's own checks,
the paper's values key by key, and what each ERC run changes against its baseline."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError
from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
from verl.trainer.ppo.reward import get_custom_reward_fn
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils import omega_conf_to_dataclass
from verl.utils.config import validate_config

from helpers import OFFICIAL, RUNS, TWINS

from verl_erc.config import ErcFSDPActorConfig
from verl_erc.recipes import OFFICIAL_VAL, RECIPES
from verl_erc.reward import compute_score, compute_score_official
from verl_erc.hooks.trainer import validate_erc_config

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ["actor_rollout_ref.model.path=/models/x", "data.train_files=/d/train.parquet", "data.val_files=/d/val.parquet"]

# method -> (policy_loss.loss_mode, clip_ratio_low, clip_ratio_high, loss_agg_mode, dynamic sampling)
METHODS = {
    "grpo": ("vanilla", 0.2, 0.2, "seq-mean-token-mean", False),
    "dapo": ("vanilla", 0.2, 0.28, "token-mean", True),
    "gppo": ("gppo", 0.2, 0.2, "token-mean", True),
    "gspo": ("gspo", 3e-4, 4e-4, "seq-mean-token-mean", True),
}


def load(name: str, overrides=REQUIRED):
    with initialize_config_module(config_module="verl_erc.hydra_conf", version_base=None):
        return compose(config_name=name, overrides=list(overrides))


@pytest.fixture(scope="module")
def configs():
    return {name: load(name) for name in RUNS}


def test_every_recipe_has_a_config_and_a_thin_launcher():
    """One table (verl_erc.recipes.RECIPES): the paper-text recipes and their official variants; each recipes/<name>.sh
    only hands its name and arguments to python -m verl_erc.recipes."""
    assert set(RUNS) | set(OFFICIAL) == set(RECIPES)
    scripts = {p.stem for p in (ROOT / "recipes").glob("*.sh")}
    assert scripts == set(RECIPES) | {"rehearse", "evaluate"}
    for name in RECIPES:
        assert (ROOT / "hydra_conf" / f"{name}.yaml").is_file()
        lines = [line for line in (ROOT / "recipes" / f"{name}.sh").read_text().splitlines() if not line.startswith("#")]
        assert lines == [f'exec "${{ERC_PYTHON:-python}}" -m verl_erc.recipes run {name} "$@"'], name


@pytest.mark.parametrize("name", RUNS)
def test_converts_to_verl_dataclasses_and_passes_verl_checks(configs, name):
    cfg = configs[name]
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert isinstance(actor, ErcFSDPActorConfig)
    omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    omega_conf_to_dataclass(cfg.algorithm)
    # verl's own loaders find the reward manager and our reward function
    assert get_reward_manager_cls(cfg.reward.reward_manager.name)
    assert get_custom_reward_fn(cfg).args[0] is compute_score
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    assert (validate_erc_config(cfg) is not None) == RUNS[name][2]
    assert cfg.trainer.v1.trainer_mode == "sync"  # verl's own mode: the same trainer for ERC and baseline runs


@pytest.mark.parametrize("name", RUNS)
def test_paper_values(configs, name):
    cfg = configs[name]
    size, method, erc = RUNS[name]
    actor, rollout = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
    assert actor.optim.lr == 1e-6
    assert rollout.n == 8
    assert cfg.data.train_batch_size == 128
    assert actor.ppo_mini_batch_size == 16
    assert cfg.data.max_response_length == 16384
    assert rollout.temperature == 1.0 and rollout.top_p == 1.0
    assert (rollout.val_kwargs.temperature, rollout.val_kwargs.top_p, rollout.val_kwargs.do_sample) == (0.6, 0.95, True)
    assert cfg.algorithm.adv_estimator == "grpo"
    assert (actor.erc.enable, actor.erc.beta_low, actor.erc.beta_high) == (erc, 0.05, 0.05)
    loss_mode, clip_low, clip_high, agg, dynamic = METHODS[method]
    assert actor.policy_loss.loss_mode == loss_mode
    assert (actor.clip_ratio_low, actor.clip_ratio_high) == (clip_low, clip_high)
    assert actor.loss_agg_mode == agg
    assert cfg.algorithm.filter_groups.enable == dynamic
    if dynamic:
        assert cfg.algorithm.filter_groups.metric == "acc"
        assert cfg.reward.reward_manager.name == "dapo"
        assert cfg.reward.reward_kwargs.overlong_buffer_cfg.enable
        assert cfg.reward.reward_kwargs.max_resp_len == 16384
    assert cfg.reward.custom_reward_function.path == "pkg://verl_erc.reward"
    assert cfg.actor_rollout_ref.actor.use_kl_loss == (name == "kl_penalty_7b")
    assert (actor.entropy_coeff > 0) == (name == "entropy_reg_1p5b")
    # runs: named after the recipe, logged to console + file + TensorBoard, checkpointed, resumable
    assert cfg.trainer.experiment_name == name
    assert {"console", "file", "tensorboard"} <= set(cfg.trainer.logger)
    assert cfg.trainer.save_freq > 0 and cfg.trainer.resume_mode == "auto"
    assert cfg.trainer.n_gpus_per_node == 8
    assert cfg.actor_rollout_ref.rollout.tensor_model_parallel_size == {"1p5b": 1, "7b": 2}[size]


def test_paths_come_from_the_environment(monkeypatch):
    for var in ("ERC_MODEL_7B", "ERC_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    cfg = load("erc_dapo_7b", overrides=[])
    for key, var in (("actor_rollout_ref.model.path", "ERC_MODEL_7B"), ("data.val_files", "ERC_DATA_DIR")):
        with pytest.raises(InterpolationResolutionError, match=var):
            OmegaConf.select(cfg, key)
    monkeypatch.setenv("ERC_MODEL_7B", "/models/r1-7b")
    monkeypatch.setenv("ERC_DATA_DIR", "/data/erc")
    cfg = load("erc_dapo_7b", overrides=[])
    assert cfg.actor_rollout_ref.model.path == "/models/r1-7b"
    assert (cfg.data.train_files, cfg.data.val_files) == ("/data/erc/train.parquet", "/data/erc/val.parquet")


def flat(cfg, resolve: bool = False) -> dict:
    """Every leaf of the config (unresolved unless ``resolve``) as {dotted.key: value}."""
    out = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(OmegaConf.to_container(cfg, resolve=resolve), "")
    return out


def differences(a: str, b: str, configs) -> set[str]:
    fa, fb = flat(configs[a]), flat(configs[b])
    return {k for k in fa.keys() | fb.keys() if fa.get(k, "<absent>") != fb.get(k, "<absent>")}


NAME = "trainer.experiment_name"
ERC_ENABLE = "actor_rollout_ref.actor.erc.enable"


@pytest.mark.parametrize(
    "erc_run, baseline",
    [("erc_dapo_1p5b", "dapo_1p5b"), ("erc_dapo_7b", "dapo_7b"), ("erc_gppo_1p5b", "gppo_1p5b"),
     ("erc_gppo_7b", "gppo_7b"), ("erc_gspo_7b", "gspo_7b")],
)
def test_erc_runs_differ_from_their_baseline_in_erc_only(configs, erc_run, baseline):
    assert differences(erc_run, baseline, configs) == {ERC_ENABLE, NAME}


@pytest.mark.parametrize(
    "run, baseline, keys",
    [
        ("kl_penalty_7b", "dapo_7b", {"use_kl_loss"}),  # coefficient and estimator: verl's defaults
        ("entropy_reg_1p5b", "dapo_1p5b", {"entropy_coeff"}),
        ("gspo_7b", "dapo_7b", {"policy_loss.loss_mode", "clip_ratio_low", "clip_ratio_high", "loss_agg_mode"}),
        ("gppo_7b", "dapo_7b", {"policy_loss.loss_mode", "clip_ratio_high"}),
    ],
)
def test_ablations_differ_from_dapo_in_their_knob_only(configs, run, baseline, keys):
    assert differences(run, baseline, configs) == {NAME} | {f"actor_rollout_ref.actor.{k}" for k in keys}


def test_sizes_differ_in_parallelism_only(configs):
    assert differences("erc_dapo_7b", "erc_dapo_1p5b", configs) == {
        NAME,
        "actor_rollout_ref.actor.ulysses_sequence_parallel_size",
        "actor_rollout_ref.rollout.tensor_model_parallel_size",
        "trainer.nnodes",
    }


# --- as the official code ran them (hydra_conf/official.yaml on the paper-text recipe) ----------------

#: every key hydra_conf/official.yaml sets: one difference from the paper's text each (docs/recipes.md's table)
OFFICIAL_KEYS = {
    "actor_rollout_ref.actor.positive_nll_coef", "actor_rollout_ref.actor.clip_ratio_c",
    "actor_rollout_ref.actor.optim.lr_warmup_steps", "actor_rollout_ref.actor.optim.weight_decay",
    "actor_rollout_ref.actor.erc.entropy_eps", "data.max_prompt_length", "algorithm.filter_groups.max_num_gen_batches",
    "reward.custom_reward_function.name", "reward.reward_kwargs.overlong_buffer_cfg.enable", "trainer.test_freq",
    "trainer.val_before_train", "trainer.v1.sampler.sampler_kwargs.one_round_prompts",
}


@pytest.fixture(scope="module")
def official_configs(configs):
    return {**configs, **{name: load(name) for name in OFFICIAL}}


@pytest.mark.parametrize("name", OFFICIAL)
def test_an_official_variant_is_its_recipe_with_the_official_codes_settings_only(official_configs, name):
    assert differences(name, OFFICIAL[name], official_configs) == OFFICIAL_KEYS | {NAME}
    cfg = official_configs[name]
    actor = cfg.actor_rollout_ref.actor
    assert (actor.positive_nll_coef, actor.clip_ratio_c, actor.optim.lr_warmup_steps, actor.optim.weight_decay) == (0.1, 10.0, 10, 0.1)
    assert actor.erc.entropy_eps == 1e-8 and actor.erc.old_pass == "aligned"  # ERC whose on-policy clipping is 0
    assert (cfg.algorithm.filter_groups.max_num_gen_batches, cfg.trainer.v1.sampler.sampler_kwargs.one_round_prompts) == (1, 256)
    assert get_custom_reward_fn(cfg).args[0] is compute_score_official
    assert not cfg.reward.reward_kwargs.overlong_buffer_cfg.enable
    assert (cfg.trainer.test_freq, cfg.trainer.val_before_train) == (10, False)
    assert RECIPES[name].val_files == OFFICIAL_VAL == ("aime24", "aime25")
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    assert (validate_erc_config(cfg) is not None)  # the NLL term alone needs verl-erc's loss: ERC or not
    assert validate_erc_config(cfg).erc.enable == name.startswith("erc_")


@pytest.mark.parametrize("erc_run", [n for n in OFFICIAL if n.startswith("erc_")])
def test_official_erc_runs_differ_from_their_official_baseline_in_erc_only(official_configs, erc_run):
    assert differences(erc_run, erc_run[len("erc_"):], official_configs) == {ERC_ENABLE, NAME}


# --- laptop rehearsals (recipes/rehearse.sh: the recipe's config + hydra_conf/rehearsal/laptop.yaml) ---

# every key hydra_conf/rehearsal/laptop.yaml sets: what a 2-core laptop forces
LAPTOP_KEYS = {
    "data.max_prompt_length", "data.max_response_length", "data.train_batch_size", "data.dataloader_num_workers",
    "actor_rollout_ref.model.enable_gradient_checkpointing", "actor_rollout_ref.model.override_config.attn_implementation",
    "actor_rollout_ref.actor.strategy", "actor_rollout_ref.actor.use_torch_compile",
    "actor_rollout_ref.actor.ppo_mini_batch_size", "actor_rollout_ref.actor.ppo_max_token_len_per_gpu",
    "actor_rollout_ref.actor.ulysses_sequence_parallel_size", "actor_rollout_ref.actor.optim.lr",
    "actor_rollout_ref.actor.fsdp_config.use_torch_compile",
    *(f"actor_rollout_ref.{role}.fsdp_config.mixed_precision.{k}_dtype" for role in ("actor", "ref") for k in ("param", "reduce", "buffer")),
    "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu", "actor_rollout_ref.ref.use_torch_compile",
    "actor_rollout_ref.ref.fsdp_config.param_offload", "actor_rollout_ref.ref.fsdp_config.use_torch_compile",
    *(f"actor_rollout_ref.rollout.{k}" for k in (
        "tensor_model_parallel_size", "dtype", "log_prob_max_token_len_per_gpu", "free_cache_engine", "enable_sleep_mode",
        "enforce_eager", "max_num_seqs", "checkpoint_engine.update_weights_bucket_megabytes",
        "engine_kwargs.vllm.worker_extension_cls", "agent.num_workers")),
    "reward.num_workers",
    "transfer_queue.backend.SimpleStorage.num_data_storage_units", "transfer_queue.backend.SimpleStorage.total_storage_size",
    "trainer.device", "trainer.nnodes", "trainer.n_gpus_per_node", "trainer.total_training_steps", "trainer.test_freq",
    "trainer.v1.sampler.sampler_kwargs.poll_interval",
    *(f"ray_kwargs.ray_init.{k}" for k in ("address", "num_cpus", "num_gpus", "include_dashboard")),
    *(f"ray_kwargs.ray_init.runtime_env.env_vars.{k}" for k in ("VERL_PLATFORM", "TQ_NUM_THREADS", "VLLM_CPU_KVCACHE_SPACE")),
}
# keys that verl's own config interpolates from the ones above (lengths, strategy, parallelism, mini-batch)
DERIVED_KEYS = {
    "actor_rollout_ref.rollout.prompt_length", "actor_rollout_ref.rollout.response_length",
    "actor_rollout_ref.rollout.n_gpus_per_node", "actor_rollout_ref.ref.strategy", "trainer.v1.sampler.sampler_kwargs.train_batch_size",
    "actor_rollout_ref.ref.ulysses_sequence_parallel_size", "critic.ppo_mini_batch_size",
    *(f"distillation.teacher_models.teacher_model.inference.{k}" for k in ("dtype", "prompt_length", "response_length")),
}
# DAPO's overlong shaping, which method/dapo.yaml states relative to data.max_response_length (GRPO has none)
OVERLONG_KEYS = {"reward.reward_kwargs.max_resp_len", "reward.reward_kwargs.overlong_buffer_cfg.len"}
# the 1.5B recipes already run one process per model and one node
ONE_PROCESS_KEYS = {
    "actor_rollout_ref.actor.ulysses_sequence_parallel_size", "actor_rollout_ref.ref.ulysses_sequence_parallel_size",
    "actor_rollout_ref.rollout.tensor_model_parallel_size", "trainer.nnodes",
}
REHEARSAL = "+rehearsal=laptop"


@pytest.fixture(scope="module")
def rehearsals():
    return {name: load(name, [*REQUIRED, REHEARSAL]) for name in [*RUNS, *OFFICIAL]}


@pytest.mark.parametrize("name", [*RUNS, *OFFICIAL])
def test_rehearsal_differs_from_its_recipe_in_what_a_laptop_forces_only(official_configs, rehearsals, name):
    size, method, _ = RUNS[OFFICIAL.get(name, name)]
    expected = LAPTOP_KEYS | DERIVED_KEYS | (set() if method == "grpo" else OVERLONG_KEYS)
    if name in OFFICIAL:  # its one round of prompts is twice the training batch; it validates on its own cadence
        expected = expected | {"trainer.v1.sampler.sampler_kwargs.one_round_prompts"}
    if size == "1p5b":
        expected -= ONE_PROCESS_KEYS
    recipe, rehearsal = flat(official_configs[name], resolve=True), flat(rehearsals[name], resolve=True)
    assert {k for k in recipe.keys() | rehearsal.keys() if recipe.get(k, "<absent>") != rehearsal.get(k, "<absent>")} == expected


# what the 7B layout's profile changes in a laptop rehearsal (hydra_conf/rehearsal/laptop_7b_layout.yaml)
LAYOUT_KEYS = {
    "actor_rollout_ref.actor.ulysses_sequence_parallel_size", "actor_rollout_ref.ref.ulysses_sequence_parallel_size",
    "trainer.n_gpus_per_node", "actor_rollout_ref.rollout.n_gpus_per_node", "ray_kwargs.ray_init.num_cpus",
    "ray_kwargs.ray_init.num_gpus",
}


@pytest.mark.parametrize("name", [n for n, (size, _, _) in RUNS.items() if size == "7b"])
def test_the_7b_layout_rehearsal_is_the_laptop_one_at_the_recipes_own_sequence_parallelism(configs, rehearsals, name):
    layout = flat(load(name, [*REQUIRED, REHEARSAL, "rehearsal=laptop_7b_layout"]), resolve=True)
    laptop, recipe = flat(rehearsals[name], resolve=True), flat(configs[name], resolve=True)
    assert {k for k in laptop.keys() | layout.keys() if laptop.get(k) != layout.get(k)} == LAYOUT_KEYS
    sp = "actor_rollout_ref.{}.ulysses_sequence_parallel_size"
    assert layout[sp.format("actor")] == layout[sp.format("ref")] == recipe[sp.format("actor")] == 2
    assert layout["trainer.n_gpus_per_node"] == layout["ray_kwargs.ray_init.num_gpus"] == 2  # one SP group, DP 1
    # the recipes' ratio of the update's token budget to the log-prob passes' (1 to 2) kept at the laptop's budgets
    budget = [layout[f"actor_rollout_ref.{k}_max_token_len_per_gpu"] for k in ("actor.ppo", "rollout.log_prob")]
    assert budget[1] / budget[0] == recipe["actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu"] / recipe[
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu"] == 2


def test_twins_are_the_1p5b_recipes_with_a_7b_recipe_of_the_same_method_and_erc():
    assert TWINS == {n: n.replace("_1p5b", "_7b") for n, (size, _, _) in RUNS.items()
                     if size == "1p5b" and n.replace("_1p5b", "_7b") in RUNS}
    assert all(RUNS[a][1:] == RUNS[b][1:] for a, b in TWINS.items())


@pytest.mark.parametrize("name", TWINS)
def test_a_1p5b_rehearsal_is_its_7b_twins_rehearsal_under_another_name(rehearsals, name):
    """Unresolved: the run directory, the trace and analysis paths interpolate the name (the launcher sets both)."""
    one, other = flat(rehearsals[name]), flat(rehearsals[TWINS[name]])
    assert {k for k in one.keys() | other.keys() if one.get(k, "<absent>") != other.get(k, "<absent>")} == {NAME}
    assert (one[NAME], other[NAME]) == (name, TWINS[name])


@pytest.mark.parametrize("name", [n for n, (_, method, _) in RUNS.items() if method != "grpo"])
def test_rehearsal_scales_the_overlong_buffer_with_the_response_budget(configs, rehearsals, name):
    for cfg, budget in ((configs[name], 16384), (rehearsals[name], 32)):
        kwargs = cfg.reward.reward_kwargs
        assert (cfg.data.max_response_length, kwargs.max_resp_len, kwargs.overlong_buffer_cfg.len) == (budget, budget, budget // 4)


@pytest.mark.parametrize("name", ["erc_dapo_7b", "grpo_1p5b"])
def test_recipes_replay_buffer_is_built_with_verls_own_settings(configs, rehearsals, name):
    """verl builds the recipes' custom sampler with the DAPO settings it computes for its own buffer; the rehearsal
    only polls more often."""
    from types import SimpleNamespace

    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    from verl_erc.sampler import BoundedReplayBuffer

    def build(cfg):
        trainer = SimpleNamespace(config=cfg, trainer_mode="sync", _add_prompts_to_generate=lambda n: None)
        trainer._resolve_filter_groups_metric = lambda: PPOTrainer._resolve_filter_groups_metric(trainer)
        return PPOTrainer._build_replay_buffer(trainer)

    recipe, rehearsal = build(configs[name]), build(rehearsals[name])
    verls = build(OmegaConf.merge(configs[name], {"trainer": {"v1": {"sampler": {"custom_sampler": None}}}}))
    assert type(recipe) is type(rehearsal) is BoundedReplayBuffer and type(verls).__name__ == "ReplayBuffer"
    assert (verls.poll_interval, recipe.poll_interval, rehearsal.poll_interval) == (2.0, 2.0, 0.1)
    keys = ("filter_groups_metric", "train_batch_size", "gen_batch_size", "max_inflight_gen_batches", "sync_refill_failed_groups")
    assert {k: getattr(recipe, k) for k in keys} == {k: getattr(verls, k) for k in keys}
    assert recipe.filter_groups_metric == (None if name.startswith("grpo") else "acc")
    assert recipe.max_num_gen_batches == (0 if name.startswith("grpo") else 2)


def test_rehearsals_pass_verls_config_checks(rehearsals):
    for name, cfg in rehearsals.items():
        validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
        validate_erc_config(cfg)


@pytest.mark.process
def test_rehearse_names_the_recipes_when_given_none_or_a_wrong_one():
    for args in ([], ["erc_dapo_70b"], ["evaluate"], ["rehearse"]):
        out = subprocess.run(["bash", str(ROOT / "recipes" / "rehearse.sh"), *args], capture_output=True, text=True,
                             env={**os.environ, "ERC_PYTHON": sys.executable})
        assert out.returncode == 2 and "RECIPE is one of:" in out.stderr, args
        assert set(out.stderr.split("one of:")[1].split("\n")[0].split()) == set(RECIPES)


@pytest.mark.process
def test_rehearse_runs_the_recipe_script_with_the_laptop_profile_and_local_assets(rehearsal_cache, tmp_path):
    from verl_erc.laptop.assets import asset_paths

    env = {k: v for k, v in os.environ.items() if not k.startswith("ERC_")}
    env.update(VERL_ERC_DRY_RUN="1", ERC_PYTHON=sys.executable, ERC_SEED="3")
    out = subprocess.run(["bash", str(ROOT / "recipes" / "rehearse.sh"), "gppo_1p5b", "trainer.total_training_steps=2"],
                         env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    words = command_words(out.stdout)
    paths = asset_paths()
    run_dir = tmp_path / "outputs" / "rehearsals" / "gppo_1p5b-seed3"  # the default ERC_RUNS_DIR
    launch = re.search(rf"metrics: {run_dir}/metrics/(\S+)\.jsonl\)", out.stdout).group(1)
    assert words == [
        sys.executable, "-m", "verl_erc.main", "--config-name", "gppo_1p5b",
        f"actor_rollout_ref.model.path={paths['model']}",
        f"data.train_files={paths['train']}", f"data.val_files={paths['val']}",
        "data.seed=3", "trainer.experiment_name=gppo_1p5b-seed3", f"trainer.default_local_dir={run_dir}/checkpoints",
        f"++ray_kwargs.ray_init.runtime_env.env_vars.TENSORBOARD_DIR={run_dir}/tensorboard",
        f"++ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={run_dir}/metrics/{launch}.jsonl",
        REHEARSAL, "trainer.total_training_steps=2",
    ]


# --- recipes/*.sh ---------------------------------------------------------------------------


def command_words(stdout: str) -> list[str]:
    """The words of the command a launcher printed (``command: <shell-quoted words>``)."""
    return shlex.split(next(line for line in stdout.splitlines() if line.startswith("command: "))[len("command: "):])


@pytest.fixture
def recipe_env(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "data").mkdir()
    for split in ("train", "val", *OFFICIAL_VAL):
        (tmp_path / "data" / f"{split}.parquet").touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ERC_", "VERL_ERC_"))}
    env.update(
        ERC_MODEL_1P5B=str(tmp_path / "model"),
        ERC_MODEL_7B=str(tmp_path / "model"),
        ERC_DATA_DIR=str(tmp_path / "data"),
        ERC_RUNS_DIR=str(tmp_path / "runs"),
        ERC_PYTHON=sys.executable,
        VERL_ERC_DRY_RUN="1",
    )
    return env, tmp_path


def run_recipe(name, env, *args):
    return subprocess.run(["bash", str(ROOT / "recipes" / f"{name}.sh"), *args], env=env, capture_output=True, text=True)


@pytest.mark.process
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_forwards_overrides_unchanged(recipe_env, name):
    env, tmp = recipe_env
    out = run_recipe(name, dict(env, ERC_SEED="7"), "trainer.total_epochs=3", "trainer.logger=[console,wandb]")
    assert out.returncode == 0, out.stderr
    words = command_words(out.stdout)
    assert words[:5] == [sys.executable, "-m", "verl_erc.main", "--config-name", name]
    run_dir = tmp / "runs" / f"{name}-seed7"
    launch = re.search(rf"metrics: {run_dir}/metrics/(\S+)\.jsonl\)", out.stdout).group(1)
    val = [f"{tmp}/data/{split}.parquet" for split in RECIPES[name].val_files]
    assert words[5:] == [
        f"actor_rollout_ref.model.path={tmp}/model",
        f"data.train_files={tmp}/data/train.parquet",
        f"data.val_files={val[0] if len(val) == 1 else '[' + ','.join(val) + ']'}",
        "data.seed=7",
        f"trainer.experiment_name={name}-seed7",
        f"trainer.default_local_dir={run_dir}/checkpoints",
        # verl's loggers read these in its task runner, a Ray actor: passed in Ray's runtime env
        f"++ray_kwargs.ray_init.runtime_env.env_vars.TENSORBOARD_DIR={run_dir}/tensorboard",
        f"++ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={run_dir}/metrics/{launch}.jsonl",
        "trainer.total_epochs=3",
        "trainer.logger=[console,wandb]",
    ]
    assert f"TensorBoard: {run_dir}/tensorboard" in out.stdout
    assert not (tmp / "runs").exists()  # a dry run creates nothing


@pytest.mark.process
def test_recipe_runs_the_command_with_logging_env(recipe_env):
    env, tmp = recipe_env
    fake = f"{sys.executable} {ROOT / 'tests' / 'slurm' / 'fake_trainer.py'}"
    env = {k: v for k, v in env.items() if k not in ("VERL_ERC_DRY_RUN", "RAY_ADDRESS")}
    out = run_recipe("erc_dapo_7b", dict(env, VERL_ERC_ENTRYPOINT=fake), "x=1")
    assert out.returncode == 0, out.stderr
    run_dir = tmp / "runs" / "erc_dapo_7b-seed1"
    line = next(line for line in out.stdout.splitlines() if line.startswith("FAKE_TRAINER connected"))
    assert f"tensorboard={run_dir}/tensorboard metrics={run_dir}/metrics/" in line and line.endswith("'x=1']")
    # the entry point gets the run directory and the launch's name (verl_erc.run.launch records the launch there)
    launch = re.search(rf"metrics={run_dir}/metrics/(\S+)\.jsonl", line).group(1)
    assert f"run_dir={run_dir} launch={launch} " in line
    assert (run_dir / "tensorboard").is_dir() and (run_dir / "metrics").is_dir()


@pytest.mark.process
def test_a_run_name_names_the_run_directory(recipe_env):
    env, tmp = recipe_env
    out = run_recipe("erc_dapo_7b", dict(env, ERC_RUN_NAME="erc_dapo_7b_beta0.1-seed1"))
    run_dir = tmp / "runs" / "erc_dapo_7b_beta0.1-seed1"
    assert f"run directory: {run_dir} " in out.stdout
    assert f"trainer.default_local_dir={run_dir}/checkpoints" in out.stdout


@pytest.mark.process
@pytest.mark.parametrize(
    "unset, message",
    [
        ("ERC_MODEL_7B", "ERC_MODEL_7B is not set"),
        ("ERC_DATA_DIR", "ERC_DATA_DIR is not set"),
        ("ERC_RUNS_DIR", "ERC_RUNS_DIR is not set"),
    ],
)
def test_recipe_fails_clearly_without_paths(recipe_env, unset, message):
    env, _ = recipe_env
    env.pop(unset)
    out = run_recipe("erc_dapo_7b", env)
    assert out.returncode == 2 and message in out.stderr and "command:" not in out.stdout


@pytest.mark.process
def test_recipe_fails_clearly_on_missing_files(recipe_env):
    env, tmp = recipe_env
    out = run_recipe("grpo_1p5b", dict(env, ERC_MODEL_1P5B=str(tmp / "nope")))
    assert out.returncode == 2 and "is not a folder" in out.stderr
    (tmp / "data" / "val.parquet").unlink()
    out = run_recipe("grpo_1p5b", env)
    assert out.returncode == 2 and "val.parquet not found" in out.stderr and "verl_erc.data" in out.stderr


@pytest.mark.process
def test_recipe_makes_paths_absolute(recipe_env):
    """Ray workers do not run in the launcher's working directory."""
    env, tmp = recipe_env
    env = dict(env, ERC_MODEL_7B="./model", ERC_DATA_DIR="data", ERC_RUNS_DIR="runs")
    out = subprocess.run(["bash", str(ROOT / "recipes" / "dapo_7b.sh")], env=env, cwd=tmp, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"actor_rollout_ref.model.path={tmp}/model data.train_files={tmp}/data/train.parquet" in out.stdout
    assert f"trainer.default_local_dir={tmp}/runs/dapo_7b-seed1/checkpoints" in out.stdout


@pytest.mark.process
def test_recipe_composes_as_launched(recipe_env):
    """The overrides a recipe passes compose with its config (what `python -m verl_erc.main` gets)."""
    env, tmp = recipe_env
    out = run_recipe("kl_penalty_7b", env, "actor_rollout_ref.actor.kl_loss_coef=0.01")
    words = command_words(out.stdout)[5:]
    cfg = load("kl_penalty_7b", overrides=words)
    assert cfg.actor_rollout_ref.actor.kl_loss_coef == 0.01
    assert cfg.trainer.default_local_dir == f"{tmp}/runs/kl_penalty_7b-seed1/checkpoints"
    assert cfg.data.seed == 1 and cfg.actor_rollout_ref.rollout.seed == 1


@pytest.mark.process
def test_evaluate_runs_the_recipes_validation_only_with_overrides_in_any_order(recipe_env):
    """recipes/evaluate.sh RECIPE base: the recipe's command with verl's val_only, into eval_<model>; the Slurm
    launcher puts its overrides before RECIPE and MODEL."""
    env, tmp = recipe_env
    out = run_recipe("evaluate", env, "trainer.nnodes=2", "erc_dapo_7b", "base", "data.max_response_length=32768")
    assert out.returncode == 0, out.stderr
    words = command_words(out.stdout)
    assert words[:5] == [sys.executable, "-m", "verl_erc.main", "--config-name", "erc_dapo_7b"]
    assert f"actor_rollout_ref.model.path={tmp}/model" in words
    assert f"trainer.default_local_dir={tmp}/runs/eval_model/checkpoints" in words
    assert words[-4:] == ["trainer.val_only=true", "trainer.val_before_train=true", "trainer.nnodes=2",
                          "data.max_response_length=32768"]
    for args, message in ((["erc_dapo_7b"], "usage: "), (["rehearse", "base"], "no recipe 'rehearse'"),
                          (["--step", "2", "erc_dapo_7b", "base"], "--step is for a run directory"),
                          (["erc_dapo_7b", str(tmp / "nowhere")], "is not a folder")):
        out = run_recipe("evaluate", env, *args)
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr)
