"""Fixtures, and the test tiers (pytest.ini's markers).

Tiers, from fast to slow: ``unit`` (every test not marked otherwise: pure Python in this process, no process
started, which :func:`pytest_runtest_protocol` enforces), ``process`` (starts real processes: child
interpreters, gloo ranks, a vLLM engine, the launch scripts), ``cpu_e2e`` (verl's V1 trainer end to end on CPU)
and ``slurm`` (needs Debian's slurm-wlm). ``pytest -m unit`` runs the first tier in a few minutes.
"""

import os
import subprocess

import pytest
from helpers import make_actor_config

#: the markers of the tiers above ``unit`` (a test with none of them is a unit test)
SLOW_TIERS = ("process", "cpu_e2e", "slurm", "gpu_resolve")


def pytest_collection_modifyitems(items):
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in SLOW_TIERS):
            item.add_marker(pytest.mark.unit)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A unit test that starts a process fails, naming the marker it needs; its fixtures, module- and
    session-scoped ones included, are held to the same rule (they are set up inside this wrapper)."""
    if item.get_closest_marker("unit") is None:
        yield
        return
    start = subprocess.Popen.__init__

    def refuse(self, args, *rest, **kwargs):
        if list(args)[:1] == ["git"]:  # the run's identity reads the source tree's commit (milliseconds)
            return start(self, args, *rest, **kwargs)
        raise AssertionError(f"a unit test started a process ({args!r}): mark it @pytest.mark.process")

    subprocess.Popen.__init__ = refuse
    try:
        yield
    finally:
        subprocess.Popen.__init__ = start


@pytest.fixture(autouse=True)
def environment_stays_in_its_test():
    """Each test leaves ``os.environ`` as it found it (the launch's preflight sets ``VERL_PLATFORM`` and a private
    Ray's token and vLLM key in-process: :mod:`verl_erc.run.preflight`), and starts without those secrets."""
    before = dict(os.environ)
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "VLLM_API_KEY"):
        os.environ.pop(name, None)
    yield
    os.environ.clear()
    os.environ.update(before)


@pytest.fixture
def actor_config():
    return make_actor_config


@pytest.fixture
def record_verl_init(monkeypatch):
    """Replace verl's PPOTrainer.__init__ by a recorder (no Ray, no TransferQueue)."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    def init(self, config):
        self.config = self.seen_config = config

    monkeypatch.setattr(PPOTrainer, "__init__", init)


@pytest.fixture(scope="session")
def rehearsal_cache(request, tmp_path_factory):
    """A cache with the rehearsals' model and data; ``VERL_ERC_CACHE_DIR`` points at it. Kept between sessions in
    pytest's cache folder (``.pytest_cache/d/verl_erc_assets``, the toy's warm-up costs ~25 s): the assets are a
    function of ``verl_erc.laptop``'s code under its ``ASSET_VERSION``, and test_assets_build_deterministically
    rebuilds them and fails if the kept ones differ."""
    import os

    from verl_erc.laptop import assets

    kept = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    cache = kept.mkdir("verl_erc_assets") if kept is not None else tmp_path_factory.mktemp("verl_erc_cache")
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
