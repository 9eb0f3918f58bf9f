"""ERC at theta = theta_old: how many tokens leave the band (0.95, 1.05) from numerics alone, and what the aligned
old pass leaves of it.

Before a step's first update the policy has not changed, so H(pi_theta, t) / H(pi_old, t) should be 1 for every
token. The entropies come from two passes over the same tokens at the same weights: the update (pass B: the
sequences in ``--update-micro-batches`` forwards, the update's packing, in train mode with autograd on) and the
old-log-prob pass (pass A, eval mode, no autograd), in two arms:

- ``verl``: pass A packs all sequences in one forward, as verl's old-log-prob pass does with its larger token
  budget (the 7B recipe: 49,152 tokens against the update's 24,576);
- ``aligned``: pass A runs on the update's own micro-batches (``erc.old_pass=aligned``): 0 by construction, and
  shown as 0 here.

Kernels (``--kernel``): ``native`` runs the device's own GEMMs, whose choice of tiles and split-K depends on the
number of tokens (cuBLAS on a GPU; this CPU's kernels showed no shape dependence at these sizes); ``shape_keyed``
(the default on CPU) emulates that: every Linear's reduction is split in two where the token count says, fp32
partial sums rounded once to the working dtype. Precisions (``--precisions``): ``bf16`` (verl's engine under bf16 autocast:
bf16 body and logits), ``bf16_body_fp32_logits`` (the lm_head in fp32 on the bf16 hidden state), ``fp32``.
Entropies are computed in fp32 from the logits with verl's formula (logsumexp - sum softmax * logits). A
random model is near-uniform, so the lm_head is scaled (``--scales``): each scale is one population of tokens,
from uncertain to confident, reported alone and pooled.

Runs with torch and transformers alone (no verl, Ray or vLLM import): on a GPU machine,

    python benchmarks/erc_noise_floor.py --device cuda --kernel native --hidden 1536 --intermediate 8960 \\
        --layers 28 --heads 12 --kv-heads 2 --sequences 16 --seq-len 1024 --json-out noise_h100.json

measures real cuBLAS shape dependence at the 1.5B shape (random weights) in minutes. On CPU:

    python benchmarks/erc_noise_floor.py --json-out benchmarks/results/erc_noise_floor_cpu.json \\
        --plot docs/img/erc_noise_floor_cpu.png
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.use_source_tree()
from verl_erc.erc.equations import entropy_ratio, erc_keep_mask, within_tolerance  # noqa: E402  (torch only)

PRECISIONS = ("bf16", "bf16_body_fp32_logits", "fp32")
ARMS = ("verl", "aligned")
ATOL_CANDIDATES = [0.0, 1e-5, 1e-4, 1e-3, 1e-2]
DECADES = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """verl's formula (``verl.utils.torch_functional.entropy_from_logits``), in fp32."""
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def shape_keyed_linear(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with the reduction over input features split in two where the number of rows (tokens) says:
    fp32 partial sums, rounded once to the working dtype, as a GEMM with fp32 accumulation and another split-K per
    shape does."""
    split = 1 + (x.numel() // x.shape[-1]) * 40503 % (module.in_features - 1)
    w = module.weight
    out = sum(x[..., a:b].float() @ w[:, a:b].float().T for a, b in ((0, split), (split, module.in_features)))
    if module.bias is not None:
        out = out + module.bias.float()
    return out.to(x.dtype)


def build(args, precision: str) -> Qwen2ForCausalLM:
    torch.manual_seed(args.seed)
    config = Qwen2Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(4096, args.seq_len), tie_word_embeddings=False, attn_implementation="sdpa",
    )
    body_dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    model = Qwen2ForCausalLM(config).to(device=args.device, dtype=body_dtype)
    if precision == "bf16_body_fp32_logits":
        model.lm_head.float()
    if args.kernel == "shape_keyed":
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.forward = (lambda m: (lambda x: shape_keyed_linear(m, x.to(m.weight.dtype))))(module)
    elif precision == "bf16_body_fp32_logits":
        head = model.lm_head
        head.forward = (lambda m, f: (lambda x: f(x.float())))(head, head.forward)
    return model


def entropies(model, ids: torch.Tensor, micro_batches: int, update: bool) -> torch.Tensor:
    """fp32 entropy per token of ``ids`` [sequences, length] in ``micro_batches`` forwards: as the update runs them
    (``update``: train mode, autograd on) or as the old-log-prob pass does (eval mode, no autograd)."""
    model.train(update)
    out = []
    with torch.set_grad_enabled(update):
        for chunk in ids.chunk(micro_batches):
            logits = model(input_ids=chunk, use_cache=False).logits.detach()
            out.append(torch.cat([entropy_from_logits(row) for row in logits]))  # per sequence: bounded memory
            del logits
    return torch.cat(out)


def measure(args, precision: str) -> dict:
    """{arm: summary} and per-population summaries for one precision."""
    model = build(args, precision)
    base = model.lm_head.weight.detach().float().clone()
    ids = torch.randint(0, args.vocab, (args.sequences, args.seq_len), generator=torch.Generator().manual_seed(1))
    ids = ids.to(args.device)
    pairs = {arm: ([], []) for arm in ARMS}
    for scale in args.scales:
        with torch.no_grad():
            model.lm_head.weight.copy_((base * scale).to(model.lm_head.weight.dtype))
        update = entropies(model, ids, args.update_micro_batches, update=True)  # pass B
        for arm in ARMS:
            old = entropies(model, ids, 1 if arm == "verl" else args.update_micro_batches, update=False)  # pass A
            pairs[arm][0].append(old.cpu().double())
            pairs[arm][1].append(update.cpu().double())
    results = {}
    for arm, (olds, news) in pairs.items():
        results[arm] = summarize(torch.cat(olds), torch.cat(news), args)
        results[arm]["by_population"] = {
            str(scale): {k: v for k, v in summarize(old, new, args).items() if k in ("tokens", "outside_band", "h_old_median")}
            for scale, old, new in zip(args.scales, olds, news)
        }
    return results


def summarize(old: torch.Tensor, new: torch.Tensor, args) -> dict:
    ratio = entropy_ratio(new, old, args.eps)
    band = erc_keep_mask(ratio, args.beta, args.beta)
    change = (new - old).abs()
    clip = {str(atol): float((~(band | within_tolerance(new, old, atol))).double().mean()) for atol in ATOL_CANDIDATES}
    bins = []
    for lo, hi in zip([0.0, *DECADES[:-1]], DECADES):
        sel = (old >= lo) & (old < hi)
        if sel.any():
            bins.append({"h_old": [lo, hi], "tokens": int(sel.sum()), "outside_band": float((~band[sel]).double().mean()),
                         "abs_dH_p99": float(change[sel].quantile(0.99)), "abs_dH_max": float(change[sel].max())})
    q = lambda p: float(change.quantile(p))  # noqa: E731
    return {
        "tokens": old.numel(), "h_old_min": float(old.min()), "h_old_median": float(old.median()),
        "h_old_max": float(old.max()), "identical": float((new == old).double().mean()),
        "outside_band": float((~band).double().mean()),
        "abs_dH": {"p50": q(0.5), "p99": q(0.99), "max": float(change.max())},
        "clipfrac_by_atol": clip, "by_h_old": bins,
        "_points": (old.numpy(), (ratio - 1).abs().numpy()),
    }


def plot(results: dict, path: Path, beta: float) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for precision, arms in results.items():
        h, dev = arms["verl"]["_points"]
        ax.scatter(h, dev.clip(min=1e-12), s=2, alpha=0.3,
                   label=f"{precision}, verl's packing: {100 * arms['verl']['outside_band']:.2f} % outside")
    ax.axhline(beta, color="k", lw=1, label=f"band edge |rho - 1| = {beta}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(1e-12, 1e3)
    ax.set_xlabel("H_old (nats)")
    ax.set_ylabel("|rho - 1| at theta = theta_old")
    ax.set_title("ERC's ratio from numerics alone (aligned: 0 everywhere)")
    ax.legend(fontsize=7, markerscale=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--kernel", choices=["shape_keyed", "native"], help="default: shape_keyed on CPU, native otherwise")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--sequences", type=int, default=8, help="sequences per pass")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--update-micro-batches", type=int, default=2, help="pass B's forwards (the recipes' 2:1)")
    parser.add_argument("--scales", type=float, nargs="+", default=[2, 8, 16, 32, 64],
                        help="lm_head multipliers: one token population each, from uncertain to confident")
    parser.add_argument("--beta", type=float, default=0.05, help="beta_low = beta_high")
    parser.add_argument("--eps", type=float, default=1e-6, help="erc.entropy_eps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/results/erc_noise_floor.png"))
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    args.kernel = args.kernel or ("shape_keyed" if args.device == "cpu" else "native")

    started = time.perf_counter()
    results = {}
    for precision in args.precisions:
        print(f"erc_noise_floor: {precision}, {args.kernel} kernels: {len(args.scales)} populations x {args.sequences} x "
              f"{args.seq_len} tokens ...", flush=True)
        results[precision] = measure(args, precision)
        for arm, res in results[precision].items():
            print(f"  {arm:8}: outside the band {100 * res['outside_band']:7.3f} % (by population "
                  + ", ".join(f"x{s}: {100 * p['outside_band']:.2f} %" for s, p in res["by_population"].items())
                  + f"); |dH| p99 {res['abs_dH']['p99']:.2e}, max {res['abs_dH']['max']:.2e} nats; entropies bit-identical "
                  f"in {100 * res['identical']:.1f} %", flush=True)
        verl = results[precision]["verl"]
        for b in verl["by_h_old"]:
            print(f"    verl, H_old in [{b['h_old'][0]:g}, {b['h_old'][1]:g}): {b['tokens']:6d} tokens, "
                  f"{100 * b['outside_band']:7.3f} % outside, |dH| p99 {b['abs_dH_p99']:.2e}")
        print("    verl, clip fraction with entropy_atol: " + ", ".join(
            f"{atol}: {100 * frac:.3f} %" for atol, frac in verl["clipfrac_by_atol"].items()))
    plot(results, args.plot, args.beta)
    print(f"erc_noise_floor: plot {args.plot}")
    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": harness.environment(args.device),
        "seconds": round(time.perf_counter() - started, 1),
        "results": {precision: {arm: {k: v for k, v in res.items() if not k.startswith("_")} for arm, res in arms.items()}
                    for precision, arms in results.items()},
    }
    if args.json_out:
        harness.write_report(args.json_out, report)
    print(f"erc_noise_floor: {report['seconds']} s")
    return report


if __name__ == "__main__":
    main()
