"""The paper's reward: math-verify on the content of the last ``\\boxed{}`` of a response; and the official code's.

Used through verl's reward managers as a custom reward function
(``reward.custom_reward_function.path=pkg://verl_erc.reward``, ``name=compute_score``; the official recipes'
variants: ``name=compute_score_official``).
Extraction reuses verl's ``last_boxed_only_string``; checking reuses verl's math-verify scorer
(``verl.utils.reward_score.math_verify``), which runs math-verify in a spawned process pool
where its signal-based timeouts work, and gives up on a call after ``timeout`` seconds: a
pathological answer costs 0 reward, never a hung reward worker.
"""

from __future__ import annotations

from verl.utils.reward_score import math_verify
from verl.utils.reward_score.math_reward import last_boxed_only_string, remove_boxed

#: seconds before a single check is abandoned (scored 0)
DEFAULT_TIMEOUT = 30.0


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\boxed x``) in ``text``, by verl's extraction;
    None if there is none or its braces never close."""
    boxed = last_boxed_only_string(text)
    if boxed is None:
        return None
    try:
        return remove_boxed(boxed).strip()
    except AssertionError:  # an \fbox{...}, which verl finds but cannot unwrap
        return None


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    **kwargs,
) -> float:
    """1.0 if the last boxed answer of ``solution_str`` equals ``ground_truth`` under math-verify,
    else 0.0 (no box, unparsable, wrong, or checking took longer than ``timeout`` seconds)."""
    answer = last_boxed(solution_str)
    if not answer:
        return 0.0
    return float(math_verify.compute_score("\\boxed{" + answer + "}", ground_truth, timeout_score=0.0, timeout=timeout))


#: the official ERC code's scores (Kwai-Klear/ERC, verl/utils/reward_score/reward_config.py)
OFFICIAL_CORRECT, OFFICIAL_INCORRECT, OFFICIAL_NO_THINK_END = 1.0, -1.0, -0.5
#: where a reasoning model's thinking ends: the official reward grades only what follows it
THINK_END = "</think>"


def compute_score_official(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    **kwargs,
) -> dict:
    """The official ERC recipes' reward (its ``math_dapo.compute_score(is_longcot=True, is_use_math_verify=True)``):
    -0.5 when the response has no ``</think>``; otherwise the text after its last ``</think>`` graded, +1 correct,
    -1 wrong. ``acc`` (DAPO's filter metric) is 1 for a correct answer only. Grading is :func:`compute_score` on that
    text (math-verify on its last ``\\boxed{}``, the paper's rule; the official grader parses the whole text after
    ``</think>`` with math-verify)."""
    if THINK_END not in solution_str:
        return {"score": OFFICIAL_NO_THINK_END, "acc": 0.0}
    correct = compute_score(data_source, solution_str.split(THINK_END)[-1], ground_truth, extra_info, timeout) == 1.0
    return {"score": OFFICIAL_CORRECT if correct else OFFICIAL_INCORRECT, "acc": float(correct)}
