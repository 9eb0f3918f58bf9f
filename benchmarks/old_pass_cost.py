#!/usr/bin/env python
"""What the aligned old pass costs: verl's old-log-prob pass with verl's packing and with ``erc.old_pass=aligned``.

One process, one rank (gloo, ``VERL_PLATFORM=cpu``), verl's real actor ``TrainingWorker`` (FSDP2) on a
Qwen2-shaped model with random weights, one step's batch of sequences of random lengths. Both variants run
verl's ``infer_batch`` on the same worker and batch, interleaved round by round (the pass changes no weight):

* ``verl``: the whole per-rank batch packed by ``log_prob_max_token_len_per_gpu`` (``--infer-tokens``);
* ``aligned``: the batch split into the update's mini-batches (``--mini-batches``), each packed by
  ``ppo_max_token_len_per_gpu`` (``--update-tokens``), as the update will (verl_erc/hooks/old_pass.py).

Per variant: median wall time over ``--rounds``, the forwards it ran and their token counts, and the pass's peak
memory above the memory before it (RSS sampled every 2 ms, glibc's mmap threshold fixed so that RSS follows live
tensors). Prints a table with the ratios aligned / verl and writes JSON (``--json-out``). Example::

    python benchmarks/old_pass_cost.py --json-out benchmarks/results/old_pass_cost_cpu.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.use_source_tree()
for key, value in {"VERL_PLATFORM": "cpu", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533", "RANK": "0",
                   "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
    os.environ.setdefault(key, value)

VARIANTS = ("verl", "aligned")


class PeakRss:
    """Largest RSS seen while the block runs, sampled every ``interval`` seconds, minus RSS at its start."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, harness.rss_bytes())
            time.sleep(self.interval)

    def __enter__(self):
        self.start = self.peak = harness.rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, harness.rss_bytes())

    @property
    def above_start(self) -> int:
        return self.peak - self.start


def build_model(args, folder: str) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from verl_erc.laptop.assets import build_tokenizer

    import torch

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                         max_position_embeddings=4096, tie_word_embeddings=False)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)


def build_worker(args, folder: str):
    from verl.trainer.config import CheckpointConfig
    from verl.workers.config import FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig
    from verl.workers.engine_workers import TrainingWorker, TrainingWorkerConfig

    dtype = {"float32": "fp32", "bfloat16": "bf16"}[args.dtype]
    engine = FSDPEngineConfig(strategy="fsdp2", use_torch_compile=False,
                              mixed_precision={"param_dtype": dtype, "reduce_dtype": "fp32", "buffer_dtype": "fp32"})
    # as verl's ActorRolloutRefWorker.init_model assigns them from the actor and rollout configs
    engine.use_dynamic_bsz = True
    engine.max_token_len_per_gpu, engine.infer_max_token_len_per_gpu = args.update_tokens, args.infer_tokens
    worker = TrainingWorker(TrainingWorkerConfig(
        model_type="language_model",
        model_config=HFModelConfig(path=folder, override_config={"attn_implementation": "sdpa"}, use_remove_padding=True),
        engine_config=engine, optimizer_config=FSDPOptimizerConfig(lr=1e-6, total_training_steps=1),
        checkpoint_config=CheckpointConfig()))
    worker.reset()
    return worker


