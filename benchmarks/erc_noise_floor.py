"""ERC at theta = theta_old: how many tokens leave the band (0.95, 1.05) from numerics alone.

Before a step's first update the policy has not changed, so H(pi_theta, t) / H(pi_old, t) should be 1 for
every token. The two entropies come from two passes that differ in packing (the 7B recipe: 49,152 tokens per
micro-batch in verl's old-log-prob pass, 24,576 in the update) and so in the kernels the GEMMs pick; in bf16
a different accumulation order can flip a logit's last bit. This script runs a Qwen2-shaped model (the real
151,936-token vocabulary, random weights, a few layers on a CPU) twice over the same tokens:

- pass A (old-log-prob pass): all sequences in one forward;
- pass B (update pass): the same sequences in two forwards of half as many tokens (the recipe's 2:1), with
  every Linear's reduction split in three parts (``--split-k``, the default): a different kernel's accumulation
  order, emulated as fp32 partial sums rounded once to the working dtype, as a GPU GEMM with fp32 accumulation
  does. Without it only this CPU's own kernels differ between the two shapes.

Entropies are verl's ``entropy_from_logits`` in float32 on the logits of the working dtype (what verl's engine
does under bf16 autocast). A random model is near-uniform, so the lm_head is scaled (``--scales``) to give
confident and uncertain tokens alike: each scale is one population, pooled (H_old from ~1e-5 to ~10 nats).

It prints, per dtype: the share of tokens outside the band (ERC's on-policy clip fraction), per decade of
H_old, the quantiles of |H_B - H_A|, the clip fraction left with ``erc.entropy_atol`` candidates, and the
smallest candidate that brings it under ``--target`` (the recommendation); it writes a plot of |rho - 1|
against H_old and, with ``--json-out``, the numbers. ``--rehearsal-run DIR`` adds the mean
``actor/erc_clipfrac_onpolicy`` a run logged. Usage:

    python benchmarks/erc_noise_floor.py --json-out benchmarks/results/erc_noise_floor_cpu.json \\
        --plot docs/img/erc_noise_floor_cpu.png
    python benchmarks/erc_noise_floor.py --device cuda --hidden 1536 --intermediate 8960 --layers 28   # 1.5B shape
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from verl.utils.torch_functional import entropy_from_logits

from verl_erc.losses import entropy_ratio, erc_keep_mask, within_tolerance

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
ATOL_CANDIDATES = [0.0, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2]
DECADES = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]


def split_k_linear(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with the reduction over input features in three uneven parts (not on the CPU GEMM's own
    block boundaries, where a split changes nothing): fp32 partials, one rounding."""
    k = module.in_features
    w = module.weight.float()
    out = sum(x[..., a:b].float() @ w[:, a:b].T for a, b in ((0, k // 3), (k // 3, 2 * k // 3), (2 * k // 3, k)))
    if module.bias is not None:
        out = out + module.bias.float()
    return out.to(x.dtype)


def whole_linear(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` as one fp32-accumulated GEMM rounded once: pass A's kernel."""
    out = x.float() @ module.weight.float().T
    if module.bias is not None:
        out = out + module.bias.float()
    return out.to(x.dtype)


def set_linear_kernel(model: torch.nn.Module, kernel, where: str = "all") -> None:
    """Every Linear of ``where`` (all, head: the lm_head only, body: all but the lm_head) runs ``kernel``;
    the others run pass A's."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            chosen = kernel if where == "all" or (module is model.lm_head) == (where == "head") else whole_linear
            module.forward = (lambda m, k: (lambda x: k(m, x)))(module, chosen)


@torch.no_grad()
def entropies(model, ids: torch.Tensor, micro_batches: int) -> torch.Tensor:
    """float32 entropy per token of ``ids`` [sequences, length], in ``micro_batches`` forwards."""
    out = []
    for chunk in ids.chunk(micro_batches):
        logits = model(input_ids=chunk, use_cache=False).logits
        out.append(torch.cat([entropy_from_logits(row.float()) for row in logits]))  # per sequence: bounded memory
    return torch.cat(out)


def build(args, dtype) -> Qwen2ForCausalLM:
    torch.manual_seed(args.seed)
    config = Qwen2Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(4096, args.seq_len), tie_word_embeddings=False, attn_implementation="sdpa",
    )
    return Qwen2ForCausalLM(config).to(device=args.device, dtype=dtype).eval()


def measure(args, dtype_name: str) -> dict:
    dtype = DTYPES[dtype_name]
    model = build(args, dtype)
    base = model.lm_head.weight.detach().float().clone()
    ids = torch.randint(0, args.vocab, (args.sequences, args.seq_len), generator=torch.Generator().manual_seed(1))
    ids = ids.to(args.device)
    h_a, h_b = [], []
    for scale in args.scales:
        with torch.no_grad():
            model.lm_head.weight.copy_((base * scale).to(dtype))
        set_linear_kernel(model, whole_linear)
        h_a.append(entropies(model, ids, 1))
        set_linear_kernel(model, split_k_linear if args.split_k else whole_linear, args.split_k_in)
        h_b.append(entropies(model, ids, 2))
    old, new = torch.cat(h_a).cpu().double(), torch.cat(h_b).cpu().double()
    return summarize(old, new, args)


def summarize(old: torch.Tensor, new: torch.Tensor, args) -> dict:
    ratio = entropy_ratio(new, old, args.eps)
    band = erc_keep_mask(ratio, args.beta, args.beta)
    change = (new - old).abs()
    clip = {str(atol): float((~(band | within_tolerance(new, old, atol))).double().mean()) for atol in ATOL_CANDIDATES}
    recommended = next((atol for atol in ATOL_CANDIDATES if clip[str(atol)] < args.target), None)
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
        "abs_dH": {"p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": float(change.max())},
        "clipfrac_by_atol": clip, "recommended_atol": recommended, "by_h_old": bins,
        "_points": (old.numpy(), (ratio - 1).abs().numpy()),
    }


def plot(results: dict, path: Path, beta: float, atol: float | None) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for name, res in results.items():
        h, dev = res["_points"]
        dev = dev.clip(min=1e-12)  # identical entropies (|rho - 1| = 0) drawn at the bottom
        ax.scatter(h, dev, s=2, alpha=0.3, label=f"{name}: {100 * res['outside_band']:.2f} % outside the band")
    ax.axhline(beta, color="k", lw=1, label=f"band edge |rho - 1| = {beta}")
    if atol:
        xs = torch.logspace(-6, 1, 50).numpy()
        ax.plot(xs, atol / xs, "r--", lw=1, label=f"entropy_atol = {atol:g} nats kept below")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(1e-12, 1e3)
    ax.set_xlabel("H_old (nats)")
    ax.set_ylabel("|rho - 1| at theta = theta_old")
    ax.set_title("ERC's ratio from numerics alone (two packings)")
    ax.legend(fontsize=7, markerscale=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def rehearsal_onpolicy(run_dir: Path) -> float | None:
    values = [json.loads(line)["data"].get("actor/erc_clipfrac_onpolicy") for path in sorted((run_dir / "metrics").glob("*.jsonl"))
              for line in path.read_text().splitlines()]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=sorted(DTYPES))
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--sequences", type=int, default=4, help="sequences per pass (pass B: two micro-batches)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--scales", type=float, nargs="+", default=[2, 8, 16, 32, 64],
                        help="lm_head multipliers: one token population each, from uncertain to confident")
    parser.add_argument("--no-split-k", dest="split_k", action="store_false", help="pass B: the same kernel as A")
    parser.add_argument("--split-k-in", choices=["all", "head", "body"], default="all",
                        help="which Linears pass B splits: all, the lm_head only, or all but the lm_head")
    parser.add_argument("--beta", type=float, default=0.05, help="beta_low = beta_high")
    parser.add_argument("--eps", type=float, default=1e-6, help="erc.entropy_eps")
    parser.add_argument("--target", type=float, default=0.001, help="on-policy clip fraction the recommended atol reaches")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/results/erc_noise_floor.png"))
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--rehearsal-run", type=Path, help="a run directory: its mean actor/erc_clipfrac_onpolicy")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    results = {}
    for name in args.dtypes:
        print(f"erc_noise_floor: {name}: {len(args.scales)} populations x {args.sequences} x {args.seq_len} tokens ...",
              flush=True)
        results[name] = measure(args, name)
        res = results[name]
        print(f"  H_old {res['h_old_min']:.2e}..{res['h_old_max']:.2f} nats (median {res['h_old_median']:.3g}); "
              f"entropy bit-identical in {100 * res['identical']:.1f} % of tokens; outside the band: "
              f"{100 * res['outside_band']:.3f} %; |dH| p99 {res['abs_dH']['p99']:.2e}, max {res['abs_dH']['max']:.2e} nats")
        for b in res["by_h_old"]:
            print(f"    H_old in [{b['h_old'][0]:g}, {b['h_old'][1]:g}): {b['tokens']:6d} tokens, "
                  f"{100 * b['outside_band']:7.3f} % outside, |dH| p99 {b['abs_dH_p99']:.2e}")
        print("    clip fraction with entropy_atol: " + ", ".join(
            f"{atol}: {100 * frac:.3f} %" for atol, frac in res["clipfrac_by_atol"].items()))
        print(f"    smallest entropy_atol under {100 * args.target:g} %: {res['recommended_atol']}")
    atol = results.get("bfloat16", next(iter(results.values())))["recommended_atol"]
    plot(results, args.plot, args.beta, atol)
    print(f"erc_noise_floor: plot {args.plot}")
    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": {"torch": torch.__version__, "platform": platform.platform(), "processor": platform.processor(),
                        "threads": torch.get_num_threads(),
                        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"},
        "seconds": round(time.perf_counter() - started, 1),
        "results": {name: {k: v for k, v in res.items() if not k.startswith("_")} for name, res in results.items()},
    }
    if args.rehearsal_run:
        report["rehearsal_erc_clipfrac_onpolicy"] = rehearsal_onpolicy(args.rehearsal_run)
        print(f"erc_noise_floor: {args.rehearsal_run}: mean actor/erc_clipfrac_onpolicy "
              f"{report['rehearsal_erc_clipfrac_onpolicy']}")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"erc_noise_floor: {report['seconds']} s")
    return report


if __name__ == "__main__":
    main()
