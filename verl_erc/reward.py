"""The paper's reward: math-verify on the content of the last ``\\boxed{}`` of a response.

Used through verl's reward managers as a custom reward function
(``reward.custom_reward_function.path=pkg://verl_erc.reward``, ``name=compute_score``).
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
