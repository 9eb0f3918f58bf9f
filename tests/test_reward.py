"""The paper's reward (verl_erc/reward.py): math-verify on the last \\boxed{}, through verl's scorer
and verl's DAPO reward manager as the recipes configure it."""

import threading
import time

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from verl_erc.reward import compute_score, last_boxed

# verl's math-verify pool spawns processes that import verl: slow the first time on small machines
WARM_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def score():
    assert compute_score("aime24", "so the answer is \\boxed{1}", "1", timeout=WARM_TIMEOUT) == 1.0

    def check(solution, truth):
        return compute_score("aime24", solution, truth, timeout=WARM_TIMEOUT)

    return check


def test_last_boxed():
    assert last_boxed("a \\boxed{1} then \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{\\{1, 2\\}}") == "\\{1, 2\\}"
    assert last_boxed("the answer is \\boxed 5") == "5"
    assert last_boxed("no box at all") is None
    assert last_boxed("unclosed \\boxed{3") is None
    assert last_boxed("\\fbox{3}") is None


@pytest.mark.parametrize(
    "solution, truth",
    [
        ("<think>...</think> The answer is $\\boxed{\\frac{1}{2}}$.", "0.5"),
        ("\\boxed{0.5}", "\\frac12"),
        ("\\boxed{1/2}", "\\frac{1}{2}"),
        ("\\boxed{\\dfrac{3}{4}}", "0.75"),
        ("\\boxed{5\\text{ cm}}", "5"),
        ("\\boxed{90^\\circ}", "90"),
        ("\\boxed{(1,2]}", "(1, 2]"),
        ("\\boxed{-3, 3}", "3, -3"),
        ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
        ("\\boxed{x = 3}", "3"),
        ("\\boxed{030}", "30"),
        ("first \\boxed{3}, but wait: \\boxed{4}", "4"),
    ],
)
def test_equivalent_forms_score_1(score, solution, truth):
    assert score(solution, truth) == 1.0


@pytest.mark.parametrize(
    "solution, truth",
    [
        ("\\boxed{(1,2)}", "(1, 2]"),  # open vs half-open interval
        ("\\boxed{0.51}", "\\frac12"),
        ("the answer is 4", "4"),  # no box
        ("\\boxed{4}, but wait: \\boxed{3}", "4"),  # only the last box counts
        ("\\boxed{qwe!!}", "4"),  # garbage
        ("\\boxed{}", "4"),
        ("\\boxed{4", "4"),  # never closed
    ],
)
def test_wrong_missing_or_garbage_score_0(score, solution, truth):
    assert score(solution, truth) == 0.0


def test_pathological_answer_times_out_without_hanging_the_caller(score):
    """A power tower that sympy cannot settle: the caller (a reward worker thread, as in verl's
    reward loop) gets 0 after ``timeout`` and the scorer keeps working."""
    result, elapsed = {}, {}

    def worker():
        start = time.monotonic()
        result["score"] = compute_score("aime24", "\\boxed{9^{9^{9^{9}}}}", "1", timeout=2.0)
        elapsed["s"] = time.monotonic() - start

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "compute_score hung"
    assert result["score"] == 0.0 and elapsed["s"] < 10
    assert score("\\boxed{\\frac{2}{4}}", "0.5") == 1.0


class CharTokenizer:
    """One token per character (token id = code point): enough for verl's reward managers."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(int(i)) for i in ids)


def dapo_manager(config_name: str = "erc_dapo_7b"):
    from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
    from verl.trainer.ppo.reward import get_custom_reward_fn

    with initialize_config_module(config_module="verl_erc.hydra_conf", version_base=None):
        cfg = compose(config_name=config_name, overrides=["actor_rollout_ref.model.path=/m", "data.train_files=/t",
                                                           "data.val_files=/v"])
    fn = get_custom_reward_fn(cfg)
    fn.keywords["timeout"] = WARM_TIMEOUT  # patient with a cold scorer pool; the recipes keep the default
    manager_cls = get_reward_manager_cls(cfg.reward.reward_manager.name)
    return manager_cls(cfg, CharTokenizer(), fn)


def run_single(manager, response: str, truth: str) -> dict:
    from verl import DataProto

    prompt = torch.tensor([[ord("Q")] * 4])
    ids = torch.tensor([[ord(c) for c in response]])
    data = DataProto.from_dict(
        tensors={"prompts": prompt, "responses": ids, "attention_mask": torch.ones(1, 4 + ids.shape[1], dtype=torch.long)},
        non_tensors={"data_source": np.array(["aime24"], dtype=object),
                     "reward_model": np.array([{"ground_truth": truth}], dtype=object)},
    )
    return manager.loop.run_until_complete(manager.run_single(data))


def test_through_verl_dapo_reward_manager_as_configured(score):
    manager = dapo_manager()
    right = run_single(manager, "so \\boxed{\\frac{1}{2}}", "0.5")
    assert right["reward_score"] == 1.0 and right["reward_extra_info"]["acc"] == 1.0
    assert run_single(manager, "so \\boxed{7}", "0.5")["reward_score"] == 0.0
    # DAPO's overlong shaping as our recipes set it: 16384-token budget, 4096-token buffer
    long = "x" * (16384 - 4096 + 1024) + "\\boxed{\\frac{1}{2}}"
    out = run_single(manager, long, "0.5")
    exceed = len(long) - (16384 - 4096)
    assert out["reward_score"] == pytest.approx(1.0 - exceed / 4096)
    assert out["reward_extra_info"]["overlong"]


def test_the_official_reward_through_verls_dapo_manager_as_the_official_variants_configure_it(score):
    """+1 right, -1 wrong, -0.5 without </think> (whatever the answer); only what follows the last </think> is
    graded; acc, DAPO's filter metric, is 1 for a right answer only; no overlong penalty."""
    manager = dapo_manager("erc_dapo_7b_official")
    cases = [("I think </think> so \\boxed{\\frac{1}{2}}", 1.0, 1.0), ("hmm </think> \\boxed{7}", -1.0, 0.0),
             ("\\boxed{\\frac{1}{2}} without closing the thought", -0.5, 0.0),
             ("\\boxed{\\frac{1}{2}} </think> then \\boxed{3}", -1.0, 0.0),
             ("x" * 20000 + " </think> \\boxed{0.5}", 1.0, 1.0)]
    for response, reward, acc in cases:
        out = run_single(manager, response, "0.5")
        assert (out["reward_score"], out["reward_extra_info"]["acc"]) == (reward, acc), response[-40:]
        assert "overlong_reward" not in out["reward_extra_info"]
