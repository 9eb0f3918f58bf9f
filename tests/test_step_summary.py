"""The per-step summary line the ERC trainers print (verl_erc.trainer.step_summary)."""

from verl_erc.trainer import step_summary


def test_summary_has_reward_entropy_and_both_clip_fractions_in_order():
    metrics = {
        "actor/erc_clipfrac": 0.25,
        "critic/score/mean": 0.5,
        "actor/entropy": 1.23456,
        "actor/pg_clipfrac": 0.0625,
        "actor/erc_clipfrac_high": 0.125,
        "actor/erc_clipfrac_low": 0.125,
        "timing_s/step": 3.94,
        "val-core/digits/acc/mean@1": 0.75,
        "actor/pg_loss": -0.1,  # not in the summary
    }
    assert step_summary(metrics, 3, 20) == (
        "verl_erc step 3/20 | reward 0.500 | entropy 1.235 | pg_clipfrac 0.0625 | erc_clipfrac 0.2500 | "
        "high 0.1250 | low 0.1250 | step_s 3.9 | val-core/digits/acc/mean@1 0.750"
    )


def test_keys_a_step_did_not_log_are_left_out():
    line = step_summary({"critic/score/mean": 0.1, "actor/pg_clipfrac": 0.0}, 1, 2)
    assert line == "verl_erc step 1/2 | reward 0.100 | pg_clipfrac 0.0000"
