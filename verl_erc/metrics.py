"""The names of the training metrics verl-erc reads or logs: verl's, and verl-erc's beside them.

One module, importing nothing, so that the losses, the trainer's step line (loaded while verl imports) and
``python -m verl_erc.compare`` (which never imports verl) name each metric once.
"""

# --- verl's (logged by its V1 trainer, read by the step line and compare) ------------------------------
#: the training reward over the groups DAPO's filter kept
SCORE = "critic/score/mean"
RESPONSE_LENGTH = "response_length/mean"
#: the share of responses cut at max_response_length
RESPONSE_AT_LIMIT = "response_length/clip_ratio"
#: groups DAPO's filter dropped in the step
EVICTED = "training/filter_groups/evicted_samples"
#: the old policy's entropy (verl's old-log-prob pass)
ENTROPY = "actor/entropy"
PG_CLIPFRAC = "actor/pg_clipfrac"
PPO_KL = "actor/ppo_kl"
#: the gradient norm before clipping
GRAD_NORM = "actor/grad_norm"
STEP_TIME = "timing_s/step"
#: verl's validation: val-core/<data_source>/<acc|reward>/mean@<n> (and best@k, std)
VAL_CORE_PREFIX = "val-core/"

# --- verl-erc's: ERC (verl_erc.erc.losses) ----------------------------------------------------------
ERC_CLIPFRAC = "actor/erc_clipfrac"
ERC_CLIPFRAC_HIGH = "actor/erc_clipfrac_high"
ERC_CLIPFRAC_LOW = "actor/erc_clipfrac_low"
#: ERC's clip fraction on the step's first mini-batch (theta = theta_old): numerics only
ERC_CLIPFRAC_ONPOLICY = "actor/erc_clipfrac_onpolicy"
ERC_KEPT_BY_ATOL = "actor/erc_kept_by_atol"
ERC_ENTROPY_CLAMPED = "actor/erc_entropy_clamped"
ERC_RATIO_MEAN = "actor/erc_ratio_mean"
ERC_RATIO_CLIPPED_MEAN = "actor/erc_ratio_clipped_mean"
ERC_RATIO_MIN = "actor/erc_ratio_min"
ERC_RATIO_MAX = "actor/erc_ratio_max"
#: on the step's first mini-batch (theta = theta_old), the largest |old_log_prob - log_prob| and |H_old - H_new| over its
#: response tokens: 0 when the old pass and the update computed alike (erc.old_pass=aligned), so clipping is drift only
ONPOLICY_LOGPROB_MAXDIFF = "actor/erc_onpolicy_logprob_maxdiff"
ONPOLICY_ENTROPY_MAXDIFF = "actor/erc_onpolicy_entropy_maxdiff"
#: the official code's positive-sample NLL term, per micro-batch (positive_nll_coef > 0)
POSITIVE_NLL = "actor/positive_nll"

# --- verl-erc's: the replay buffer (verl_erc.sampler) -------------------------------------------------
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
