"""The per-step summary line the ERC trainers print (verl_erc.hooks.trainer.step_summary)."""

from verl_erc.hooks.trainer import step_summary


def test_summary_has_reward_lengths_dynamic_sampling_entropy_and_both_clip_fractions_in_order():
    metrics = {
        "actor/erc_clipfrac": 0.25,
        "critic/score/mean": 0.5,
        "actor/entropy": 1.23456,
        "actor/pg_clipfrac": 0.0625,
        "actor/erc_clipfrac_high": 0.125,
        "actor/erc_clipfrac_low": 0.125,
        "actor/erc_clipfrac_onpolicy": 0.0,
        "actor/erc_onpolicy_logprob_maxdiff": 0.0,
        "actor/erc_onpolicy_entropy_maxdiff": 0.0001234,
        "timing_s/step": 3.94,
        "response_length/mean": 17.25,
        "response_length/clip_ratio": 0.125,
        "training/filter_groups/evicted_samples": 6.0,
        "training/filter_groups/all_generated_mean": 0.3125,
        "val-core/aime24/acc/mean@32": 0.75,
        "val-core/aime24/acc/best@32/mean": 1.0,  # verl's best@k is not in the summary
        "actor/pg_loss": -0.1,  # not in the summary
    }
    assert step_summary(metrics, 3, 20) == (
        "verl_erc step 3/20 | reward 0.500 | acc_all 0.312 | resp_len 17.2 | at_limit 0.125 | groups_dropped 6 | entropy 1.235 | "
        "pg_clipfrac 0.0625 | erc_clipfrac 0.2500 | onpolicy 0.0000 | dlogp0 0 | dH0 0.000123 | high 0.1250 | low 0.1250 | step_s 3.9 | val-core/aime24/acc/mean@32 0.750"
    )


def test_keys_a_step_did_not_log_are_left_out():
    line = step_summary({"critic/score/mean": 0.1, "actor/pg_clipfrac": 0.0}, 1, 2)
    assert line == "verl_erc step 1/2 | reward 0.100 | pg_clipfrac 0.0000"