def make_batch(args, variant: str):
    import torch
    from verl.utils import tensordict_utils as tu

    from verl_erc.hooks.old_pass import ALIGNED_OLD_PASS_KEY

    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(args.min_len, args.max_len + 1, (args.sequences,), generator=g).tolist()
    prompt_lens = [1 + n // 4 for n in lengths]
    nested = lambda rows: torch.nested.as_nested_tensor(rows, layout=torch.jagged)  # noqa: E731
    ids = [torch.randint(0, args.vocab, (n,), generator=g) for n in lengths]
    keys = {"temperature": 1.0, "calculate_entropy": True, "compute_loss": False}
    if variant == "aligned":
        keys[ALIGNED_OLD_PASS_KEY] = {"mini_batch_size": args.sequences // args.mini_batches, "seed": 42, "shuffle": False,
                                      "calculate_entropy": False, "entropy_chunk_size": 256}
    return tu.get_tensordict(tensor_dict={
        "input_ids": nested(ids), "position_ids": nested([torch.arange(n) for n in lengths]),
        "prompts": nested([x[:p] for x, p in zip(ids, prompt_lens)]), "responses": nested([x[p:] for x, p in zip(ids, prompt_lens)]),
        "response_mask": nested([torch.ones(n - p, dtype=torch.long) for n, p in zip(lengths, prompt_lens)]),
        "loss_mask": nested([torch.ones(n - p, dtype=torch.long) for n, p in zip(lengths, prompt_lens)]),
    }, non_tensor_dict=keys)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1408)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--sequences", type=int, default=64, help="sequences per rank in the step's batch")
    parser.add_argument("--min-len", type=int, default=96)
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--mini-batches", type=int, default=8, help="the update's mini-batches per step (paper: 128/16)")
    parser.add_argument("--update-tokens", type=int, default=2048, help="ppo_max_token_len_per_gpu")
    parser.add_argument("--infer-tokens", type=int, default=4096, help="log_prob_max_token_len_per_gpu (recipes: 2x)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)
    harness.fix_malloc_mmap_threshold(1 << 20)

    import torch

    folder = tempfile.mkdtemp(prefix="old_pass_cost_")
    build_model(args, folder)
    worker = build_worker(args, folder)
    engine = worker.engine
    forwards: list[int] = []
    step = engine.forward_step

    def counted_forward_step(micro_batch, loss_function, forward_only):
        forwards.append(int(micro_batch["input_ids"].offsets()[-1]))
        return step(micro_batch, loss_function=loss_function, forward_only=forward_only)

    engine.forward_step = counted_forward_step
    seconds = {v: [] for v in VARIANTS}
    peak = {v: [] for v in VARIANTS}
    shapes = {}
    outputs = {}
    print(f"old_pass_cost: {args.sequences} sequences of {args.min_len}-{args.max_len} tokens, model {args.layers} x "
          f"{args.hidden}, vocab {args.vocab}, {args.dtype}; {args.rounds} rounds + 1 warm-up", flush=True)
    for round_ in range(args.rounds + 1):
        for variant in (VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]):
            data = make_batch(args, variant)
            forwards.clear()
            with PeakRss() as mem:
                started = time.perf_counter()
                out = worker.infer_batch(data)
                elapsed = time.perf_counter() - started
            if round_:  # round 0 warms up
                seconds[variant].append(elapsed)
                peak[variant].append(mem.above_start)
            shapes[variant] = list(forwards)
            outputs[variant] = out["log_probs"]
            print(f"  round {round_} {variant}: {elapsed:.2f} s, {len(forwards)} forwards, peak +{mem.above_start / 2**20:.0f} MiB",
                  flush=True)
    # the packings agree in value up to the kernels' shape dependence (none on this CPU in fp32); the last
    # position of a sequence has no next token (verl's rolled label is the next sequence's first): left out
    max_diff = max((a[:-1] - b[:-1]).abs().max().item() for a, b in zip(outputs["verl"].unbind(), outputs["aligned"].unbind()))
    result = {v: {"seconds_median": statistics.median(seconds[v]), "seconds": seconds[v],
                  "peak_above_start_mib": statistics.median(peak[v]) / 2**20, "forwards": len(shapes[v]),
                  "tokens_per_forward": shapes[v]} for v in VARIANTS}
    ratios = {"time": result["aligned"]["seconds_median"] / result["verl"]["seconds_median"],
              "peak_memory": result["aligned"]["peak_above_start_mib"] / result["verl"]["peak_above_start_mib"]}
    print(f"{'variant':8} {'time s':>8} {'forwards':>8} {'max tokens':>10} {'peak MiB':>9}")
    for v in VARIANTS:
        r = result[v]
        print(f"{v:8} {r['seconds_median']:8.2f} {r['forwards']:8d} {max(r['tokens_per_forward']):10d} "
              f"{r['peak_above_start_mib']:9.0f}")
    print(f"aligned / verl: time x{ratios['time']:.3f}, peak memory x{ratios['peak_memory']:.3f}; "
          f"log-prob max |verl - aligned| {max_diff:.2e}")
    report = {"config": vars(args), "environment": harness.environment("cpu"), "results": result, "ratios": ratios,
              "logprob_max_abs_diff": max_diff}
    if args.json_out:
        harness.write_report(args.json_out, report)
    torch.distributed.destroy_process_group()
    return report


if __name__ == "__main__":
    main()
