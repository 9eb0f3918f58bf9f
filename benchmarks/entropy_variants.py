#!/usr/bin/env python
"""Side by side: ways to compute the per-token entropy of a ``[tokens x vocab]`` logits tensor
without an autograd graph (the current-policy entropy ERC needs as a mask).

Each variant is timed on the same logits (interleaved rounds, median) and its transient memory is
measured in a new process (peak RSS, or peak CUDA allocation, above the logits themselves). Values
are compared with verl's ``entropy_from_logits`` on the whole tensor (what verl's old-log-prob pass
computes): ``bitwise`` or the max abs difference.

    python benchmarks/entropy_variants.py --tokens 2048 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.use_source_tree()

SWEEP_ROWS = {"cpu": (2, 4, 8, 16, 32, 64, 256), "cuda": (64, 256, 1024, 4096)}


def _variants(vocab: int, device: str) -> dict:
    """name -> (description, fn(logits) -> entropy). Built lazily in the measuring process."""
    import torch
    from verl.utils import torch_functional as verl_F

    from verl_erc.erc import entropy as E

    def rows_loop(step):
        def fn(x):
            out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
            for s, e in E._chunk_bounds(x.shape[0], step):
                out[s:e] = verl_F.entropy_from_logits(x[s:e])
            return out

        return fn

    def out_buffers(step):  # preallocated buffers via out= ops (NOT autocast-aware)
        def fn(x):
            n, v = x.shape
            out = torch.empty(n, dtype=x.dtype, device=x.device)
            buf = torch.empty(min(step, n), v, dtype=x.dtype, device=x.device)
            lse = torch.empty(min(step, n), dtype=x.dtype, device=x.device)
            dot = torch.empty_like(lse)
            for s, e in E._chunk_bounds(n, step):
                blk, r = x[s:e], e - s
                if r > buf.shape[0]:
                    buf = torch.empty(r, v, dtype=x.dtype, device=x.device)
                    lse, dot = torch.empty(r, dtype=x.dtype, device=x.device), torch.empty(r, dtype=x.dtype, device=x.device)
                pd = buf[:r]
                torch.ops.aten._softmax.out(blk, -1, False, out=pd)
                torch.logsumexp(blk, -1, out=lse[:r])
                torch.mul(pd, blk, out=pd)
                torch.sum(pd, -1, out=dot[:r])
                torch.sub(lse[:r], dot[:r], out=out[s:e])
            return out

        return fn

    def shared_lse(step):  # one exp pass: H = log(s) + m - sum(e * x) / s, e = exp(x - m)
        def fn(x):
            out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
            for s, e in E._chunk_bounds(x.shape[0], step):
                blk = x[s:e]
                m = blk.amax(-1, keepdim=True)
                ex = (blk - m).exp_()
                z = ex.sum(-1)
                out[s:e] = (z.log() + m.squeeze(-1) - (ex.mul_(blk)).sum(-1) / z).to(x.dtype)
            return out

        return fn

    pkg_rows = E.effective_chunk_rows(vocab, E.DEFAULT_CHUNK_SIZE, device)
    v = {
        "verl_unchunked": ("verl entropy_from_logits on the whole tensor, no_grad", verl_F.entropy_from_logits),
        "verl_with_chunking": (
            "verl entropy_from_logits_with_chunking (2048 rows, fp32)",
            lambda x: verl_F.entropy_from_logits_with_chunking(x, 2048),
        ),
        "pkg_v0_chunk256": ("verl_erc before this change: entropy_from_logits per 256 rows", rows_loop(256)),
        "pkg": (f"verl_erc.entropy_no_grad now ({pkg_rows} rows per chunk here)", lambda x: E.entropy_no_grad(x)),
        "out_buffers_256": ("out= ops into reused buffers, 256 rows (not autocast-aware)", out_buffers(256)),
        f"out_buffers_{pkg_rows}": (f"out= ops into reused buffers, {pkg_rows} rows", out_buffers(pkg_rows)),
        f"shared_lse_{pkg_rows}": (f"one exp pass sharing the log-sum-exp, {pkg_rows} rows (not verl's rounding)", shared_lse(pkg_rows)),
    }
    for r in SWEEP_ROWS[device]:
        v[f"rows_{r}"] = (f"entropy_from_logits per {r} rows", rows_loop(r))
    return v


def _make_logits(spec):
    import torch

    g = torch.Generator().manual_seed(spec["seed"])
    x = torch.randn(spec["tokens"], spec["vocab"], generator=g).mul_(3.0)
    return x.to(device=spec["device"], dtype=getattr(torch, spec["dtype"]))


def _autocast(spec):
    """verl's engine computes the entropy inside torch.autocast when training in bf16."""
    from contextlib import nullcontext

    import torch

    if spec["dtype"] == "float32" or not spec.get("autocast", True):
        return nullcontext()
    return torch.autocast(device_type=spec["device"], dtype=torch.bfloat16)


