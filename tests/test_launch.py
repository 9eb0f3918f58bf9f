"""A run's life across launches, before Ray starts: identity, resume point, finished runs, requeue decision.

Real configs (the recipes' composed configs) and real checkpoint folders as verl lays them out; no Ray.
"""

from __future__ import annotations

import json
import re
import zipfile

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from helpers import save_step

from verl_erc.run.checkpoints import POINTER, resume_point
from verl_erc.cluster.requeue import requeue_decision
from verl_erc.run.launch import LaunchRefused, finish_launch, prepare_launch
from verl_erc.run.preemption import STOP_FILE_ENV
from verl_erc.run.identity import RELAUNCH_KEYS, differences, experiment_keys, flat_config, is_relaunch_key

REQUIRED = ["actor_rollout_ref.model.path=/models/x", "data.train_files=/d/train.parquet", "data.val_files=/d/val.parquet"]


def recipe_config(run_dir, *overrides, name="erc_dapo_7b"):
    with initialize_config_module(config_module="verl_erc.hydra_conf", version_base=None):
        return compose(config_name=name, overrides=[*REQUIRED, f"trainer.default_local_dir={run_dir}/checkpoints",
                                                    "trainer.total_training_steps=4", *overrides])


@pytest.fixture
def launch_env(monkeypatch, tmp_path):
    run_dir = tmp_path / "erc_dapo_7b-seed1"
    monkeypatch.setenv("VERL_ERC_RUN_DIR", str(run_dir))
    monkeypatch.delenv("VERL_ERC_LAUNCH", raising=False)
    monkeypatch.setenv("VERL_ERC_LAUNCH_STATE", str(tmp_path / "state.json"))
    return run_dir


# --- checkpoints -------------------------------------------------------------------------------


def test_resume_point_is_the_newest_complete_checkpoint_whatever_the_pointer_says(tmp_path):
    ckpt = tmp_path / "checkpoints"
    assert resume_point(ckpt).step == 0 and resume_point(ckpt).pointer_problem is None  # nothing saved yet
    save_step(ckpt, 2)
    save_step(ckpt, 4)
    point = resume_point(ckpt)
    assert (point.step, point.folder.name, point.pointer_problem) == (4, "global_step_4", None)
    for text, problem in [("", "not a step number"), ("4\x00", "not a step number"), ("9", "does not exist"),
                          ("2", "step 4 is newer and complete")]:
        (ckpt / POINTER).write_text(text)
        point = resume_point(ckpt)
        assert point.step == 4 and problem in point.pointer_problem, (text, point)
    save_step(ckpt, 6, complete=False)  # killed while saving step 6: its data.pt was cut short
    (ckpt / POINTER).write_text("6")
    point = resume_point(ckpt)
    assert point.step == 4 and "incomplete" in point.pointer_problem and [p.name for p in point.incomplete] == ["global_step_6"]


# --- run identity ---------------------------------------------------------------------------------

#: experiment keys: a relaunch that changes one is refused
EXPERIMENT = [
    "actor_rollout_ref.actor.optim.lr", "actor_rollout_ref.actor.optim.weight_decay", "actor_rollout_ref.actor.erc.enable",
    "actor_rollout_ref.actor.erc.beta_low", "actor_rollout_ref.actor.erc.beta_high", "actor_rollout_ref.actor.erc.entropy_eps",
    "actor_rollout_ref.actor.policy_loss.loss_mode", "actor_rollout_ref.actor.clip_ratio_high",
    "actor_rollout_ref.actor.loss_agg_mode", "actor_rollout_ref.actor.ppo_mini_batch_size", "actor_rollout_ref.model.path",
    "data.train_files", "data.val_files", "data.max_response_length", "data.train_batch_size", "data.seed",
    "actor_rollout_ref.rollout.n", "actor_rollout_ref.rollout.temperature", "algorithm.filter_groups.max_num_gen_batches",
    "reward.custom_reward_function.path", "trainer.v1.trainer_mode", "trainer.device",
]
#: keys a relaunch may change
RELAUNCH = [
    "trainer.total_training_steps", "trainer.logger", "trainer.save_freq", "trainer.test_freq", "trainer.val_before_train",
    "trainer.nnodes", "trainer.n_gpus_per_node", "trainer.resume_mode", "ray_kwargs.ray_init.num_cpus",
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu",
    "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu", "actor_rollout_ref.rollout.tensor_model_parallel_size",
    "actor_rollout_ref.actor.ulysses_sequence_parallel_size", "actor_rollout_ref.actor.fsdp_config.param_offload",
    "actor_rollout_ref.rollout.gpu_memory_utilization", "actor_rollout_ref.actor.erc.entropy_chunk_size",
    "trainer.v1.sampler.sampler_kwargs.poll_interval", "run_guard.allow_changes",
]


