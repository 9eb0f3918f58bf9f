#!/usr/bin/env python
"""Tensor parallelism: ERC's current entropy from vocabulary-sharded logits, gathered vs sharded, side by side.

The actor's logits under tensor parallelism are a DTensor split on the vocabulary. Two ways to get
the per-token entropy ERC needs, measured on the same shards in one run:

* ``gather``   ``DTensor.full_tensor()`` (an all-gather of ``[tokens x vocab]``), then
               ``verl_erc.erc.entropy.entropy_no_grad`` (what the entropy hook did before);
* ``sharded``  ``verl_erc.erc.entropy.vocab_parallel_entropy_no_grad`` on each rank's slice: two
               all-reduces of one value per token per chunk (what the hook does now).

Each variant runs in fresh processes (one per rank, gloo on CPU, NCCL on CUDA): median time over
``--repeats`` after a warm-up, and the rank's peak memory above its shard (CPU: peak RSS; CUDA:
``max_memory_allocated``). Prints the table and the ratios, writes JSON::

    python benchmarks/tp_entropy.py                           # CPU, 2 ranks, 2048 tokens, Qwen vocab
    python benchmarks/tp_entropy.py --device cuda --tokens 8192 16384
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.use_source_tree()

VARIANTS = ("gather", "sharded")


def _rank(rank: int, spec: dict, port: int, out: str) -> None:
    import resource

    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    from verl_erc.erc.entropy import entropy_no_grad, vocab_parallel_entropy_no_grad

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = spec["device"] == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    torch.set_num_threads(spec["threads"])
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=spec["ranks"])
    device = torch.device(f"cuda:{rank}" if cuda else "cpu")
    mesh = init_device_mesh(device.type, (spec["ranks"],))
    local_vocab = spec["vocab"] // spec["ranks"]
    g = torch.Generator().manual_seed(spec["seed"] + rank)
    local = (torch.randn(spec["tokens"], local_vocab, generator=g) * 3).to(device=device, dtype=getattr(torch, spec["dtype"]))
    logits = DTensor.from_local(local, mesh, [Shard(1)], run_check=False)
    group = mesh.get_group(0)

    def step():
        if spec["variant"] == "gather":
            return entropy_no_grad(logits.full_tensor(), None, spec["chunk_size"])
        return vocab_parallel_entropy_no_grad(logits.to_local(), group, None, spec["chunk_size"])

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    step()  # warm-up
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = harness.rss_bytes()
    times = []
    for _ in range(spec["repeats"]):
        dist.barrier()
        t0 = time.perf_counter()
        entropy = step()
        sync()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {"time_s_median": statistics.median(times), "peak_above_shard_bytes": peak - base, "mean_entropy": entropy.mean().item()}
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


def run_variant(spec: dict) -> dict:
    """Run one variant on ``spec['ranks']`` fresh processes; return rank 0's measurements."""
    import socket
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        mp.spawn(_rank, args=(spec, port, out.name), nprocs=spec["ranks"])
        with open(out.name) as f:
            return json.load(f)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[2048])
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--ranks", type=int, default=2, help="tensor-parallel ranks")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--chunk-size", type=int, default=256, help="rows per chunk (erc.entropy_chunk_size)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", default="tp_entropy.json")
    args = p.parse_args(argv)
    if args.vocab % args.ranks:
        p.error(f"--vocab {args.vocab} must be divisible by --ranks {args.ranks}")

    import torch

    report = {
        "benchmark": "tp_entropy", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "config": vars(args), "results": [],
    }
    print(f"{'tokens':>6}  {'variant':<8}{'time s (med)':>13}{'peak MiB above shard':>22}{'mean H':>9}")
    for tokens in args.tokens:
        spec = dict(vars(args), tokens=tokens)
        rows = {v: run_variant(dict(spec, variant=v)) for v in VARIANTS}
        for v, r in rows.items():
            print(f"{tokens:>6}  {v:<8}{r['time_s_median']:>13.3f}{r['peak_above_shard_bytes'] / 2**20:>22,.0f}{r['mean_entropy']:>9.4f}")
        ratio = {
            "time": rows["sharded"]["time_s_median"] / rows["gather"]["time_s_median"],
            "peak_above_shard": rows["sharded"]["peak_above_shard_bytes"] / max(1, rows["gather"]["peak_above_shard_bytes"]),
        }
        print(f"{tokens:>6}  sharded/gather: time x{ratio['time']:.3f}, peak memory above the shard x{ratio['peak_above_shard']:.3f}\n")
        report["results"].append({"tokens": tokens, "variants": rows, "sharded/gather": ratio})
    harness.write_report(args.json_out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
