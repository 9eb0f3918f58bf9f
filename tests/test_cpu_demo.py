"""``python -m verl_erc.laptop.demo``: its commands and its argument checks (the runs: test_rehearsals.py)."""

import sys
from pathlib import Path

import pytest

from verl_erc.laptop import demo

ROOT = Path(__file__).resolve().parents[1]


def test_each_run_is_a_rehearsal_of_a_paper_recipe_with_the_overrides_last():
    cmd = demo.rehearsal_command("erc_dapo_7b", ["trainer.total_training_steps=3"])
    assert cmd == [sys.executable, "-m", "verl_erc.recipes", "rehearse", "erc_dapo_7b", "trainer.total_training_steps=3"]
    # what recipes/rehearse.sh runs
    assert 'verl_erc.recipes rehearse "$@"' in (ROOT / "recipes" / "rehearse.sh").read_text()


def test_runs_are_named_so_that_compare_pairs_them():
    from verl_erc.report.grouping import group_runs, pair_runs

    assert demo.plan_runs(None) == [("dapo_7b", 1), ("erc_dapo_7b", 1)]
    names = [f"{recipe}-seed{seed}" for recipe, seed in demo.plan_runs([1, 2])]
    assert names == ["dapo_7b-seed1", "erc_dapo_7b-seed1", "dapo_7b-seed2", "erc_dapo_7b-seed2"]
    groups = group_runs(names, [])
    assert groups == {"dapo_7b": {1: "dapo_7b-seed1", 2: "dapo_7b-seed2"},
                      "erc_dapo_7b": {1: "erc_dapo_7b-seed1", 2: "erc_dapo_7b-seed2"}}
    assert pair_runs(list(groups), []) == {"erc_dapo_7b": "dapo_7b"}


@pytest.mark.process
def test_a_run_goes_through_the_recipe_launcher_into_out(tmp_path, rehearsal_cache, monkeypatch, capsys):
    monkeypatch.setenv("VERL_ERC_DRY_RUN", "1")  # the launcher prints its command and stops
    run_dir = demo.run_one("erc_dapo_7b", 2, tmp_path, ["trainer.total_training_steps=3"])
    assert run_dir == tmp_path / "erc_dapo_7b-seed2"
    log = (tmp_path / "logs" / "erc_dapo_7b-seed2.log").read_text()
    command = next(line for line in log.splitlines() if line.startswith("command: ")).split()
    assert command[2:6] == ["-m", "verl_erc.main", "--config-name", "erc_dapo_7b"]
    assert f"trainer.default_local_dir={run_dir}/checkpoints" in command
    assert command[-2:] == ["+rehearsal=laptop", "trainer.total_training_steps=3"]


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


def test_a_repeated_seed_is_refused_before_anything_is_created(tmp_path, capsys):
    with pytest.raises(SystemExit):
        demo.main(["--out", str(tmp_path / "new"), "--seeds", "1", "1"])
    assert "each seed once" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