def test_experiment_and_relaunch_keys_are_told_apart(tmp_path):
    flat = flat_config(recipe_config(tmp_path))
    assert set(EXPERIMENT) | set(RELAUNCH) <= flat.keys()  # real keys of the recipes' configs
    assert [k for k in EXPERIMENT if is_relaunch_key(k)] == []
    assert [k for k in RELAUNCH if not is_relaunch_key(k)] == []
    assert len(RELAUNCH_KEYS) == len(set(RELAUNCH_KEYS))
    assert len(experiment_keys(flat)) > 500  # the rest of verl's config defines the experiment


def test_differences_list_each_changed_experiment_key_with_both_values(tmp_path):
    old = flat_config(recipe_config(tmp_path))
    new = flat_config(recipe_config(tmp_path, "actor_rollout_ref.actor.optim.lr=2e-6", "trainer.total_training_steps=9",
                                    "actor_rollout_ref.actor.erc.beta_low=0.1"))
    assert differences(old, new) == [("actor_rollout_ref.actor.erc.beta_low", 0.05, 0.1),
                                     ("actor_rollout_ref.actor.optim.lr", 1e-6, 2e-6)]


# --- launches -------------------------------------------------------------------------------------


def test_a_launch_records_the_run_and_a_changed_relaunch_is_refused_naming_each_key(launch_env, tmp_path):
    run_dir = launch_env
    launch = prepare_launch(recipe_config(run_dir), argv=["python", "-m", "verl_erc.main"])
    identity = json.loads((run_dir / "identity.json").read_text())
    assert identity["launches"][0]["start_step"] == 0 and identity["launches"][0]["versions"]["verl"] == "0.9.1"
    assert OmegaConf.load(run_dir / "config.yaml").actor_rollout_ref.actor.optim.lr == 1e-6
    assert json.loads((tmp_path / "state.json").read_text())["start_step"] == 0
    save_step(launch.checkpoint_dir, 2)
    assert finish_launch(launch) == "ended"  # 2 of 4 steps, no stop request

    with pytest.raises(LaunchRefused) as refused:
        prepare_launch(recipe_config(run_dir, "actor_rollout_ref.actor.optim.lr=2e-6", "actor_rollout_ref.actor.erc.beta_low=0.1"))
    message = str(refused.value)
    assert "actor_rollout_ref.actor.optim.lr: 1e-06 -> 2e-06" in message and "erc.beta_low: 0.05 -> 0.1" in message
    assert "ERC_RUN_NAME" in message and "run_guard.allow_changes=true" in message
    # extending it and changing its allocation or micro-batching is the same run
    extended = recipe_config(run_dir, "trainer.total_training_steps=8", "trainer.nnodes=4",
                             "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=8192")
    launch = prepare_launch(extended)
    assert launch.start_step == 2 and extended.trainer.val_before_train is False  # no step-0 validation on a resume
    assert extended.ray_kwargs.ray_init.runtime_env.env_vars[STOP_FILE_ENV] == str(run_dir / "stop_requested")
    # on purpose, with the force switch: continued, and the change recorded
    prepare_launch(recipe_config(run_dir, "actor_rollout_ref.actor.optim.lr=2e-6", "run_guard.allow_changes=true"))
    identity = json.loads((run_dir / "identity.json").read_text())
    assert identity["launches"][-1]["changed"] == [["actor_rollout_ref.actor.optim.lr", 1e-6, 2e-6]]
    log = (run_dir / "launches.log").read_text().splitlines()
    assert [line.split(" ", 2)[1] for line in log] == ["start", "end:", "refused:", "start", "start"]


def test_a_finished_run_is_refused_and_says_how_to_go_on(launch_env):
    run_dir = launch_env
    launch = prepare_launch(recipe_config(run_dir))
    save_step(launch.checkpoint_dir, 4)
    assert finish_launch(launch) == "finished"
    with pytest.raises(LaunchRefused, match=r"already finished at step 4 of 4 .*trainer.total_training_steps=6"):
        prepare_launch(recipe_config(run_dir))
    assert prepare_launch(recipe_config(run_dir, "trainer.total_training_steps=6")).start_step == 4


