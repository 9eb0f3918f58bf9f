"""The CPU backend's platform, registrations and FSDP2 engines, exercised through verl's own APIs.

The engine checks build verl's real engines (actor, ref, critic) on the tiny local Qwen2 in a
one-rank gloo group, in a child process on the CPU platform (see ``cpu_subprocess.py``).
"""

from __future__ import annotations

import pytest
import torch
from cpu_subprocess import run_cpu_script

from verl_erc.cpu.platform import CPU_DEVICE_MODULE, CpuSelectedOnGpuMachineError, PlatformCPU

ENGINE_SCRIPT = r"""
import json, sys
import torch
import verl  # loads verl's plugins, verl-erc's among them, exactly as a Ray worker does

report = {"cpu_backend_loaded_by_plugin": "verl_erc.cpu" in sys.modules}

from tensordict import TensorDict
from verl.plugin.platform import get_platform
from verl.trainer.config import CheckpointConfig
from verl.utils import tensordict_utils as tu
from verl.utils.device import get_device_name, get_nccl_backend
from verl.workers import engine_workers
from verl.workers.config import FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig
from verl.workers.engine import EngineRegistry
from verl.workers.rollout.base import get_rollout_class
from verl.workers.rollout.replica import RolloutReplicaRegistry
from verl.workers.utils.padding import left_right_2_no_padding

from verl_erc.laptop import assets
from verl_erc.hooks.entropy_hook import ERC_ENTROPY_FLAG

platform = get_platform()
report["platform"] = type(platform).__name__
report["device_name"] = get_device_name()
report["comm_backend"] = get_nccl_backend()
report["ray_resource"] = platform.ray_resource_name()
lm_cls = EngineRegistry.get_engine_cls("language_model", "fsdp2")
report["lm_engine"] = lm_cls.__name__
report["lm_engine_mro"] = [c.__name__ for c in lm_cls.__mro__[:4]]
report["value_engine"] = EngineRegistry.get_engine_cls("value_model", "fsdp2").__name__
adapter, replica = get_rollout_class("vllm", "async"), RolloutReplicaRegistry.get("vllm")
report["rollout_adapter"] = f"{adapter.__module__}.{adapter.__qualname__}"
report["rollout_replica"] = f"{replica.__module__}.{replica.__qualname__}"

engine_workers.initialize_global_process_group_ray(timeout_second=None)  # verl's call, default backend
report["process_group_backend"] = torch.distributed.get_backend()

path = str(assets.ensure_assets()["model"])
FP32 = {"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"}


def engine(model_type, forward_only=False):
    model_config = HFModelConfig(path=path, override_config={"attn_implementation": "sdpa"}, use_remove_padding=True)
    engine_config = FSDPEngineConfig(strategy="fsdp2", use_torch_compile=False, mixed_precision=FP32, forward_only=forward_only)
    optim_config = FSDPOptimizerConfig(lr=1e-2, weight_decay=0.0, total_training_steps=10)
    eng = EngineRegistry.new(model_type=model_type, backend="fsdp2", model_config=model_config,
                             engine_config=engine_config, optimizer_config=optim_config,
                             checkpoint_config=CheckpointConfig())
    eng.initialize()
    return eng


tok = HFModelConfig(path=path).tokenizer
prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)["input_ids"]
           for q in ("3+4=", "12+5=")]
responses = [tok.encode("7") + [tok.eos_token_id], tok.encode("17 and")]


def batch(**flags):
    P, R = max(map(len, prompts)), max(map(len, responses))
    pr = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    rs = torch.tensor([r + [0] * (R - len(r)) for r in responses])
    pm = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    rm = torch.tensor([[1] * len(r) + [0] * (R - len(r)) for r in responses])
    am = torch.cat([pm, rm], 1)
    td = TensorDict(dict(prompts=pr, responses=rs, input_ids=torch.cat([pr, rs], 1), attention_mask=am,
                         response_mask=rm, position_ids=(am.cumsum(1) - 1).clamp(min=0)), batch_size=len(prompts))
    td = left_right_2_no_padding(td)
    tu.assign_non_tensor(td, temperature=1.0, calculate_entropy=True, use_remove_padding=True, use_dynamic_bsz=False,
                         micro_batch_size_per_gpu=2, use_fused_kernels=False, **flags)
    return td


def infer(eng, **flags):
    with eng.eval_mode():
        return eng.infer_batch(batch(**flags), loss_function=None)["model_output"]


def token_log_probs(nested):  # verl: log_probs[t] = log p(x[t+1] | x[:t+1]); the last position has no target
    return [t[:-1] for t in nested.unbind()]


from transformers import AutoModelForCausalLM

hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
reference = []
with torch.no_grad():
    for p, r in zip(prompts, responses):
        ids = torch.tensor([p + r])
        logp = torch.log_softmax(hf(ids).logits[0, :-1].float(), -1)
        reference.append(logp.gather(-1, ids[0, 1:, None])[:, 0])

actor = engine("language_model")
out = infer(actor, **{ERC_ENTROPY_FLAG: True})
actor_lp = token_log_probs(out["log_probs"])
report["actor_vs_transformers_max_abs_diff"] = max((a - b).abs().max().item() for a, b in zip(actor_lp, reference))
report["erc_entropy_vs_verl_entropy_max_abs_diff"] = (out["erc_entropy"].values() - out["entropy"].values()).abs().max().item()
report["erc_entropy_requires_grad"] = out["erc_entropy"].requires_grad


def nll(model_output, data, dp_group=None):
    loss = -model_output["log_probs"].values().mean()
    return loss, {"nll": loss.detach().item()}


before = sum(t.sum().item() for t in actor_lp)
with actor.train_mode():
    actor.train_batch(batch(), loss_function=nll)
report["actor_log_likelihood_before_after"] = [before, sum(t.sum().item() for t in token_log_probs(infer(actor)["log_probs"]))]

ref = engine("language_model", forward_only=True)
report["ref_vs_transformers_max_abs_diff"] = max(
    (a - b).abs().max().item() for a, b in zip(token_log_probs(infer(ref)["log_probs"]), reference)
)

critic = engine("value_model")
values = infer(critic)["values"]
report["critic_value_lengths"] = [len(v) for v in values.unbind()]
report["critic_values_finite"] = bool(torch.isfinite(values.values()).all())
report["sequence_lengths"] = [len(p) + len(r) for p, r in zip(prompts, responses)]
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def report(rehearsal_cache):
    return run_cpu_script(ENGINE_SCRIPT, env={"VERL_ERC_CACHE_DIR": str(rehearsal_cache)})


@pytest.mark.process
def test_plugin_entry_point_loads_the_cpu_backend(report):
    assert report["cpu_backend_loaded_by_plugin"]


@pytest.mark.process
def test_cpu_platform_selected_by_env(report):
    assert report["platform"] == "PlatformCPU"
    assert report["device_name"] == "cpu"
    assert report["comm_backend"] == "gloo"
    assert report["ray_resource"] == "GPU"  # logical GPUs: verl's pools count GPU/NPU only


@pytest.mark.process
def test_registries_resolve_the_cpu_pieces(report):
    assert report["lm_engine"] == "CPUFSDPEngineWithLMHead"
    assert report["lm_engine_mro"] == ["CPUFSDPEngineWithLMHead", "AlignedOldPassMixin", "ErcEntropyMixin", "FSDPEngineWithLMHead"]
    assert report["value_engine"] == "CPUFSDPEngineWithValueHead"
    # the rollout is verl's own vLLM rollout: nothing of ours is registered for it
    assert report["rollout_adapter"] == "verl.workers.rollout.vllm_rollout.vllm_rollout.ServerAdapter"
    assert report["rollout_replica"] == "verl.workers.rollout.vllm_rollout.vllm_async_server.vLLMReplica"


@pytest.mark.process
def test_verls_process_group_init_uses_gloo(report):
    assert report["process_group_backend"] == "gloo"


@pytest.mark.process
def test_actor_engine_log_probs_match_transformers(report):
    assert report["actor_vs_transformers_max_abs_diff"] < 1e-5


@pytest.mark.process
def test_erc_entropy_hook_runs_on_the_cpu_engine(report):
    assert report["erc_entropy_vs_verl_entropy_max_abs_diff"] < 1e-5
    assert report["erc_entropy_requires_grad"] is False


@pytest.mark.process
def test_actor_engine_trains(report):
    before, after = report["actor_log_likelihood_before_after"]
    assert after > before + 1.0  # one step of lr 1e-2 on the likelihood of two short sequences


@pytest.mark.process
def test_forward_only_ref_engine_builds_and_matches(report):
    assert report["ref_vs_transformers_max_abs_diff"] < 1e-5


@pytest.mark.process
def test_critic_engine_returns_a_value_per_token(report):
    assert report["critic_value_lengths"] == report["sequence_lengths"]
    assert report["critic_values_finite"]


def test_cpu_platform_is_never_auto_detected():
    assert PlatformCPU().is_platform_available(use_smi_check=True) is False


def test_cpu_platform_refuses_a_machine_with_a_visible_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(CpuSelectedOnGpuMachineError, match="use a GPU config"):
        PlatformCPU()


def test_cpu_device_module_reports_process_memory():
    assert CPU_DEVICE_MODULE.memory_allocated() > 0
    assert CPU_DEVICE_MODULE.max_memory_allocated() >= CPU_DEVICE_MODULE.memory_allocated() // 2
    free, total = CPU_DEVICE_MODULE.mem_get_info()
    assert 0 < free <= total
    assert CPU_DEVICE_MODULE.current_device() == "cpu"  # the rest is torch.cpu
    assert CPU_DEVICE_MODULE.get_device_name() == "CPU"


def test_cpu_device_module_restores_the_rng_state_verls_checkpoints_hold():
    from verl.utils.checkpoint.checkpoint_manager import BaseCheckpointManager

    state = BaseCheckpointManager.get_rng_state()  # what a checkpoint stores: its "cpu" entry is torch's
    expected = torch.rand(3)
    torch.rand(5)
    CPU_DEVICE_MODULE.set_rng_state(state["cpu"])  # what verl's load_rng_state calls for device "cpu"
    assert torch.equal(torch.rand(3), expected)
