"""Rollout backend ``hf``: transformers ``generate()`` on CPU, behind verl's server-based rollout API.

- :class:`HFReplica` (``RolloutReplicaRegistry`` name ``hf``) starts one :class:`HFRolloutServer`
  Ray actor per replica (rollout tensor parallel size 1, so one replica per training rank).
- :class:`HFRolloutServer` serves verl's token-in/token-out ``generate`` and returns a
  ``TokenOutput`` with the sampled tokens' log-probs. Concurrent requests (verl's agent loop sends
  one per sample) are gathered into left-padded batches with equal sampling parameters. With verl's
  ``rollout.full_determinism`` (request ids ``det-<sample index>``) each request is generated on its
  own from a seed derived from ``rollout.seed``, the weights' global step, the request id and the
  prompt: the samples then depend on nothing but the seed (not on batching or arrival order).
- :class:`HFServerAdapter` (``_ROLLOUT_REGISTRY[("hf", "async")]``) lives in the training worker:
  verl's naive checkpoint engine hands it the actor's full weights after every update, and it
  ships them, as a CPU state dict, to its replica's server.

Log-probs are ``log_softmax(logits / temperature)`` of the sampled token, before top-k/top-p
truncation: the quantity verl's actor recomputes as the old log-prob.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from typing import Any, Optional

import ray
import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

logger = logging.getLogger(__name__)

ROLLOUT_NAME = "hf"
#: how long the server keeps collecting concurrent requests into one batch (seconds)
BATCH_WINDOW_S = 0.05
_SAMPLING_KEYS = {"temperature", "top_p", "top_k", "repetition_penalty", "logprobs", "max_tokens", "max_new_tokens"}


def server_actor_name(replica_rank: int) -> str:
    """Ray actor name of a replica's server (the adapter finds its server by it)."""
    return f"{ROLLOUT_NAME}_server_{replica_rank}"


def request_seed(seed: int, global_steps: Optional[int], request_id: str, prompt_ids: list[int]) -> int:
    """A 63-bit sampling seed that depends only on its arguments (not on Python's hash seed)."""
    text = f"{seed}|{global_steps}|{request_id}|{','.join(map(str, prompt_ids))}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def _check_single_process(config) -> None:
    world = config.tensor_model_parallel_size * config.data_parallel_size * config.pipeline_model_parallel_size
    if world != 1:
        raise ValueError(
            "rollout.name=hf runs one transformers process per replica: set "
            "actor_rollout_ref.rollout.tensor_model_parallel_size=1, data_parallel_size=1 and "
            f"pipeline_model_parallel_size=1 (got a rollout world size of {world})"
        )


