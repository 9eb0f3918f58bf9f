"""ERC inside verl's own trainer modes: same names, verl's class when ERC is off, and no silent ERC-off."""

from functools import partial

import pytest
from verl.trainer.ppo.v1 import PPOTrainerColocateAsync, PPOTrainerSeparateAsync, PPOTrainerSync, get_trainer_cls
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
from verl.workers.utils.losses import ppo_loss

from verl_erc.config import ErcConfig, ErcConfigError
from verl_erc.hooks.engine import ErcFSDPEngineWithLMHead
from verl_erc.hooks.entropy_hook import ERC_CHUNK_SIZE_KEY, ERC_ENTROPY_FLAG
from verl_erc.erc.losses import ErcInputError, erc_ppo_loss
from verl_erc.hooks.trainer import ErcTrainerMixin, erc_trainer_modes

from helpers import compose_erc, make_actor_config

VERL_TRAINERS = {"sync": PPOTrainerSync, "colocate_async": PPOTrainerColocateAsync, "separate_async": PPOTrainerSeparateAsync}
#: what verl's own separate_async trainer asserts before PPOTrainer.__init__
MODE_KEYS = {
    "separate_async": [
        "data.train_batch_size=64", "actor_rollout_ref.actor.ppo_mini_batch_size=16",
        "trainer.v1.separate_async.parameter_sync_step=4", "actor_rollout_ref.rollout.nnodes=1",
        "actor_rollout_ref.rollout.n_gpus_per_node=1", "actor_rollout_ref.rollout.checkpoint_engine.backend=nccl",
    ],
}


def mode_keys(mode: str) -> list[str]:
    return [f"trainer.v1.trainer_mode={mode}", *MODE_KEYS.get(mode, [])]


def test_erc_is_wired_under_verls_own_mode_names():
    assert erc_trainer_modes() == sorted(VERL_TRAINERS)
    for mode, verl_cls in VERL_TRAINERS.items():
        cls = get_trainer_cls(mode)
        assert issubclass(cls, ErcTrainerMixin) and issubclass(cls, verl_cls) and cls._verl_cls is verl_cls
    assert compose_erc().trainer.v1.trainer_mode == "sync"  # our configs keep verl's default mode


@pytest.mark.parametrize("mode", sorted(VERL_TRAINERS))
def test_erc_off_builds_verls_own_trainer(mode, record_verl_init):
    config = compose_erc(mode_keys(mode))
    trainer = get_trainer_cls(mode)(config=config)
    assert type(trainer) is VERL_TRAINERS[mode]  # exactly verl's class: nothing of ours runs
    assert trainer.seen_config is config


@pytest.mark.parametrize("mode", sorted(VERL_TRAINERS))
def test_erc_on_builds_the_erc_subclass_and_validates(mode, record_verl_init):
    config = compose_erc([*mode_keys(mode), "actor_rollout_ref.actor.erc.enable=true"])
    trainer = get_trainer_cls(mode)(config=config)
    assert type(trainer) is get_trainer_cls(mode) and isinstance(trainer, VERL_TRAINERS[mode])
    assert trainer._erc_actor_config.erc.enable
    bad = compose_erc([*mode_keys(mode), "actor_rollout_ref.actor.erc.enable=true", "algorithm.rollout_correction.bypass_mode=true"])
    with pytest.raises(ErcConfigError, match="bypass_mode=true"):
        get_trainer_cls(mode)(config=bad)


def test_engine_refuses_to_train_with_erc_on_and_verls_loss():
    """Any entry point whose trainer did not install ERC's loss (legacy trainer, ...) stops at the first update."""
    engine = object.__new__(ErcFSDPEngineWithLMHead)
    loss = partial(ppo_loss, config=make_actor_config("vanilla", erc=True))
    with pytest.raises(ErcInputError, match="the trainer did not install ERC"):
        engine.forward_backward_batch(data=None, loss_function=loss, forward_only=False)


def test_engine_flags_batches_for_erc_loss_only(monkeypatch):
    """The current entropy is computed exactly when the loss is ERC's (chunk size from its config)."""
    from verl.utils import tensordict_utils as tu

    seen = []
    monkeypatch.setattr(FSDPEngineWithLMHead, "forward_backward_batch", lambda self, data, loss_function, forward_only=False: seen.append(data))
    engine = object.__new__(ErcFSDPEngineWithLMHead)
    erc_on = make_actor_config("gppo", erc=ErcConfig(enable=True, entropy_chunk_size=64))
    for loss, forward_only in [
        (partial(erc_ppo_loss, config=erc_on), False),
        (partial(ppo_loss, config=make_actor_config("vanilla", erc=False)), False),
        (partial(ppo_loss, config=make_actor_config("vanilla", erc=True)), True),  # no update: allowed, no entropy
        (None, True),  # old-log-prob pass
    ]:
        engine.forward_backward_batch(tu.get_tensordict({}, {}), loss, forward_only=forward_only)
    assert [tu.get_non_tensor_data(d, ERC_ENTROPY_FLAG, False) for d in seen] == [True, False, False, False]
    assert tu.get_non_tensor_data(seen[0], ERC_CHUNK_SIZE_KEY, None) == 64


@pytest.mark.parametrize("mode", sorted(VERL_TRAINERS))
def test_the_positive_nll_term_alone_installs_verl_erc_s_loss(mode, record_verl_init):
    """ERC off, positive_nll_coef > 0: the trainer is ours (it installs erc_ppo_loss); coef 0: verl's own."""
    config = compose_erc([*mode_keys(mode), "actor_rollout_ref.actor.positive_nll_coef=0.1"])
    trainer = get_trainer_cls(mode)(config=config)
    assert type(trainer) is get_trainer_cls(mode) and trainer._erc_actor_config.positive_nll_coef == 0.1
    assert not trainer._erc_actor_config.erc.enable
    assert type(get_trainer_cls(mode)(config=compose_erc(mode_keys(mode)))) is VERL_TRAINERS[mode]


def test_engine_refuses_to_train_the_positive_nll_term_with_verls_loss():
    engine = object.__new__(ErcFSDPEngineWithLMHead)
    loss = partial(ppo_loss, config=make_actor_config("vanilla", erc=False, positive_nll_coef=0.1))
    with pytest.raises(ErcInputError, match="positive_nll_coef=0.1 but the actor's loss is"):
        engine.forward_backward_batch(data=None, loss_function=loss, forward_only=False)
