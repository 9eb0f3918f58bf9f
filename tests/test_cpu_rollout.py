"""The ``hf`` rollout: the generation server in-process, then replica + adapter weight sync on a real Ray."""

from __future__ import annotations

import asyncio

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from verl_erc.cpu import assets
from verl_erc.cpu.rollout import HFReplica, HFRolloutServer, HFServerAdapter, server_actor_name

SAMPLING = dict(temperature=1.0, top_p=1.0, top_k=-1, repetition_penalty=1.0, logprobs=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return assets.build_assets(tmp_path_factory.mktemp("assets"))["model"]


@pytest.fixture(scope="module")
def configs(model_dir):
    rollout = OmegaConf.create(
        dict(_target_="verl.workers.config.RolloutConfig", name="hf", prompt_length=16, response_length=8,
             dtype="float32", tensor_model_parallel_size=1, seed=0)
    )
    model = OmegaConf.create(
        dict(_target_="verl.workers.config.HFModelConfig", path=str(model_dir), override_config={"attn_implementation": "sdpa"})
    )
    return rollout, model


@pytest.fixture
def server(configs):
    return HFRolloutServer(*configs, replica_rank=0)


def prompt(server, question="3+4="):
    ids = server.model_config.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
    )
    return list(ids["input_ids"])


def generate_all(server, requests):
    async def run():
        return await asyncio.gather(
            *[server.generate(prompt_ids=p, sampling_params=dict(s), request_id=str(i)) for i, (p, s) in enumerate(requests)]
        )

    return asyncio.run(run())


def test_log_probs_are_the_models_log_probs_of_the_sampled_tokens(server, model_dir):
    prompts = [prompt(server, q) for q in ("3+4=", "0+0=", "2+7=")] * 2
    outputs = generate_all(server, [(p, SAMPLING) for p in prompts])
    reference = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    eos = server.eos_ids
    for p, out in zip(prompts, outputs, strict=True):
        assert 1 <= len(out.token_ids) <= 8 and len(out.log_probs) == len(out.token_ids)
        assert not eos & set(out.token_ids[:-1])  # cut right after the first EOS
        ids = torch.tensor([p + out.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(reference(ids).logits[0, len(p) - 1 : -1], -1)
        expected = logp.gather(-1, torch.tensor(out.token_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(out.log_probs), expected, atol=1e-4, rtol=0)


def test_full_determinism_samples_depend_on_the_seed_only(configs):
    """verl's rollout.full_determinism: a request's sample depends on the seed and its id, not on batching or order."""
    rollout, model = configs

    def sample(seed, order):
        server = HFRolloutServer(OmegaConf.merge(rollout, {"full_determinism": True, "seed": seed}), model, replica_rank=0)
        p = prompt(server)
        requests = [(f"det-{i}", p) for i in order]

        async def run():
            outs = await asyncio.gather(
                *[server.generate(prompt_ids=ids, sampling_params=dict(SAMPLING), request_id=rid) for rid, ids in requests]
            )
            return {rid: (out.token_ids, out.log_probs) for (rid, _), out in zip(requests, outs)}

        return asyncio.run(run())

    forward, backward, other_seed = sample(0, range(12)), sample(0, reversed(range(12))), sample(1, range(12))
    assert forward == backward
    assert len({tuple(tokens) for tokens, _ in forward.values()}) > 1  # sampled, not greedy: the test has teeth
    assert forward != other_seed


def test_concurrent_requests_share_batches_by_sampling_params(server, monkeypatch):
    batches = []
    original = server._generate_batch
    monkeypatch.setattr(server, "_generate_batch", lambda prompts, key: batches.append(len(prompts)) or original(prompts, key))
    greedy = dict(SAMPLING, temperature=0.0)
    outputs = generate_all(server, [(prompt(server), SAMPLING)] * 5 + [(prompt(server, "1+1="), greedy)] * 3)
    assert sorted(batches) == [3, 5]
    assert outputs[5].token_ids == outputs[6].token_ids == outputs[7].token_ids  # greedy is deterministic


def test_sampling_params_are_honoured_or_refused(server):
    (short,) = generate_all(server, [(prompt(server), dict(SAMPLING, max_tokens=2, logprobs=False))])
    assert len(short.token_ids) <= 2 and short.log_probs is None
    with pytest.raises(ValueError, match="min_p"):
        generate_all(server, [(prompt(server), dict(SAMPLING, min_p=0.1))])
    with pytest.raises(NotImplementedError, match="multimodal"):
        asyncio.run(server.generate(prompt_ids=prompt(server), sampling_params=SAMPLING, request_id="x", image_data=[1]))


def _eos_state_dict(server):
    """Weights whose final norm is zero: all logits tie and greedy decoding picks token 0 (an EOS)."""
    state = {k: v.clone() for k, v in server.model.state_dict().items()}
    state["model.norm.weight"].zero_()
    return state


def test_update_weights_loads_new_weights(server):
    asyncio.run(server.update_weights(_eos_state_dict(server), global_steps=7))
    (out,) = generate_all(server, [(prompt(server), dict(SAMPLING, temperature=0.0))])
    assert out.token_ids == [0] and out.extra_fields["global_steps"] == 7
    with pytest.raises(RuntimeError, match="Missing key"):
        asyncio.run(server.update_weights({"lm_head.weight": server.model.lm_head.weight.detach()}))


def test_replica_and_adapter_sync_weights_over_ray(configs):
    """verl's naive weight sync path: the worker-side adapter pushes weights to the replica's server actor."""
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:

        @ray.remote(num_cpus=0)
        class TrainingProcess:  # stands in for the training worker the replica is colocated with
            pass

        replica = HFReplica(replica_rank=0, config=configs[0], model_config=configs[1], gpus_per_node=1)
        replica.workers = [TrainingProcess.remote()]
        asyncio.run(replica.launch_servers())
        assert replica.server_address == server_actor_name(0)

        local = HFRolloutServer(*configs, replica_rank=0)
        weights = ((name, tensor) for name, tensor in _eos_state_dict(local).items())
        adapter = HFServerAdapter(config=configs[0], model_config=configs[1], device_mesh=None, replica_rank=0)
        asyncio.run(adapter.update_weights(weights, global_steps=3))

        out = ray.get(
            replica.server_handle.generate.remote(
                prompt_ids=prompt(local), sampling_params=dict(SAMPLING, temperature=0.0), request_id="r"
            )
        )
        assert out.token_ids == [0] and out.extra_fields["global_steps"] == 3
        ray.get(replica.server_handle.sleep.remote())  # what verl's checkpoint manager calls
    finally:
        ray.shutdown()


def test_rollout_refuses_tensor_parallelism(configs):
    rollout = OmegaConf.merge(configs[0], {"tensor_model_parallel_size": 2})
    with pytest.raises(ValueError, match="tensor_model_parallel_size=1"):
        HFServerAdapter(config=rollout, model_config=configs[1], device_mesh=None, replica_rank=0)
