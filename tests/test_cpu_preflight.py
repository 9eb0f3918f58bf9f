"""The preflight: device selection and Ray resources, checked before anything starts."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
from cpu_subprocess import run_cpu_script
from hydra import compose, initialize_config_module

from verl_erc.cpu.platform import CpuSelectedOnGpuMachineError
from verl_erc.cpu.checks import cpu_config_problems
from verl_erc.run.preflight import PreflightError, check_ray_resources, preflight


#: a paper recipe's laptop rehearsal (recipes/rehearse.sh passes the paths of the local assets)
REHEARSAL = ["+rehearsal=laptop", "actor_rollout_ref.model.path=/models/tiny", "data.train_files=/d/train.parquet",
             "data.val_files=/d/val.parquet"]


def rehearsal_config(*overrides: str, name: str = "erc_dapo_7b"):
    with initialize_config_module(config_module="verl_erc.hydra_conf", version_base=None):
        return compose(config_name=name, overrides=[*REHEARSAL, *overrides])


@pytest.mark.parametrize("name", ["erc_dapo_7b", "dapo_1p5b", "kl_penalty_7b", "grpo_7b"])
def test_rehearsal_configs_pass(name):
    config = rehearsal_config(name=name)
    assert config.trainer.device == "cpu"
    assert cpu_config_problems(config) == []
    check_ray_resources(config)


@pytest.mark.parametrize(
    "override, named",
    [
        ("actor_rollout_ref.actor.strategy=fsdp", "actor_rollout_ref.actor.strategy=fsdp"),
        ("actor_rollout_ref.rollout.name=sglang", "actor_rollout_ref.rollout.name=vllm"),
        ("actor_rollout_ref.rollout.enable_sleep_mode=true", "enable_sleep_mode=False"),
        ("actor_rollout_ref.rollout.enforce_eager=false", "enforce_eager=True"),
        ("actor_rollout_ref.rollout.full_determinism=true", "full_determinism=False"),
        ("~actor_rollout_ref.rollout.engine_kwargs.vllm.worker_extension_cls", "worker_extension_cls=verl_erc.cpu.vllm_worker"),
        ("actor_rollout_ref.rollout.tensor_model_parallel_size=2", "tensor_model_parallel_size=2"),
        ("~actor_rollout_ref.model.override_config.attn_implementation", "attn_implementation=sdpa"),
        ("actor_rollout_ref.model.use_fused_kernels=true", "use_fused_kernels"),
        ("trainer.v1.trainer_mode=separate_async", "trainer_mode=separate_async"),
        ("critic.enable=true", "critic.strategy=fsdp"),  # the recipes have no critic: its settings are verl's
    ],
)
def test_each_cpu_problem_is_named_with_its_fix(override, named):
    extra = ["+critic.model.override_config.attn_implementation=sdpa"] if override == "critic.enable=true" else []
    problems = cpu_config_problems(rehearsal_config(override, *extra))
    assert len(problems) == 1 and named in problems[0], problems
    if override == "critic.enable=true":  # a CPU-ready critic passes
        assert cpu_config_problems(rehearsal_config(override, *extra, "critic.strategy=fsdp2")) == []


def test_ulysses_is_refused_where_the_cpu_backend_would_compute_it_wrong():
    sp2 = ["rehearsal=laptop_7b_layout"]  # 2 ranks, Ulysses SP 2
    config = rehearsal_config(*sp2)
    assert cpu_config_problems(config) == []  # sdpa on packed sequences: verl_erc.cpu.attention
    check_ray_resources(config)
    problems = cpu_config_problems(rehearsal_config(*sp2, "actor_rollout_ref.model.override_config.attn_implementation=eager"))
    assert len(problems) == 1 and "actor_rollout_ref.actor.ulysses_sequence_parallel_size=2 with" in problems[0], problems
    problems = cpu_config_problems(rehearsal_config(*sp2, "actor_rollout_ref.model.use_remove_padding=false"))
    assert problems == ["actor_rollout_ref.actor.ulysses_sequence_parallel_size=2 needs "
                        "actor_rollout_ref.model.use_remove_padding=true (verl slices the packed sequence)"], problems


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["ray_kwargs.ray_init.num_cpus=5"], "ray_kwargs.ray_init.num_cpus"),
        (["transfer_queue.backend.SimpleStorage.num_data_storage_units=8"], "num_data_storage_units=8"),
        (["ray_kwargs.ray_init.num_gpus=0"], "ray_kwargs.ray_init.num_gpus to trainer.n_gpus_per_node"),
        (["trainer.n_gpus_per_node=2", "ray_kwargs.ray_init.num_gpus=2"], "2 bundles of 3 CPUs"),
    ],
)
def test_ray_resource_shortfalls_fail_fast_with_every_consumer_listed(overrides, named):
    with pytest.raises(PreflightError, match="wait for them forever") as error:
        check_ray_resources(rehearsal_config(*overrides))
    assert named in str(error.value)
    assert "TransferQueue controller" in str(error.value)


@pytest.mark.parametrize(
    "address, ray_address_env, joins",
    [
        ("local", "10.0.0.1:6379", False),  # Ray ignores RAY_ADDRESS for address="local": a fresh instance
        ("10.0.0.1:6379", None, True),  # the Slurm job's cluster (slurm/erc_ray.sbatch passes its address)
        ("auto", "10.0.0.1:6379", True),
        (None, "10.0.0.1:6379", True),
        (None, None, False),
    ],
)
def test_joining_a_cluster_follows_rays_address_rules_and_skips_the_local_resource_check(
    monkeypatch, address, ray_address_env, joins
):
    from verl_erc.run import preflight as module

    if ray_address_env is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", ray_address_env)
    # 1 CPU would fail the laptop's resource check on a fresh instance; a joined cluster's own check applies
    config = rehearsal_config("ray_kwargs.ray_init.num_cpus=1", f"++ray_kwargs.ray_init.address={address or 'null'}")
    assert module._external_cluster(config) is joins
    if joins:
        check_ray_resources(config)
    else:
        with pytest.raises(PreflightError, match="wait for them forever"):
            check_ray_resources(config)


def test_cuda_visible_devices_that_ray_would_refuse_is_named(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    config = rehearsal_config()
    from verl_erc.cpu.checks import visible_devices_problems

    assert "unset it" in visible_devices_problems(config, external_cluster=False)[0]
    assert visible_devices_problems(config, external_cluster=True) == []  # a cluster's own devices
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_devices_problems(config, external_cluster=False) == []


def test_gpu_backend_without_a_gpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(PreflightError, match="torch sees no CUDA device"):
        preflight(rehearsal_config("trainer.device=cuda"))


def test_cpu_backend_on_a_gpu_machine_is_refused(monkeypatch):
    monkeypatch.delenv("VERL_PLATFORM", raising=False)  # restored after the test
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(CpuSelectedOnGpuMachineError, match="torch sees 1 CUDA device"):
        preflight(rehearsal_config())


@pytest.mark.process
def test_trainer_device_cpu_selects_the_platform_here_and_for_ray_workers():
    report = run_cpu_script(
        r"""
        REHEARSAL = %r
        import json, os
        import verl
        from hydra import compose, initialize_config_module
        from verl.plugin.platform import get_platform
        from verl_erc.run.preflight import preflight

        with initialize_config_module(config_module="verl_erc.hydra_conf", version_base=None):
            config = compose(config_name="erc_dapo_7b", overrides=[*REHEARSAL, "~ray_kwargs.ray_init.runtime_env.env_vars.VERL_PLATFORM"])
        before = os.environ.get("VERL_PLATFORM")
        preflight(config)
        print(json.dumps({
            "before": before,
            "env": os.environ.get("VERL_PLATFORM"),
            "platform": type(get_platform()).__name__,
            "worker_env": config.ray_kwargs.ray_init.runtime_env.env_vars.get("VERL_PLATFORM"),
        }))
        """
        % (REHEARSAL,),
        env={"VERL_PLATFORM": ""},
    )
    assert report == {"before": "", "env": "cpu", "platform": "PlatformCPU", "worker_env": "cpu"}


@pytest.mark.process
def test_entry_point_reports_a_bad_setting_instead_of_hanging(tmp_path):
    """verl's default TransferQueue storage (8 units) would wait forever for Ray CPUs; the run exits with why."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "verl_erc.main", "--config-name", "erc_dapo_7b", *REHEARSAL,
         "transfer_queue.backend.SimpleStorage.num_data_storage_units=8"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "num_data_storage_units=8" in proc.stderr + proc.stdout
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout  # failed before Ray started
    assert time.monotonic() - start < 300
