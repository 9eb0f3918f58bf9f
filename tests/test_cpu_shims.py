"""Pins the verl code the CPU shims (verl_erc/cpu/shims.py) work around.

These tests fail when verl changes under a shim: the shim may then be wrong, or no longer
needed. Re-check it against the new verl; drop it (and its test) if verl fixed the problem.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from cpu_subprocess import free_port

from verl_erc.cpu import shims


def test_verls_default_process_group_backend_is_invalid_on_the_cpu_platform(monkeypatch):
    """verl builds f"cpu:gloo,{device}:{backend}"; for device cpu torch rejects it -- why shim 1 exists."""
    from verl.utils import distributed

    signature = inspect.signature(distributed.initialize_global_process_group_ray)
    assert list(signature.parameters) == ["timeout_second", "backend"]
    assert signature.parameters["backend"].default is None
    source = inspect.getsource(distributed.initialize_global_process_group_ray)
    assert 'backend = backend or f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}"' in source

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    with pytest.raises(ValueError, match="Duplicate device type cpu"):
        torch.distributed.init_process_group(backend="cpu:gloo,cpu:gloo", rank=0, world_size=1)
    assert not torch.distributed.is_initialized()


def test_training_worker_calls_the_shimmed_name_without_a_backend():
    """The shim replaces the name verl.workers.engine_workers looks up; TrainingWorker passes no backend."""
    from verl.utils import distributed
    from verl.workers import engine_workers

    current = engine_workers.initialize_global_process_group_ray
    assert getattr(current, "__wrapped__", current) is distributed.initialize_global_process_group_ray
    init_source = inspect.getsource(engine_workers.TrainingWorker.__init__)
    assert "initialize_global_process_group_ray(timeout_second=None)" in init_source


def test_process_group_shim_supplies_gloo_and_is_idempotent(monkeypatch):
    from verl.workers import engine_workers

    calls = []
    monkeypatch.setattr(engine_workers, "initialize_global_process_group_ray", lambda **kw: calls.append(kw))
    shims.install_process_group_backend()
    shims.install_process_group_backend()
    engine_workers.initialize_global_process_group_ray(timeout_second=None)
    engine_workers.initialize_global_process_group_ray(timeout_second=5, backend="cpu:gloo")
    assert calls == [{"timeout_second": None, "backend": "gloo"}, {"timeout_second": 5, "backend": "cpu:gloo"}]


def test_verl_loads_value_models_with_flash_attention_2_at_call_time():
    """Why shim 2 exists, and why replacing the module attribute reaches verl's engine."""
    from verl.utils import model as verl_model
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngine

    loader = verl_model.load_valuehead_model
    assert list(inspect.signature(loader).parameters) == ["local_path", "torch_dtype", "model_config", "trust_remote_code"]
    assert 'attn_implementation="flash_attention_2"' in inspect.getsource(loader)
    build_source = inspect.getsource(FSDPEngine._build_module)
    assert "from verl.utils.model import load_valuehead_model" in build_source  # imported at call time
    assert "module = load_valuehead_model(" in build_source


def test_value_model_loader_shim_is_scoped_and_uses_the_config_attention(tmp_path):
    from transformers import AutoConfig, Qwen2Config, Qwen2ForTokenClassification
    from verl.utils import model as verl_model

    config = Qwen2Config(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=1)
    Qwen2ForTokenClassification(config).save_pretrained(tmp_path)
    original = verl_model.load_valuehead_model
    with shims.value_model_loader_with_config_attention():
        assert verl_model.load_valuehead_model is not original
        model_config = AutoConfig.from_pretrained(tmp_path, attn_implementation="sdpa", num_labels=1)
        model = verl_model.load_valuehead_model(tmp_path, torch.float32, model_config, False)
    assert verl_model.load_valuehead_model is original
    assert isinstance(model, Qwen2ForTokenClassification)
    assert model.config._attn_implementation == "sdpa"