def _sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def run_memory(spec) -> dict:
    """Transient memory of one variant, in its own process."""
    import resource

    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    fn = _variants(spec["vocab"], spec["device"])[spec["variant"]][1]
    x = _make_logits(spec)
    with torch.no_grad(), _autocast(spec):
        if spec["device"] == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            fn(x)
            torch.cuda.synchronize()
            return {"transient_bytes": torch.cuda.max_memory_allocated() - before}
        before = harness.rss_bytes()
        fn(x)
        return {"transient_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before}


def run_timing(spec) -> dict:
    import torch
    from verl.utils.torch_functional import entropy_from_logits

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    variants = _variants(spec["vocab"], spec["device"])
    names = spec["names"]
    x = _make_logits(spec)
    res = {"times": {n: [] for n in names}, "cpu": {n: [] for n in names}, "match": {}, "desc": {}}
    with torch.no_grad(), _autocast(spec):
        ref = entropy_from_logits(x)
        for n in names:
            y = variants[n][1](x)
            res["desc"][n] = variants[n][0]
            res["match"][n] = "bitwise" if torch.equal(y, ref) else f"max abs diff {(y.float() - ref.float()).abs().max().item():.2e}"
        for r in range(spec["repeats"]):
            k = r % len(names)
            for n in names[k:] + names[:k]:
                _sync(spec["device"])
                t, c = time.perf_counter(), time.process_time()
                variants[n][1](x)
                _sync(spec["device"])
                res["times"][n].append(time.perf_counter() - t)
                res["cpu"][n].append(time.process_time() - c)
    return res


def _entry(kind, spec, conn):
    try:
        conn.send(("ok", run_memory(spec) if kind == "memory" else run_timing(spec)))
    except BaseException as exc:
        import traceback

        conn.send(("error", f"{exc!r}\n{traceback.format_exc()}"))
    finally:
        conn.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int)
    p.add_argument("--variants", nargs="+", help="subset of variant names (default: all)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-autocast", action="store_true", help="bf16: do not run under torch.autocast (verl does)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", default="entropy_variants.json")
    args = p.parse_args(argv)

    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "verl.utils.torch_functional", "verl_erc.erc.entropy", "psutil"])

    def launch(kind, spec):
        a, b = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_entry, args=(kind, spec, b))
        proc.start()
        b.close()
        status, payload = a.recv()
        proc.join()
        if status != "ok":
            raise RuntimeError(payload)
        return payload

    import torch

    base = dict(tokens=args.tokens, vocab=args.vocab, dtype=args.dtype, device=args.device, seed=args.seed, threads=args.threads,
                autocast=not args.no_autocast)
    names = args.variants or list(_variants(args.vocab, args.device))
    timing = launch("timing", dict(base, names=names, repeats=args.repeats))
    memory = {} if args.no_memory else {n: launch("memory", dict(base, variant=n))["transient_bytes"] for n in names}

    ref_t = statistics.median(timing["times"]["verl_unchunked"]) if "verl_unchunked" in names else None
    rows = []
    print(f"{args.tokens} x {args.vocab} {args.dtype} logits on {args.device} "
          f"(threads {args.threads or torch.get_num_threads()}), median of {args.repeats}")
    print(f"{'variant':<20}{'wall s':>8}{'min s':>8}{'cpu s':>8}{'transient MiB':>15}  values vs verl")
    for n in names:
        t = statistics.median(timing["times"][n])
        row = dict(
            variant=n, description=timing["desc"][n], wall_s_median=t, wall_s_min=min(timing["times"][n]),
            cpu_s_median=statistics.median(timing["cpu"][n]), wall_s_all=timing["times"][n],
            transient_bytes=memory.get(n), values=timing["match"][n],
            speedup_vs_verl_unchunked=(ref_t / t) if ref_t else None,
        )
        rows.append(row)
        mem = "-" if row["transient_bytes"] is None else f"{row['transient_bytes'] / 2**20:,.0f}"
        print(f"{n:<20}{t:>8.3f}{row['wall_s_min']:>8.3f}{row['cpu_s_median']:>8.3f}{mem:>15}  {row['values']}")
    report = {
        "benchmark": "entropy_variants",
        "env": {
            "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "loadavg": list(os.getloadavg()),
            "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        },
        "config": vars(args),
        "results": rows,
    }
    harness.write_report(args.json_out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
