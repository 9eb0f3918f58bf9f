"""Stop requests: the driver's signal handling, the trainer's stop after a step, and which trainer class runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from omegaconf import OmegaConf
from verl.trainer.ppo.v1 import PPOTrainerSync, get_trainer_cls

from verl_erc.run.checkpoints import is_complete
from verl_erc.run.preflight import choose_ray_address
from verl_erc.run.preemption import STOP_FILE_ENV, StopOnRequestMixin, stop_reason
from verl_erc.hooks.trainer import ErcTrainerMixin

from helpers import compose_erc


class VerlLoop:
    """What StopOnRequestMixin sees of verl's trainer: the step counters, the config, the save."""

    def __init__(self, checkpoint_dir, save_freq=20):
        self.config = OmegaConf.create({"trainer": {"default_local_dir": str(checkpoint_dir), "save_freq": save_freq}})
        self.global_steps, self.total_training_steps, self.saved = 3, 10, []

    def on_step_end(self):
        pass

    def _save_checkpoint(self):
        folder = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")
        os.makedirs(os.path.join(folder, "actor"))
        torch.save({}, os.path.join(folder, "data.pt"))
        self.saved.append(self.global_steps)


class Trainer(StopOnRequestMixin, VerlLoop):
    pass


def test_a_stop_request_saves_the_step_and_makes_it_the_last(tmp_path, monkeypatch, capsys):
    stop = tmp_path / "stop_requested"
    monkeypatch.setenv(STOP_FILE_ENV, str(stop))
    trainer = Trainer(tmp_path / "checkpoints")
    trainer.on_step_end()
    assert (trainer.saved, trainer.total_training_steps) == ([], 10)  # no request: verl's loop, untouched
    stop.write_text("SIGUSR1 to the driver (pid 1)")
    trainer.on_step_end()
    assert trainer.saved == [3] and trainer.total_training_steps == 3 and is_complete(tmp_path / "checkpoints" / "global_step_3")
    assert "stop requested (SIGUSR1 to the driver (pid 1)): stopping after step 3" in capsys.readouterr().out
    trainer.global_steps, trainer.total_training_steps = 4, 10  # a step verl just saved itself is not saved twice
    trainer._save_checkpoint()
    trainer.on_step_end()
    assert trainer.saved == [3, 4] and trainer.total_training_steps == 4


def test_with_checkpointing_off_a_stop_request_stops_without_saving(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(STOP_FILE_ENV, str(tmp_path / "stop"))
    (tmp_path / "stop").write_text("SIGTERM")
    trainer = Trainer(tmp_path / "checkpoints", save_freq=-1)
    trainer.on_step_end()
    assert trainer.saved == [] and trainer.total_training_steps == 3
    assert "no checkpoint (trainer.save_freq <= 0)" in capsys.readouterr().out


def test_erc_off_is_verls_class_unless_verl_erc_main_launched_it(monkeypatch, record_verl_init):  # noqa: F811
    config = compose_erc()
    monkeypatch.delenv(STOP_FILE_ENV, raising=False)
    assert type(get_trainer_cls("sync")(config=config)) is PPOTrainerSync
    monkeypatch.setenv(STOP_FILE_ENV, "/run/stop")
    trainer = get_trainer_cls("sync")(config=config)
    assert type(trainer).__mro__[1:] == (StopOnRequestMixin, *PPOTrainerSync.__mro__)  # verl's class plus the stop only
    assert not isinstance(trainer, ErcTrainerMixin)
    erc_on = get_trainer_cls("sync")(config=compose_erc(["actor_rollout_ref.actor.erc.enable=true"]))
    assert isinstance(erc_on, StopOnRequestMixin) and isinstance(erc_on, ErcTrainerMixin)


DRIVER = """
import sys, time
from pathlib import Path
from verl_erc.run.preemption import stops_gracefully
stop = Path(sys.argv[1])
try:
    with stops_gracefully(stop):
        print("ready", flush=True)
        while True:
            time.sleep(0.05)
            if stop.exists() and len(sys.argv) > 2:
                print("request:", stop.read_text().strip(), flush=True)
                sys.exit(0)
finally:
    print("cleaned up", flush=True)
"""


@pytest.mark.process
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_the_first_signal_asks_the_run_to_stop(tmp_path, sig):
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(DRIVER), str(tmp_path / "stop"), "report"],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(sig)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0 and f"request: {sig.name} to the driver (pid {child.pid})" in out and "cleaned up" in out
    assert stop_reason(tmp_path / "stop") == f"{sig.name} to the driver (pid {child.pid})"


@pytest.mark.process
def test_a_second_signal_stops_at_once_and_the_clean_up_still_runs(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(DRIVER), str(tmp_path / "stop")],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGTERM)
    while not (tmp_path / "stop").exists():
        pass
    child.send_signal(signal.SIGTERM)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 128 + signal.SIGTERM and "cleaned up" in out and "stopping now" in out


@pytest.mark.parametrize(
    "address, ray_address_env, used",
    [(None, "10.0.0.1:6379", "local"), (None, None, "local"), ("auto", None, "auto"), ("10.0.0.1:6379", None, "10.0.0.1:6379")],
)
def test_a_run_starts_its_own_ray_unless_an_address_is_given(monkeypatch, capsys, address, ray_address_env, used):
    if ray_address_env:
        monkeypatch.setenv("RAY_ADDRESS", ray_address_env)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = OmegaConf.create({"ray_kwargs": {"ray_init": {"address": address}}})
    choose_ray_address(config)
    out = capsys.readouterr().out
    assert config.ray_kwargs.ray_init.address == used and f"(ray_kwargs.ray_init.address={used})" in out
    assert ("ignoring RAY_ADDRESS=10.0.0.1:6379" in out) == bool(ray_address_env)
