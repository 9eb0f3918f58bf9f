"""One rank of the aligned-old-pass check (run by tests/test_old_pass.py as N gloo ranks, VERL_PLATFORM=cpu).

verl's real ``TrainingWorker`` (the actor's, configured as verl's ``ActorRolloutRefWorker`` configures it) on
the tiny local Qwen2 in bf16, with every Linear's reduction split by the micro-batch's token count (as a GPU
GEMM's kernel choice depends on its shape): ``infer_batch`` as the V1 trainer's old-log-prob pass calls it
(with the trainer's aligned key when ``old_pass=aligned``), the responses cut as the trainer cuts them, then
``train_mini_batch`` with ERC's loss as ``_update_actor`` calls it.

CASES (JSON in the environment): name -> {old_pass, dynamic, shuffle, mini_batches[, sp, dtype, kernel]}, each
on a fresh worker from the same weights (``sp``: Ulysses sequence-parallel size, 1 by default; ``dtype``: bf16 by
default or fp32; ``kernel``: ``shape_keyed`` by default or ``native``, the CPU's own). Rank 0 prints
{name: {"update": {metric: [value per mini-batch]}, "old": {field: [per sequence response values]}, "sp_pads": [...]}}
as its last line: the update's metrics, the old pass's log-probs, entropy and the entropy hook's entropy of the
responses, and the Ulysses pads of the forwards (0 without SP).
"""

import json
import os
from functools import partial

import torch
import verl  # noqa: F401  (loads verl's plugins, verl-erc's among them, as a Ray worker does)
from omegaconf import OmegaConf
from verl.trainer.config import CheckpointConfig
from verl.utils import tensordict_utils as tu
from verl.workers.config import FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig, PolicyLossConfig
from verl.workers.engine_workers import TrainingWorker, TrainingWorkerConfig
from verl.workers.utils.padding import response_from_nested

from verl_erc.config import ErcConfig, ErcFSDPActorConfig
from verl_erc.laptop import assets
from verl_erc.hooks.entropy_hook import ERC_ENTROPY_FLAG
from verl_erc.erc.losses import erc_ppo_loss
from verl_erc.hooks.old_pass import ALIGNED_OLD_PASS_KEY, update_split
from shape_keyed import shape_keyed_linear  # tests/ is on the path (test_old_pass.py)

RANK, WORLD = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
SAMPLES_PER_RANK = 16
UPDATE_TOKENS, INFER_TOKENS = 96, 192  # the recipes' 1:2 (ppo_max_token_len_per_gpu : log_prob_max_token_len_per_gpu)
UPDATE_MICRO, INFER_MICRO = 2, 8  # micro-batch sizes without dynamic batch size
LM_HEAD_SCALE = 3.0  # peaked next-token distributions: entropies from ~0 to a few nats, as in a trained model
METRICS = ["erc_clipfrac", "erc_clipfrac_onpolicy", "erc_onpolicy_logprob_maxdiff", "erc_onpolicy_entropy_maxdiff",
           "ppo_kl", "pg_loss", "grad_norm"]
DTYPES = {"bf16": "bf16", "fp32": "fp32"}
MODEL = str(assets.ensure_assets()["model"])
nested = partial(torch.nested.as_nested_tensor, layout=torch.jagged)


def build_worker(case: dict, mini_batch_size: int) -> TrainingWorker:
    model_config = HFModelConfig(path=MODEL, override_config={"attn_implementation": "sdpa"}, use_remove_padding=True)
    dtype = DTYPES[case.get("dtype", "bf16")]
    engine_config = FSDPEngineConfig(strategy="fsdp2", use_torch_compile=False, ulysses_sequence_parallel_size=case.get("sp", 1),
                                     mixed_precision={"param_dtype": dtype, "reduce_dtype": "fp32", "buffer_dtype": "fp32"})
    # as ActorRolloutRefWorker.init_model assigns them from the actor and rollout configs
    engine_config.use_dynamic_bsz = case["dynamic"]
    engine_config.max_token_len_per_gpu, engine_config.infer_max_token_len_per_gpu = UPDATE_TOKENS, INFER_TOKENS
    engine_config.micro_batch_size_per_gpu, engine_config.infer_micro_batch_size_per_gpu = UPDATE_MICRO, INFER_MICRO
    worker = TrainingWorker(TrainingWorkerConfig(
        model_type="language_model", model_config=model_config, engine_config=engine_config,
        optimizer_config=FSDPOptimizerConfig(lr=1e-3, weight_decay=0.0, total_training_steps=10, lr_warmup_steps=0),
        checkpoint_config=CheckpointConfig()))
    worker.reset()
    with torch.no_grad():
        worker.engine.module.lm_head.weight.mul_(LM_HEAD_SCALE)
    actor = ErcFSDPActorConfig(
        strategy="fsdp2", rollout_n=1, ppo_mini_batch_size=mini_batch_size, ppo_micro_batch_size_per_gpu=UPDATE_MICRO,
        clip_ratio_low=0.2, clip_ratio_high=0.28, shuffle=case["shuffle"], policy_loss=PolicyLossConfig(loss_mode="vanilla"),
        erc=ErcConfig(enable=True, old_pass=case["old_pass"]))
    worker.set_loss_fn(partial(erc_ppo_loss, config=actor))
    return worker


