"""ERC config: Hydra composition, dataclass conversion, validation at start-up, the plugin check."""

import json
import os
import subprocess
from pathlib import Path
import sys

import pytest
from helpers import compose_erc
from verl.utils.config import omega_conf_to_dataclass

from verl_erc.config import ErcConfig, ErcConfigError, ErcFSDPActorConfig
from verl_erc.hooks.trainer import validate_erc_config

ERC_ON = [
    "actor_rollout_ref.actor.policy_loss.loss_mode=gppo",
    "actor_rollout_ref.actor.erc.enable=true",
    "actor_rollout_ref.actor.erc.beta_low=0.04",
    "actor_rollout_ref.actor.erc.beta_high=0.06",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
]


def test_defaults_compose_and_convert():
    cfg = compose_erc(["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2"])
    assert cfg.trainer.v1.trainer_mode == "sync"  # verl's own mode name
    erc = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor.erc)
    assert isinstance(erc, ErcConfig)
    assert (erc.enable, erc.beta_low, erc.beta_high, erc.entropy_eps) == (False, 0.05, 0.05, 1e-6)
    assert validate_erc_config(cfg) is None  # ERC off: nothing to check


def test_the_yaml_takes_every_default_from_the_dataclasses():
    """hydra_conf/erc_base.yaml lists every field of verl-erc's actor config (so each is an override without +) and
    takes its default from the dataclass (${erc.default:...}); the analysis path is the one default it sets."""
    from dataclasses import asdict

    from omegaconf import OmegaConf

    cfg = compose_erc(["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2"])
    composed = OmegaConf.to_container(cfg.actor_rollout_ref.actor.erc, resolve=True)

    def without_target(node):
        return {k: without_target(v) if isinstance(v, dict) else v for k, v in node.items() if k != "_target_"}

    expected = without_target(asdict(ErcConfig()))
    expected["analysis"]["path"] = f"{cfg.trainer.default_local_dir}/erc_tokens/rank{{rank}}.jsonl"
    assert without_target(composed) == expected
    assert cfg.actor_rollout_ref.actor.positive_nll_coef == ErcFSDPActorConfig.__dataclass_fields__["positive_nll_coef"].default
    raw = (Path(__file__).resolve().parents[1] / "hydra_conf" / "erc_base.yaml").read_text()
    assert "beta_low: ${erc.default:erc.beta_low}" in raw and "0.05" not in raw  # no value written twice


def test_erc_overrides_reach_the_actor_dataclass():
    cfg = compose_erc(ERC_ON)
    actor = validate_erc_config(cfg)
    assert isinstance(actor, ErcFSDPActorConfig)
    assert actor.policy_loss.loss_mode == "gppo"
    assert (actor.erc.enable, actor.erc.beta_low, actor.erc.beta_high) == (True, 0.04, 0.06)
    assert actor.strategy == cfg.actor_rollout_ref.actor.strategy


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(beta_low=1.0), "beta_low must satisfy 0 <= beta_low < 1"),
        (dict(beta_low=-0.01), "beta_low must satisfy 0 <= beta_low < 1"),
        (dict(beta_high=-0.1), "beta_high must be >= 0"),
        (dict(entropy_eps=0.0), "entropy_eps must be > 0"),
        (dict(entropy_chunk_size=0), "entropy_chunk_size must be >= 1"),
        (dict(enable="yes"), "enable must be true or false"),
    ],
)
def test_bad_values_are_rejected(kwargs, message):
    with pytest.raises(ErcConfigError, match=message):
        ErcConfig(**kwargs)


def test_bad_value_from_the_command_line_names_the_key():
    cfg = compose_erc(ERC_ON + ["actor_rollout_ref.actor.erc.beta_low=1.5"])
    with pytest.raises(Exception, match=r"actor_rollout_ref\.actor\.erc\.beta_low must satisfy"):
        validate_erc_config(cfg)


@pytest.mark.parametrize(
    "override, message",
    [
        ("algorithm.rollout_correction.bypass_mode=true", "bypass_mode=true skips the old-log-prob recompute"),
        ("trainer.use_v1=false", "legacy trainer discards the old-policy entropy"),
        ("trainer.v1.trainer_mode=my_mode", "trainer_mode=my_mode is not a verl trainer that verl_erc wires ERC into"),
        ("actor_rollout_ref.model.use_fused_kernels=true", "use_fused_kernels=true never materialises the logits"),
    ],
)
def test_configs_that_would_silently_drop_erc_are_refused(override, message):
    cfg = compose_erc(ERC_ON + [override])
    with pytest.raises(ErcConfigError, match=message):
        validate_erc_config(cfg)


def test_actor_without_erc_dataclass_is_refused():
    cfg = compose_erc(ERC_ON)
    cfg.actor_rollout_ref.actor._target_ = "verl.workers.config.FSDPActorConfig"
    with pytest.raises(ErcConfigError, match="FSDPActorConfig, which has no ERC field"):
        validate_erc_config(cfg)


@pytest.mark.process
def test_main_cfg_job_composes_with_erc_overrides():
    out = subprocess.run(
        [sys.executable, "-m", "verl_erc.main", "--cfg", "job", *ERC_ON], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "_target_: verl_erc.config.ErcFSDPActorConfig" in out.stdout
    assert "loss_mode: gppo" in out.stdout
    erc_block = out.stdout.split("    erc:\n", 1)[1]
    assert "enable: true" in erc_block and "beta_low: 0.04" in erc_block and "beta_high: 0.06" in erc_block


@pytest.mark.process
def test_main_rejects_bad_value_before_starting_ray():
    out = subprocess.run(
        [sys.executable, "-m", "verl_erc.main", *ERC_ON, "actor_rollout_ref.actor.erc.beta_high=-1"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode != 0
    assert "actor_rollout_ref.actor.erc.beta_high must be >= 0" in out.stderr
    assert "ray init kwargs" not in out.stdout  # failed before verl started Ray


@pytest.mark.process
def test_plugin_loads_through_verl_entry_point():
    out = subprocess.run([sys.executable, "-m", "verl_erc", "--check"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["loaded_by_entry_point"] and report["policy_losses"] == ["gppo"]
    assert report["erc_trainer_modes"] == ["colocate_async", "separate_async", "sync"]
    assert report["entropy_hook_engines"] and report["failed_registrations"] == {}


@pytest.mark.process
def test_check_fails_naming_a_registration_that_failed(tmp_path):
    """A process where one registration fails (here the engine module cannot be imported, as when verl renames the
    registry it uses): --check exits 1 and names it, though verl loaded the plugin."""
    (tmp_path / "sitecustomize.py").write_text('import sys\nsys.modules["verl_erc.hooks.engine"] = None\n')
    out = subprocess.run([sys.executable, "-m", "verl_erc", "--check"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 1, out.stdout + out.stderr[-2000:]
    assert "NOT READY: missing: the entropy hook in verl's FSDP engine; failed after verl.workers.engine:" in out.stderr