class HFRolloutServer:
    """One replica's generation server (a Ray actor holding a transformers model)."""

    def __init__(self, config, model_config, replica_rank: int):
        from transformers import AutoModelForCausalLM
        from verl.utils.config import omega_conf_to_dataclass
        from verl.utils.torch_dtypes import PrecisionType
        from verl.workers.config import HFModelConfig, RolloutConfig

        self.config: RolloutConfig = omega_conf_to_dataclass(config, dataclass_type=RolloutConfig)
        self.model_config: HFModelConfig = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        self.replica_rank = replica_rank
        torch.manual_seed(self.config.seed + replica_rank)
        self.model = AutoModelForCausalLM.from_pretrained(
            self.model_config.local_path,
            config=self.model_config.hf_config,
            torch_dtype=PrecisionType.to_dtype(self.config.dtype),
            trust_remote_code=self.model_config.trust_remote_code,
        ).eval()
        tokenizer = self.model_config.tokenizer
        eos = self.model.generation_config.eos_token_id
        eos = tokenizer.eos_token_id if eos is None else eos
        self.eos_ids = set([eos] if isinstance(eos, int) else eos)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.global_steps: Optional[int] = None
        self._pending: list[tuple[list[int], tuple, asyncio.Future]] = []
        self._batcher: Optional[asyncio.Task] = None
        self._model_lock = asyncio.Lock()

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data=None,
        video_data=None,
        audio_data=None,
        mm_processor_kwargs=None,
    ) -> TokenOutput:
        """Sample a response for ``prompt_ids`` (token ids in, token ids and log-probs out)."""
        if any(x is not None for x in (image_data, video_data, audio_data, mm_processor_kwargs)):
            raise NotImplementedError("rollout.name=hf generates from text token ids only (no multimodal inputs)")
        key = self._sampling_key(list(prompt_ids), dict(sampling_params))
        if self.config.full_determinism:
            seed = request_seed(self.config.seed, self.global_steps, request_id, prompt_ids)
            async with self._model_lock:
                token_ids, log_probs = await asyncio.to_thread(self._generate_seeded, list(prompt_ids), key, seed)
            return self._token_output(token_ids, log_probs, key)
        future = asyncio.get_running_loop().create_future()
        self._pending.append((list(prompt_ids), key, future))
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.create_task(self._run_batches())
        token_ids, log_probs = await future
        return self._token_output(token_ids, log_probs, key)

    def _token_output(self, token_ids: list[int], log_probs: list[float], key: tuple) -> TokenOutput:
        return TokenOutput(
            token_ids=token_ids,
            log_probs=log_probs if key[-1] else None,
            stop_reason="completed",
            extra_fields={"global_steps": self.global_steps},
        )

    def _sampling_key(self, prompt_ids: list[int], params: dict[str, Any]) -> tuple:
        """Validated sampling parameters as a hashable batch key (requests with equal keys share a batch)."""
        unknown = set(params) - _SAMPLING_KEYS
        if unknown:
            raise ValueError(f"rollout.name=hf does not support sampling parameters {sorted(unknown)}")
        budget = self.config.prompt_length + self.config.response_length - len(prompt_ids)
        requested = params.get("max_tokens", params.get("max_new_tokens", self.config.response_length))
        max_new = min(requested, budget)
        if max_new < 1:
            raise ValueError(
                f"prompt of {len(prompt_ids)} tokens leaves no room to generate within "
                f"rollout.prompt_length + rollout.response_length = {self.config.prompt_length + self.config.response_length}"
            )
        return (
            float(params.get("temperature", self.config.temperature)),
            float(params.get("top_p", self.config.top_p)),
            int(params.get("top_k", self.config.top_k)),
            float(params.get("repetition_penalty", 1.0)),
            int(max_new),
            bool(params.get("logprobs", False)),
        )

    async def _run_batches(self) -> None:
        """Wait briefly for concurrent requests, then generate them in batches of equal sampling params."""
        await asyncio.sleep(BATCH_WINDOW_S)
        while self._pending:
            key = self._pending[0][1]
            batch = [item for item in self._pending if item[1] == key]
            self._pending = [item for item in self._pending if item[1] != key]
            try:
                async with self._model_lock:
                    results = await asyncio.to_thread(self._generate_batch, [item[0] for item in batch], key)
            except Exception as error:  # hand the failure to every waiting request
                for _, _, future in batch:
                    future.set_exception(error)
                continue
            for (_, _, future), result in zip(batch, results, strict=True):
                future.set_result(result)

    def _generate_seeded(self, prompt: list[int], key: tuple, seed: int) -> tuple[list[int], list[float]]:
        """One request, sampled from torch's generator seeded with ``seed`` (callers hold the model lock)."""
        torch.manual_seed(seed)
        return self._generate_batch([prompt], key)[0]

    @torch.no_grad()
    def _generate_batch(self, prompts: list[list[int]], key: tuple) -> list[tuple[list[int], list[float]]]:
        """Left-pad ``prompts``, sample, and cut each response after its first EOS."""
        from transformers import GenerationConfig

        temperature, top_p, top_k, repetition_penalty, max_new_tokens, _ = key
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts])
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        sampling = temperature > 0
        generation_config = GenerationConfig(
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=top_p if sampling else None,
            top_k=max(top_k, 0) if sampling else None,
            repetition_penalty=repetition_penalty,
            max_new_tokens=max_new_tokens,
            eos_token_id=None if self.config.ignore_eos else sorted(self.eos_ids),
            pad_token_id=self.pad_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
        out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config)
        new_tokens = out.sequences[:, width:]
        logits = torch.stack(out.logits, dim=1).float()  # [batch, new tokens, vocab], before any processor
        if sampling:
            logits = logits / temperature
        log_probs = torch.log_softmax(logits, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        results = []
        for tokens, token_log_probs in zip(new_tokens.tolist(), log_probs.tolist(), strict=True):
            length = len(tokens)
            if not self.config.ignore_eos:
                length = next((i + 1 for i, t in enumerate(tokens) if t in self.eos_ids), length)
            results.append((tokens[:length], token_log_probs[:length]))
        return results

    async def update_weights(self, state_dict: dict[str, torch.Tensor], global_steps: Optional[int] = None) -> None:
        """Load the actor's weights (full tensors, HF names) into the model."""
        async with self._model_lock:
            self.model.load_state_dict(state_dict, strict=True)
        self.global_steps = global_steps

    async def sleep(self) -> None:
        """Nothing to free on the CPU (verl sleeps replicas around weight syncs)."""

    async def wake_up(self) -> None:
        """Nothing to restore on the CPU."""


class HFReplica(RolloutReplica):
    """A rollout replica served by one :class:`HFRolloutServer` actor."""

    async def launch_servers(self):
        _check_single_process(self.config)
        if not self.workers:
            raise NotImplementedError("rollout.name=hf runs colocated with the actor (hybrid mode) only")
        node_id = await self.workers[0].__ray_call__.remote(lambda worker: ray.get_runtime_context().get_node_id())
        server = (
            ray.remote(HFRolloutServer)
            .options(
                name=server_actor_name(self.replica_rank),
                num_cpus=0,  # shares the training process's CPUs; never waits for a free Ray CPU
                scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node_id, soft=False),
                max_concurrency=self.max_concurrency,
            )
            .remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
        )
        await server.__ray_ready__.remote()
        self.servers = [server]
        self._server_handle = server
        self._server_address = server_actor_name(self.replica_rank)


class HFServerAdapter(BaseRollout):
    """Training-worker side of the ``hf`` rollout: pushes the actor's weights to the replica's server."""

    def __init__(self, config, model_config, device_mesh, replica_rank: int = -1):
        super().__init__(config, model_config, device_mesh)
        _check_single_process(self.config)
        self.replica_rank = int(os.environ["RANK"]) if replica_rank == -1 else replica_rank
        self.server_handle = None

    async def update_weights(self, weights, wire_format: str = "named_tensors", **kwargs):
        """Drain ``weights`` (a collective on every rank) and send them to this rank's server."""
        if wire_format != "named_tensors":
            raise NotImplementedError(f"rollout.name=hf takes full named tensors, not wire_format={wire_format!r}")
        if kwargs.get("peft_config") is not None:
            raise NotImplementedError("rollout.name=hf does not take LoRA adapters; use model.lora.merge=true")
        state_dict = {name: tensor.detach().to("cpu") for name, tensor in weights}
        if self.server_handle is None:
            self.server_handle = ray.get_actor(server_actor_name(self.replica_rank))
        await self.server_handle.update_weights.remote(state_dict, global_steps=kwargs.get("global_steps"))

    async def resume(self, tags: list[str]):
        """Nothing to reload on the CPU."""

    async def release(self):
        """Nothing to free on the CPU."""
