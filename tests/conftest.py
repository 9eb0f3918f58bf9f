"""Shared test helpers: actor configs for the loss tests, the rehearsals' asset cache (no GPU, no hub)."""

import pytest
from verl.workers.config import PolicyLossConfig

import verl_erc.plugin  # noqa: F401  (registers gppo etc. even if the entry point is disabled)
from verl_erc.config import ErcConfig, ErcFSDPActorConfig


def make_actor_config(loss_mode: str = "vanilla", erc: bool | ErcConfig = True, **overrides) -> ErcFSDPActorConfig:
    """An actor config as the workers get it, for calling losses directly (``erc``: on/off with the paper's band, or a config)."""
    policy_loss = PolicyLossConfig(loss_mode=loss_mode, dro_beta=0.1 if loss_mode == "dro" else None)
    kwargs = dict(
        strategy="fsdp2",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=1,
        clip_ratio_low=0.2,
        clip_ratio_high=0.28,
        policy_loss=policy_loss,
        erc=erc if isinstance(erc, ErcConfig) else ErcConfig(enable=erc, beta_low=0.05, beta_high=0.05),
    )
    kwargs.update(overrides)
    return ErcFSDPActorConfig(**kwargs)


@pytest.fixture
def actor_config():
    return make_actor_config


@pytest.fixture(scope="session")
def rehearsal_cache(tmp_path_factory):
    """A cache with the rehearsals' model and data, built once per session; ``VERL_ERC_CACHE_DIR`` points at it."""
    import os

    from verl_erc.laptop import assets

    cache = tmp_path_factory.mktemp("verl_erc_cache")
    previous = os.environ.get(assets.CACHE_ENV)
    os.environ[assets.CACHE_ENV] = str(cache)
    assets.ensure_assets()
    yield cache
    if previous is None:
        os.environ.pop(assets.CACHE_ENV, None)
    else:
        os.environ[assets.CACHE_ENV] = previous


def pytest_terminal_summary(terminalreporter):
    """Seconds per test file (setup, call and teardown of its tests, summed), slowest first: where CI's time goes.
    Files whose tests overlap (background runs started by one test and read by later ones) count at the test
    that waited."""
    totals: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) in ("setup", "call", "teardown"):
                path = report.nodeid.split("::", 1)[0]
                totals[path] = totals.get(path, 0.0) + report.duration
    if totals:
        terminalreporter.write_sep("=", "seconds per test file")
        for path, seconds in sorted(totals.items(), key=lambda item: -item[1]):
            terminalreporter.write_line(f"{seconds:8.1f}  {path}")
        terminalreporter.write_line(f"{sum(totals.values()):8.1f}  total")