def test_the_entry_point_refuses_a_finished_run_before_verl_starts(launch_env, monkeypatch, capsys):
    """verl_erc.main as a relaunch of a finished run by hand runs it: exit 2, the refusal on stderr, verl's
    task function never called."""
    from verl.trainer import main_ppo

    import verl_erc.main as entry

    monkeypatch.delenv("VERL_PLATFORM", raising=False)  # the laptop profile's trainer.device=cpu selects it
    config = recipe_config(launch_env, "+rehearsal=laptop")
    launch = prepare_launch(config)
    save_step(launch.checkpoint_dir, 4)
    assert finish_launch(launch) == "finished"
    monkeypatch.setattr(main_ppo, "main", lambda config: pytest.fail("verl's task function started"))
    with pytest.raises(SystemExit) as exited:
        entry.main(config)
    assert exited.value.code == 2
    assert "verl_erc: refused: erc_dapo_7b-seed1 already finished at step 4 of 4" in capsys.readouterr().err


def test_a_cut_short_pointer_falls_back_to_the_newest_complete_checkpoint(launch_env, capsys):
    run_dir = launch_env
    prepare_launch(recipe_config(run_dir))
    ckpt = run_dir / "checkpoints"
    save_step(ckpt, 1)
    save_step(ckpt, 2)
    (ckpt / POINTER).write_text("")  # killed while verl rewrote it in place
    config = recipe_config(run_dir)
    assert prepare_launch(config).start_step == 2
    assert (config.trainer.resume_mode, config.trainer.resume_from_path) == ("resume_path", str(ckpt / "global_step_2"))
    assert "not a step number" in capsys.readouterr().out


def test_a_run_whose_checkpoints_are_all_incomplete_is_never_restarted_from_scratch(launch_env):
    run_dir = launch_env
    prepare_launch(recipe_config(run_dir))
    save_step(run_dir / "checkpoints", 2, complete=False)
    with pytest.raises(LaunchRefused, match="none is complete") as refused:
        prepare_launch(recipe_config(run_dir))
    assert "global_step_2" in str(refused.value)
    with pytest.raises(LaunchRefused, match="resume_mode=disable"):
        prepare_launch(recipe_config(run_dir, "trainer.resume_mode=disable"))


def test_a_run_whose_earlier_launch_saved_nothing_starts_from_step_0(launch_env):
    run_dir = launch_env
    prepare_launch(recipe_config(run_dir))
    assert prepare_launch(recipe_config(run_dir)).start_step == 0


def test_requeue_only_when_the_checkpoint_advanced_and_within_the_cap(launch_env, tmp_path):
    run_dir = launch_env
    state = tmp_path / "state.json"
    assert requeue_decision(tmp_path / "none.json", 0, 20) == (False, "the recipe recorded no launch (it stopped before "
                                                                      "training started): a relaunch would do the same")
    prepare_launch(recipe_config(run_dir))
    ok, why = requeue_decision(state, 0, 20)
    assert not ok and "did not advance" in why
    save_step(run_dir / "checkpoints", 2)
    assert requeue_decision(state, 0, 20) == (True, "its checkpoint advanced from step 0 to 2 (requeue 1 of at most 20)")
    ok, why = requeue_decision(state, 20, 20)
    assert not ok and "ERC_SLURM_MAX_REQUEUES=20" in why
    save_step(run_dir / "checkpoints", 4)
    assert requeue_decision(state, 0, 20) == (False, "the run finished at step 4")


