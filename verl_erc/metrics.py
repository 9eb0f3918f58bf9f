"""Names of training metrics verl-erc logs beside verl's, read elsewhere (the step line, compare, tests).

A module of its own, importing nothing, so the trainer wiring (loaded while verl imports) and
``python -m verl_erc.compare`` (which never imports verl) can name them.
"""

#: prompts dispatched for the step (its batch and every refill), logged every step of a bounded DAPO run
GENERATED_PROMPTS = "training/filter_groups/generated_prompts"
#: prompts the step's batch was short of when the bound was reached (the step trained on fewer)
SHORT_BY_PROMPTS = "training/filter_groups/short_by_prompts"
#: prompt groups that survived DAPO's filter in the step (at most the batch when verl's sampling filled it)
KEPT_PROMPTS = "training/filter_groups/kept_prompts"
#: prompt groups the step trained on
TRAINED_PROMPTS = "training/filter_groups/trained_prompts"
#: the filter metric (the recipes: ``acc``, math-verify's 0/1) averaged over every response the step generated,
#: kept or dropped by DAPO's filter; verl's ``critic/score/mean`` is over the kept groups only
ALL_GENERATED = "training/filter_groups/all_generated_mean"

#: on the step's first mini-batch (theta = theta_old), the largest |old_log_prob - log_prob| and |H_old - H_new| over its
#: response tokens: 0 when the old pass and the update computed alike (erc.old_pass=aligned), so clipping is drift only
ONPOLICY_LOGPROB_MAXDIFF = "actor/erc_onpolicy_logprob_maxdiff"
ONPOLICY_ENTROPY_MAXDIFF = "actor/erc_onpolicy_entropy_maxdiff"
