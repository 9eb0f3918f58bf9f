"""``python -m verl_erc.cpu.demo``: its commands and its argument checks (the runs: test_cpu_e2e.py)."""

import sys
from pathlib import Path

import pytest

from verl_erc.cpu import demo


def test_each_run_writes_its_metrics_and_checkpoints_under_out_and_overrides_come_last(tmp_path):
    cmd = demo.run_command("cpu_demo", "erc_dapo", tmp_path, ["trainer.total_training_steps=3"])
    assert cmd[:5] == [sys.executable, "-m", "verl_erc.main", "--config-name", "cpu_demo"]
    assert f"trainer.default_local_dir={tmp_path / 'erc_dapo' / 'checkpoints'}" in cmd
    assert f"+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={tmp_path / 'erc_dapo.jsonl'}" in cmd
    assert cmd[-1] == "trainer.total_training_steps=3"


def test_runs_are_named_so_that_compare_pairs_them():
    from verl_erc.compare import pair_runs

    names = [experiment for _, experiment in demo.RUNS]
    assert pair_runs(names, []) == {"erc_dapo": "dapo"}
    assert [config for config, _ in demo.RUNS] == ["cpu_demo_baseline", "cpu_demo"]


def test_an_existing_out_directory_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "exists" in capsys.readouterr().err


def test_an_unknown_option_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        demo.main(["--out", str(tmp_path / "new"), "--steps=3"])
    assert "key=value" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_seeds_run_both_configs_per_seed_named_for_seed_groups():
    from verl_erc.compare import group_runs, pair_runs

    runs = demo.plan_runs([1, 2], ["trainer.total_training_steps=3"])
    assert [(config, name) for config, name, _ in runs] == [
        ("cpu_demo_baseline", "dapo-seed1"), ("cpu_demo", "erc_dapo-seed1"),
        ("cpu_demo_baseline", "dapo-seed2"), ("cpu_demo", "erc_dapo-seed2"),
    ]
    assert runs[2][2] == ["data.seed=2", "actor_rollout_ref.rollout.seed=2", "trainer.total_training_steps=3"]
    groups = group_runs([name for _, name, _ in runs], [])
    assert groups == {"dapo": {1: "dapo-seed1", 2: "dapo-seed2"}, "erc_dapo": {1: "erc_dapo-seed1", 2: "erc_dapo-seed2"}}
    assert pair_runs(list(groups), []) == {"erc_dapo": "dapo"}
    assert demo.plan_runs(None, []) == [("cpu_demo_baseline", "dapo", []), ("cpu_demo", "erc_dapo", [])]


def test_a_repeated_seed_is_refused_before_anything_is_created(tmp_path, capsys):
    with pytest.raises(SystemExit):
        demo.main(["--out", str(tmp_path / "new"), "--seeds", "1", "1"])
    assert "each seed once" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