def test_data_pt_is_complete_only_as_a_whole_archive(tmp_path):
    torch.save({"x": 1}, tmp_path / "data.pt")
    assert zipfile.is_zipfile(tmp_path / "data.pt")
    data = (tmp_path / "data.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    assert not zipfile.is_zipfile(tmp_path / "cut.pt")


# --- the holes a review found (issue 33): each a launch that must be refused -----------------------------


def launched_to_step(run_dir, *overrides, step=2):
    """A run directory holding a launch that saved ``step``."""
    launch = prepare_launch(recipe_config(run_dir, *overrides))
    save_step(launch.checkpoint_dir, step)
    finish_launch(launch)
    return launch


def test_a_relaunch_into_an_empty_checkpoint_folder_is_refused_not_restarted_from_scratch(launch_env, tmp_path):
    run_dir = launch_env  # under a recipe: VERL_ERC_RUN_DIR names the run directory
    launched_to_step(run_dir)
    with pytest.raises(LaunchRefused, match="reached step 2") as refused:
        prepare_launch(recipe_config(run_dir, f"trainer.default_local_dir={tmp_path}/elsewhere"))
    assert str(run_dir / "checkpoints") in str(refused.value)
    assert prepare_launch(recipe_config(run_dir)).start_step == 2  # its own checkpoint folder: resumed


@pytest.mark.parametrize("override", [
    "skip.rollout.enable=true",  # verl's rollout skip replays dumped rollouts instead of generating
    "actor_rollout_ref.actor.fsdp_config.turbo_config.distributed.fsdp_plan.param_dtype=fp32",
    "++ray_kwargs.ray_init.runtime_env.env_vars.CUBLAS_WORKSPACE_CONFIG=:16:8",  # the workers' environment
    "++ray_kwargs.ray_init.runtime_env.py_executable=/opt/other/bin/python",  # another interpreter and packages
])
def test_keys_that_change_the_experiment_are_refused(launch_env, override):
    launched_to_step(launch_env)
    key = override.lstrip("+").split("=")[0]
    with pytest.raises(LaunchRefused, match=re.escape(key)):
        prepare_launch(recipe_config(launch_env, override))


def test_the_total_steps_are_an_experiment_key_where_the_schedule_depends_on_them(launch_env):
    launched_to_step(launch_env)  # the recipes' constant learning rate: extending the run is the same run
    assert prepare_launch(recipe_config(launch_env, "trainer.total_training_steps=8")).start_step == 2


@pytest.mark.parametrize("schedule", [["actor_rollout_ref.actor.optim.lr_scheduler_type=cosine"],
                                      ["actor_rollout_ref.actor.optim.lr_warmup_steps=-1",
                                       "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.1"]])
def test_extending_a_run_whose_schedule_spans_its_steps_is_refused(launch_env, schedule):
    launched_to_step(launch_env, *schedule)
    with pytest.raises(LaunchRefused, match=r"trainer.total_training_steps: 4 -> 8"):
        prepare_launch(recipe_config(launch_env, *schedule, "trainer.total_training_steps=8"))


def test_changed_data_or_model_contents_under_the_same_paths_are_refused(launch_env, tmp_path):
    data, model = tmp_path / "data", tmp_path / "model"
    data.mkdir()
    model.mkdir()
    (data / "train.parquet").write_bytes(b"the training set")
    (data / "val.parquet").write_bytes(b"the benchmarks")
    (model / "config.json").write_text('{"hidden_size": 8}')
    (model / "model.safetensors").write_bytes(b"w" * 100)
    paths = [f"data.train_files={data}/train.parquet", f"data.val_files={data}/val.parquet",
             f"actor_rollout_ref.model.path={model}"]
    launched_to_step(launch_env, *paths)
    identity = json.loads((launch_env / "identity.json").read_text())
    assert identity["inputs"][f"actor_rollout_ref.model.path: {model}"]["model.safetensors"] == "bytes:100"
    (data / "train.parquet").write_bytes(b"another training set")
    with pytest.raises(LaunchRefused, match=f"data.train_files: {data}/train.parquet: sha256:"):
        prepare_launch(recipe_config(launch_env, *paths))
    (data / "train.parquet").write_bytes(b"the training set")
    (model / "model.safetensors").write_bytes(b"w" * 101)  # another checkpoint under the same folder
    with pytest.raises(LaunchRefused, match=r"model.safetensors': 'bytes:100'"):
        prepare_launch(recipe_config(launch_env, *paths))
    launch = prepare_launch(recipe_config(launch_env, *paths, "run_guard.allow_changes=true"))  # on purpose: recorded
    assert launch.start_step == 2
    assert json.loads((launch_env / "identity.json").read_text())["launches"][-1]["changed"][0][0].startswith(
        "actor_rollout_ref.model.path")


def test_a_truncated_identity_is_refused_naming_the_file_and_nothing_is_written(launch_env):
    launched_to_step(launch_env)
    identity = launch_env / "identity.json"
    identity.write_text(identity.read_text()[:40])  # as an old version's write cut short by a kill left it
    config_before = (launch_env / "config.yaml").read_text()
    with pytest.raises(LaunchRefused, match="identity.json or config.yaml cannot be read"):
        prepare_launch(recipe_config(launch_env))
    assert (launch_env / "config.yaml").read_text() == config_before and len(identity.read_text()) == 40
    assert not list(launch_env.glob(".*.tmp"))  # the atomic writes leave no temporary file behind


def test_a_changed_package_version_is_shown_at_launch(launch_env, monkeypatch, capsys):
    import verl_erc.run.launch as launch_module

    launched_to_step(launch_env)
    real = launch_module.versions()
    monkeypatch.setattr(launch_module, "versions", lambda: {**real, "verl": "0.9.2"})
    prepare_launch(recipe_config(launch_env))
    assert "package versions changed since this run's last launch (recorded): verl 0.9.1 -> 0.9.2" in capsys.readouterr().out
