"""Which checkpoint ``python -m verl_erc.export`` takes, and what it refuses, on checkpoint folders as verl lays
them out. The merge and the load-and-generate check run on a real run's checkpoint in test_rehearsals.py."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from helpers import save_step

from verl_erc.export import ExportError, actor_folder, main


def test_exports_the_newest_complete_checkpoint_by_default_and_a_given_step_when_asked(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints"
    save_step(ckpt, 2)
    save_step(ckpt, 4)
    save_step(ckpt, 6, complete=False)  # killed while saving step 6
    assert actor_folder(tmp_path / "run", None) == ckpt / "global_step_4" / "actor"
    assert actor_folder(tmp_path / "run", 2) == ckpt / "global_step_2" / "actor"
    with pytest.raises(ExportError, match=r"global_step_6 is incomplete .*complete checkpoints: \[2, 4\]"):
        actor_folder(tmp_path / "run", 6)
    with pytest.raises(ExportError, match=r"global_step_9 does not exist"):
        actor_folder(tmp_path / "run", 9)


def test_reads_the_checkpoint_folder_from_the_runs_config(tmp_path):
    """trainer.default_local_dir may point outside the run directory (a scratch file system)."""
    run, scratch = tmp_path / "run", tmp_path / "scratch" / "ckpt"
    run.mkdir()
    OmegaConf.save(OmegaConf.create({"trainer": {"default_local_dir": str(scratch)}}), run / "config.yaml")
    save_step(scratch, 3)
    assert actor_folder(run, None) == scratch / "global_step_3" / "actor"


def test_a_run_without_a_complete_checkpoint_is_refused_naming_save_freq(tmp_path):
    save_step(tmp_path / "run" / "checkpoints", 1, complete=False)
    with pytest.raises(ExportError, match=r"holds no complete checkpoint.*trainer.save_freq"):
        actor_folder(tmp_path / "run", None)


def test_refuses_to_write_into_a_folder_that_holds_files(tmp_path, capsys):
    save_step(tmp_path / "run" / "checkpoints", 2)
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("{}")
    assert main([str(tmp_path / "run"), "--out", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["config.json"]  # nothing merged into it
    with pytest.raises(SystemExit):
        main([str(tmp_path / "run")])  # --out is required unless --which
    assert main([str(tmp_path / "run"), "--which"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "run" / "checkpoints" / "global_step_2" / "actor")