def batch(dp_rank: int, **non_tensor):
    """This data-parallel rank's share of the step's batch, in verl's no-padding layout (every sequence-parallel
    rank of one DP rank gets the same)."""
    g = torch.Generator().manual_seed(1000 + dp_rank)
    vocab = HFModelConfig(path=MODEL).hf_config.vocab_size
    prompt_lens = torch.randint(5, 21, (SAMPLES_PER_RANK,), generator=g).tolist()
    response_lens = torch.randint(3, 25, (SAMPLES_PER_RANK,), generator=g).tolist()
    prompts = [torch.randint(3, vocab, (n,), generator=g) for n in prompt_lens]
    responses = [torch.randint(3, vocab, (n,), generator=g) for n in response_lens]
    response_mask = nested([torch.ones(n, dtype=torch.int64) for n in response_lens])
    return tu.get_tensordict(
        tensor_dict={
            "input_ids": nested([torch.cat([p, r]) for p, r in zip(prompts, responses)]),
            "position_ids": nested([torch.arange(p + r) for p, r in zip(prompt_lens, response_lens)]),
            "prompts": nested(prompts), "responses": nested(responses),
            "response_mask": response_mask, "loss_mask": response_mask,
            "advantages": nested([torch.full((n,), 1.0 if i % 2 else -1.0) for i, n in enumerate(response_lens)]),
        },
        non_tensor_dict={"temperature": 1.0, **non_tensor})


def run(case: dict) -> dict:
    sp = case.get("sp", 1)
    dp_rank = RANK // sp
    mini_batch_size = SAMPLES_PER_RANK * (WORLD // sp) // case["mini_batches"]  # global, as _update_actor passes it
    torch.nn.Linear.forward = shape_keyed_linear if case.get("kernel", "shape_keyed") == "shape_keyed" else NATIVE_LINEAR
    worker = build_worker(case, mini_batch_size)
    sp_pads = []
    prepare = worker.engine.prepare_model_inputs

    def prepare_model_inputs(micro_batch):
        inputs, output_args = prepare(micro_batch)
        sp_pads.append(output_args.get("pad_size", 0))
        return inputs, output_args

    worker.engine.prepare_model_inputs = prepare_model_inputs
    split = update_split(OmegaConf.create({"actor_rollout_ref": {"rollout": {"n": 1}, "actor": {
        "ppo_mini_batch_size": mini_batch_size, "data_loader_seed": 42, "shuffle": case["shuffle"],
        "calculate_entropy": False, "entropy_coeff": 0.0}}}), entropy_chunk_size=256)

    # the old-log-prob pass, as verl's V1 _compute_old_log_prob calls it (+ the trainer's key when aligned)
    old_keys = {"calculate_entropy": True, "compute_loss": False, ERC_ENTROPY_FLAG: True}  # + the hook's entropy
    if case["old_pass"] == "aligned":
        old_keys[ALIGNED_OLD_PASS_KEY] = split
    old = worker.infer_batch(batch(dp_rank, **old_keys))
    data = batch(dp_rank, global_batch_size=mini_batch_size, mini_batch_size=mini_batch_size, epochs=1,
                 seed=split["seed"], dataloader_kwargs={"shuffle": split["shuffle"]},
                 calculate_entropy=split["calculate_entropy"])
    fields = [None, None, None]
    if old is not None:  # the ranks that collect outputs (sequence-parallel rank 0); the trainer sends all the same
        # (the aligned pass returns the entropy hook's entropy as the old entropy: no separate erc_entropy)
        fields = [response_from_nested(old[key], data["response_mask"]) if key in old.keys() else None
                  for key in ("log_probs", "entropy", "erc_entropy")]
    if sp > 1:
        torch.distributed.broadcast_object_list(fields, src=dp_rank * sp)
    data["old_log_probs"], data["entropy"] = fields[:2]
    passes = {key: [t.tolist() for t in field.unbind()]
              for key, field in zip(("log_probs", "entropy", "erc_entropy"), fields) if field is not None}

    # the update, as _update_actor calls train_mini_batch
    output = worker.train_mini_batch(data)
    if output is None:
        return {}
    metrics = tu.get(output, "metrics")
    plain = lambda v: v.aggregate() if hasattr(v, "aggregate") else v  # noqa: E731
    update = {key: [plain(v) for v in metrics[key if key == "grad_norm" else f"actor/{key}"]] for key in METRICS
              if (key if key == "grad_norm" else f"actor/{key}") in metrics}
    return {"update": update, "old": passes, "sp_pads": sp_pads}


NATIVE_LINEAR = torch.nn.Linear.forward
results = {name: run(case) for name, case in json.loads(os.environ["CASES"]).items()}
if RANK == 0:
    print(json.dumps(results))
