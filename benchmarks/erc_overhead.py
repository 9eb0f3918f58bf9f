#!/usr/bin/env python
"""What ERC costs: one actor micro-batch step (forward, loss, backward), three ways, side by side.

Variants (same model, same inputs, same verl loss code):

* ``baseline``  DAPO: verl's ``vanilla`` policy loss, clip 0.2/0.28, token-mean; no entropy.
* ``erc``       ERC as verl-erc does it: the current entropy from the logits WITHOUT a graph
                (``verl_erc.erc.entropy.entropy_no_grad``, chunked), the ratio/mask/gate of
                ``verl_erc.erc.losses`` (``entropy_ratio``, ``erc_keep_mask``, ``gate_gradient``)
                applied to the log-probs the DAPO loss sees.
* ``naive``     ERC the straightforward way (verl's ``calculate_entropy=True``, as the paper's
                fork does): verl's ``entropy_from_logits`` on the graph-carrying logits, the same
                mask, and ``- 0 * entropy_loss`` added to the loss as verl's ``ppo_loss`` does with
                ``entropy_coeff=0``, which keeps the entropy's graph alive through backward.

Extra variants for comparing entropy paths (``--variants``): ``erc_chunk256`` (verl's
``entropy_from_logits`` per 256-row chunk, i.e. ``entropy_no_grad`` before the CPU chunk cap) and
``erc_unchunked`` (verl's ``entropy_from_logits`` on the whole tensor under ``no_grad``).

With an entropy bonus (``entropy_coeff != 0``, ``--variants bonus erc_bonus erc_bonus_twice``;
ratios against ``bonus``): ``bonus`` is DAPO plus verl's entropy bonus (verl computes the current
entropy with its graph), ``erc_bonus`` adds ERC reusing that entropy, detached (what the entropy
hook does), ``erc_bonus_twice`` adds ERC with a second, no-grad entropy pass (the hook before it
reused verl's).

The log-probs follow verl's FSDP engine: ``logprobs_from_logits`` on the rmpad logits
``[total_nnz, vocab]`` at temperature 1 (``inplace_backward=False`` when the entropy is computed
with its graph, as the engine does). The model is ``transformers.Qwen2ForCausalLM`` built from a
``Qwen2Config`` with random weights (no hub), one packed sequence of ``--tokens`` tokens; the
first quarter is "prompt" (outside the response mask), the rest "response". Old log-probs and the
old entropy come from a no-grad pass over the same inputs (verl's old-log-prob pass), then are
perturbed so that the clip and ERC masks act as on a later mini-batch.

Measurements, per token count:

* time: one process runs all variants interleaved (rotating order each round) after warm-up;
  median wall time per step (also CPU time and per-phase times);
* peak memory: a new process per variant (forked from a server that only imported the
  libraries) runs the step; CPU: its peak RSS
  (``getrusage(RUSAGE_SELF).ru_maxrss``), also the RSS just before the step (model + inputs);
  CUDA: ``torch.cuda.max_memory_allocated``.

Prints a table and writes JSON (``--json-out``) with the environment. Example::

    python benchmarks/erc_overhead.py                               # CPU, 1.5B width, 2 layers
    python benchmarks/erc_overhead.py --device cuda --dtype bfloat16 --layers 28 \\
        --grad-ckpt --tokens 8192 16384 --json-out erc_overhead_h100.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.use_source_tree()

DEFAULT_VARIANTS = ("baseline", "erc", "naive")
BONUS_VARIANTS = ("bonus", "erc_bonus", "erc_bonus_twice")
ALL_VARIANTS = DEFAULT_VARIANTS + ("erc_chunk256", "erc_unchunked") + BONUS_VARIANTS
#: the variant each one's ratios are taken against (default: baseline)
REFERENCE = {"erc_bonus": "bonus", "erc_bonus_twice": "bonus"}
#: variants in which verl computes the current entropy with its autograd graph (calculate_entropy=True)
GRAPH_ENTROPY_VARIANTS = ("naive",) + BONUS_VARIANTS
ENTROPY_COEFF = 1e-3  # the paper's entropy-regularisation ablation (Fig. 7)
SHAPES = {
    # DeepSeek-R1-Distill-Qwen-1.5B (Qwen2 architecture): 28 layers; pass --layers to override.
    "r1-distill-1.5b": dict(hidden=1536, intermediate=8960, heads=12, kv_heads=2, vocab=151936, layers=28),
    # DeepSeek-R1-Distill-Qwen-7B
    "r1-distill-7b": dict(hidden=3584, intermediate=18944, heads=28, kv_heads=4, vocab=152064, layers=28),
    # for tests
    "tiny": dict(hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=512, layers=1),
}
DEFAULT_CPU_LAYERS = 2
# DAPO clip range (Yu et al., 2025) and the paper's ERC band.
CLIP_LOW, CLIP_HIGH = 0.2, 0.28
BETA_LOW, BETA_HIGH, ENTROPY_EPS = 0.05, 0.05, 1e-6
TARGETS = {"erc_time_ratio_max": 1.05, "erc_mem_ratio_max": 1.05}


# ------------------------------------------------------------------------------------------
# child process: build the model, run steps, report
# ------------------------------------------------------------------------------------------


def _erc_functions():
    """(entropy_no_grad, entropy_ratio, erc_keep_mask, gate_gradient, source) from the package."""
    from verl_erc.erc.entropy import entropy_no_grad
    from verl_erc.erc.equations import entropy_ratio, erc_keep_mask, gate_gradient

    return entropy_no_grad, entropy_ratio, erc_keep_mask, gate_gradient, "verl_erc.erc.entropy + verl_erc.erc.losses"


class _Bench:
    """Model, inputs and the step of each variant (runs inside a child process)."""

    def __init__(self, spec: dict):
        import torch

        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        self.torch = torch
        self.spec = spec
        self.device = torch.device(spec["device"])
        self.dtype = getattr(torch, spec["dtype"])
        self.cuda = self.device.type == "cuda"
        self.autocast = self.dtype != torch.float32  # verl's engine runs forward + loss under autocast
        torch.manual_seed(spec["seed"])

        from transformers import Qwen2Config, Qwen2ForCausalLM
        from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn
        from verl.utils import torch_functional as verl_F
        from verl.workers.config import FSDPActorConfig

        (self.entropy_no_grad, self.entropy_ratio, self.erc_keep_mask, self.gate_gradient,
         self.erc_source) = _erc_functions()
        self.verl_F = verl_F
        self.agg_loss = agg_loss
        self.policy_loss_fn = get_policy_loss_fn("vanilla")
        self.actor_config = FSDPActorConfig(
            strategy="fsdp2",
            rollout_n=1,
            ppo_micro_batch_size_per_gpu=1,
            clip_ratio_low=CLIP_LOW,
            clip_ratio_high=CLIP_HIGH,
            loss_agg_mode="token-mean",
        )

        cfg = Qwen2Config(
            hidden_size=spec["hidden"],
            intermediate_size=spec["intermediate"],
            num_attention_heads=spec["heads"],
            num_key_value_heads=spec["kv_heads"],
            num_hidden_layers=spec["layers"],
            vocab_size=spec["vocab"],
            max_position_embeddings=max(4096, spec["tokens"]),
            tie_word_embeddings=False,
            attn_implementation="sdpa",
        )
        model = Qwen2ForCausalLM(cfg).to(device=self.device, dtype=self.dtype)
        if spec.get("grad_ckpt"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        self.model = model

        T = spec["tokens"]
        g = torch.Generator().manual_seed(spec["seed"] + 1)
        self.input_ids = torch.randint(0, spec["vocab"], (1, T), generator=g).to(self.device)
        self.position_ids = torch.arange(T).unsqueeze(0).to(self.device)
        self.labels = torch.roll(self.input_ids, shifts=-1, dims=1).squeeze(0)  # verl: input_ids_rmpad_rolled
        self.prompt_len = T // 4
        R = T - self.prompt_len
        self.response_mask = torch.ones(1, R, dtype=torch.bool, device=self.device)

        # verl's old-log-prob pass (no grad): old log-probs and old entropy of the same tokens.
        with torch.no_grad(), self._autocast_ctx():
            logits = self.model(input_ids=self.input_ids, position_ids=self.position_ids, use_cache=False).logits
            logits = logits.squeeze(0)
            old_lp = verl_F.logprobs_from_logits(logits, self.labels)
            # values identical to verl_F.entropy_from_logits(logits) (tests/test_entropy.py), chunked
            # so this set-up pass stays below the step's peak memory
            old_ent = self.entropy_no_grad(logits, None, spec["chunk_size"])
            del logits
        self.onpolicy_old_entropy = old_ent[self.prompt_len :].float().unsqueeze(0)
        # a later mini-batch: the policy has moved a little
        self.old_log_prob = (old_lp[self.prompt_len :].float() + 0.05 * torch.randn(R, generator=g).to(self.device)).unsqueeze(0)
        self.old_entropy = (self.onpolicy_old_entropy * (1 + 0.08 * (2 * torch.rand(R, generator=g).to(self.device) - 1)))
        adv = torch.randn(R // 256 + 1, generator=g).repeat_interleave(256)[:R]  # piecewise-constant, GRPO-like
        self.advantages = adv.unsqueeze(0).to(self.device)
        self._sync()

    def _autocast_ctx(self):
        from contextlib import nullcontext

        if not self.autocast:
            return nullcontext()
        return self.torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def _entropies(self, variant: str, logits):
        """(verl's graph-carrying current entropy or None, the entropy ERC's mask uses or None)."""
        torch, verl_F = self.torch, self.verl_F
        graph = verl_F.entropy_from_logits(logits) if variant in GRAPH_ENTROPY_VARIANTS else None
        if variant in ("erc", "erc_bonus_twice"):
            return graph, self.entropy_no_grad(logits, None, self.spec["chunk_size"])
        if variant == "erc_chunk256":  # verl_erc.erc.entropy before the CPU chunk cap
            with torch.no_grad():
                return None, torch.cat([verl_F.entropy_from_logits(c) for c in logits.split(256)])
        if variant == "erc_unchunked":
            with torch.no_grad():
                return None, verl_F.entropy_from_logits(logits)
        if variant in ("naive", "erc_bonus"):  # the mask from verl's own entropy
            return graph, graph.detach()
        return graph, None

    def step(self, variant: str, onpolicy: bool = False) -> dict:
        """One micro-batch step; returns wall/CPU time of each phase (seconds)."""
        P = self.prompt_len
        self.model.zero_grad(set_to_none=True)
        self._sync()
        t0, c0 = time.perf_counter(), time.process_time()
        info = {}
        with self._autocast_ctx():
            out = self.model(input_ids=self.input_ids, position_ids=self.position_ids, use_cache=False)
            logits = out.logits.squeeze(0)  # rmpad logits (total_nnz, vocab); temperature 1: no scaling
            graph_entropy_on = variant in GRAPH_ENTROPY_VARIANTS
            log_probs = self.verl_F.logprobs_from_logits(logits, self.labels, inplace_backward=not graph_entropy_on)
            self._sync()
            t1 = time.perf_counter()
            graph_entropy, entropy = self._entropies(variant, logits)
            self._sync()
            t2 = time.perf_counter()
            log_prob = log_probs[P:].unsqueeze(0)  # response part (ppo_loss: no_padding_2_padding)
            if entropy is not None:
                new_entropy = entropy[P:].unsqueeze(0).detach().float()
                old_entropy = self.onpolicy_old_entropy if onpolicy else self.old_entropy
                ratio = self.entropy_ratio(new_entropy, old_entropy, ENTROPY_EPS)
                keep = self.erc_keep_mask(ratio, BETA_LOW, BETA_HIGH)
                log_prob = self.gate_gradient(log_prob, keep)
                info["erc_clipfrac"] = (~keep).float().mean().item()
                if onpolicy:
                    info["onpolicy_max_abs_ratio_minus_1"] = (ratio - 1).abs().max().item()
            loss, _ = self.policy_loss_fn(
                old_log_prob=self.old_log_prob,
                log_prob=log_prob,
                advantages=self.advantages,
                response_mask=self.response_mask,
                loss_agg_mode="token-mean",
                config=self.actor_config,
                rollout_is_weights=None,
            )
            if graph_entropy is not None:  # verl ppo_loss with calculate_entropy=True: - entropy_coeff * entropy_loss
                entropy_loss = self.agg_loss(
                    loss_mat=graph_entropy[P:].unsqueeze(0), loss_mask=self.response_mask, loss_agg_mode="token-mean"
                )
                loss = loss - (0.0 if variant == "naive" else ENTROPY_COEFF) * entropy_loss
        self._sync()
        t3 = time.perf_counter()
        loss.backward()
        self._sync()
        t4, c4 = time.perf_counter(), time.process_time()
        del out, logits, log_probs, entropy, graph_entropy, loss
        info.update(
            time_s=t4 - t0,
            cpu_s=c4 - c0,
            forward_logprob_s=t1 - t0,
            entropy_s=t2 - t1,
            loss_s=t3 - t2,
            backward_s=t4 - t3,
        )
        return info


def run_child(spec: dict) -> dict:
    fixed = None
    if spec["mode"] == "memory" and spec["device"] == "cpu" and spec.get("malloc_mmap_threshold"):
        fixed = harness.fix_malloc_mmap_threshold(spec["malloc_mmap_threshold"])
    bench = _Bench(spec)
    torch = bench.torch
    res = {"mode": spec["mode"], "erc_functions": bench.erc_source, "torch_threads": torch.get_num_threads()}
    if fixed is not None:
        res["malloc_mmap_threshold_fixed"] = fixed
    if spec["mode"] == "memory":
        (variant,) = spec["variants"]
        if bench.cuda:
            torch.cuda.reset_peak_memory_stats()
            res["mem_before_step_bytes"] = torch.cuda.memory_allocated()
        else:
            res["mem_before_step_bytes"] = harness.rss_bytes()
        steps = [bench.step(variant) for _ in range(spec["memory_steps"])]
        if bench.cuda:
            res["peak_mem_bytes"] = torch.cuda.max_memory_allocated()
            res["peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
            res["mem_kind"] = "torch.cuda.max_memory_allocated"
        else:
            res["peak_mem_bytes"] = harness.peak_rss_bytes()
            res["mem_kind"] = "peak RSS of a fresh process (getrusage ru_maxrss)" + (
                f", glibc mmap threshold fixed at {spec['malloc_mmap_threshold']} B" if fixed else ", glibc malloc defaults"
            )
        res["variant"] = variant
        res["steps"] = steps
        return res

    # timing: all variants interleaved in one process
    variants = list(spec["variants"])
    onpolicy = {}
    for w in range(spec["warmup"]):
        for v in variants:
            info = bench.step(v, onpolicy=(w == 0))
            if w == 0 and "onpolicy_max_abs_ratio_minus_1" in info:
                onpolicy[v] = info["onpolicy_max_abs_ratio_minus_1"]
    runs = {v: [] for v in variants}
    order = []
    for r in range(spec["repeats"]):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:
            runs[v].append(bench.step(v))
            order.append(v)
    res["runs"] = runs
    res["order"] = order
    res["onpolicy_max_abs_ratio_minus_1"] = onpolicy
    return res


# ------------------------------------------------------------------------------------------
# parent: spawn children, aggregate, print, write JSON
# ------------------------------------------------------------------------------------------


PRELOAD = [
    "torch",
    "transformers.models.qwen2.modeling_qwen2",
    "verl.trainer.ppo.core_algos",
    "verl.workers.config",
    "verl_erc.erc.entropy",
    "verl_erc.erc.losses",
]


def _child_entry(spec: dict, conn) -> None:
    try:
        conn.send(("ok", run_child(spec)))
    except BaseException as exc:  # report, do not hang the parent
        import traceback

        conn.send(("error", f"{exc!r}\n{traceback.format_exc()}"))
    finally:
        conn.close()


class _Launcher:
    """Runs each measurement in a new process.

    The processes are forked from a ``multiprocessing`` forkserver that has only imported the
    libraries (it never builds a model, allocates tensors or touches CUDA), so each one starts
    in the same state as a freshly started Python that did those imports, without paying
    ~15 s of ``import verl`` per measurement.
    """

    def __init__(self):
        import multiprocessing as mp

        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)

    def run(self, spec: dict) -> dict:
        parent_conn, child_conn = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_child_entry, args=(spec, child_conn))
        proc.start()
        child_conn.close()
        try:
            status, payload = parent_conn.recv()
        except EOFError:
            status, payload = "error", "the benchmark process died without a result (out of memory?)"
        proc.join()
        if status != "ok":
            raise RuntimeError(f"benchmark process failed ({spec['mode']} {spec['variants']}, exit {proc.exitcode}):\n{payload}")
        return payload


def _env(args) -> dict:
    import torch

    env = harness.environment(args.device)
    env["torch_threads"] = args.threads or torch.get_num_threads()
    try:
        from verl.utils.torch_functional import FLAH_ATTN_CROSS_ENTROPY_LOSS_AVAILABLE as flash_ce
    except Exception:
        flash_ce = None
    env["verl_logprobs_path"] = "flash-attn cross_entropy" if flash_ce else "torch (logprobs_from_logits_v2)"
    return env


def _med(xs):
    return statistics.median(xs) if xs else None


def _ratio(a, b):
    return (a / b) if (a is not None and b) else None


def aggregate(tokens: int, timing: dict | None, memory: dict, variants) -> dict:
    out = {"tokens": tokens, "variants": {}}
    for v in variants:
        row = {}
        if timing is not None:
            runs = timing["runs"][v]
            row.update(
                time_s_median=_med([r["time_s"] for r in runs]),
                time_s_all=[r["time_s"] for r in runs],
                cpu_s_median=_med([r["cpu_s"] for r in runs]),
                phases_s_median={
                    k: _med([r[k] for r in runs]) for k in ("forward_logprob_s", "entropy_s", "loss_s", "backward_s")
                },
            )
            if "erc_clipfrac" in runs[0]:
                row["erc_clipfrac"] = runs[0]["erc_clipfrac"]
            if v in timing.get("onpolicy_max_abs_ratio_minus_1", {}):
                row["onpolicy_max_abs_ratio_minus_1"] = timing["onpolicy_max_abs_ratio_minus_1"][v]
        if v in memory:
            m = memory[v]
            row.update(
                peak_mem_bytes=m["peak_mem_bytes"],
                mem_before_step_bytes=m["mem_before_step_bytes"],
                step_mem_bytes=m["peak_mem_bytes"] - m["mem_before_step_bytes"],
                mem_kind=m["mem_kind"],
                memory_process_step_s=[s["time_s"] for s in m["steps"]],
            )
        out["variants"][v] = row
    out["ratios"] = {}
    for v in variants:
        ref = REFERENCE.get(v, "baseline")
        if v == ref or ref not in out["variants"]:
            continue
        row, base = out["variants"][v], out["variants"][ref]
        paired = extra = None
        if timing is not None:
            # rounds run the variants back to back, so a round's ratio sees the same machine load
            b_runs, v_runs = timing["runs"][ref], timing["runs"][v]
            paired = _med([x["time_s"] / y["time_s"] for x, y in zip(v_runs, b_runs)])
            # the variants differ only in the entropy phase (+ the O(tokens) mask): its median
            # over the reference's median step, a low-noise estimate of the overhead
            extra = 1.0 + (row["phases_s_median"]["entropy_s"] - base["phases_s_median"]["entropy_s"]) / base[
                "time_s_median"
            ]
        out["ratios"][f"{v}/{ref}"] = {
            "time": _ratio(row.get("time_s_median"), base.get("time_s_median")),
            "time_paired_median": paired,
            "time_from_entropy_phase": extra,
            "cpu_time": _ratio(row.get("cpu_s_median"), base.get("cpu_s_median")),
            "peak_mem": _ratio(row.get("peak_mem_bytes"), base.get("peak_mem_bytes")),
            "step_mem": _ratio(row.get("step_mem_bytes"), base.get("step_mem_bytes")),
        }
    return out


def check_targets(result: dict) -> dict:
    r = result["ratios"].get("erc/baseline", {})
    naive_mem = result["variants"].get("naive", {}).get("peak_mem_bytes")
    erc_mem = result["variants"].get("erc", {}).get("peak_mem_bytes")
    checks = {
        "tokens": result["tokens"],
        "erc_time_ratio": r.get("time"),
        "erc_time_ratio_ok": r.get("time") is not None and r["time"] <= TARGETS["erc_time_ratio_max"],
        "erc_mem_ratio": r.get("peak_mem"),
        "erc_mem_ratio_ok": r.get("peak_mem") is not None and r["peak_mem"] <= TARGETS["erc_mem_ratio_max"],
        "erc_mem_below_naive": (erc_mem is not None and naive_mem is not None and erc_mem < naive_mem),
    }
    checks["all_ok"] = bool(checks["erc_time_ratio_ok"] and checks["erc_mem_ratio_ok"] and checks["erc_mem_below_naive"])
    return checks


def _mib(b):
    return "-" if b is None else f"{b / 2**20:,.0f}"


def _fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def format_table(report: dict) -> str:
    mem_label = "peak GPU MiB" if report["config"]["device"] == "cuda" else "peak RSS MiB"
    lines = []
    hdr = f"{'tokens':>6}  {'variant':<14}{'time s (med)':>13}{'cpu s':>9}{'entropy s':>10}{mem_label:>14}{'step MiB':>10}"
    lines += [hdr, "-" * len(hdr)]
    for res in report["results"]:
        for v, row in res["variants"].items():
            lines.append(
                f"{res['tokens']:>6}  {v:<14}{_fmt(row.get('time_s_median')):>13}{_fmt(row.get('cpu_s_median'), '.2f'):>9}"
                f"{_fmt((row.get('phases_s_median') or {}).get('entropy_s')):>10}"
                f"{_mib(row.get('peak_mem_bytes')):>14}{_mib(row.get('step_mem_bytes')):>10}"
            )
        for name, r in res["ratios"].items():
            lines.append(
                f"{res['tokens']:>6}  {name:<23} time x{_fmt(r['time'])} (paired x{_fmt(r['time_paired_median'])},"
                f" entropy phase x{_fmt(r['time_from_entropy_phase'])})  cpu x{_fmt(r['cpu_time'])}"
                f"  peak mem x{_fmt(r['peak_mem'])}  step mem x{_fmt(r['step_mem'])}"
            )
        lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="r1-distill-1.5b", help="model shape preset")
    p.add_argument("--hidden", type=int, help="hidden size (overrides the preset)")
    p.add_argument("--intermediate", type=int, help="MLP intermediate size (overrides the preset)")
    p.add_argument("--heads", type=int, help="attention heads (overrides the preset)")
    p.add_argument("--kv-heads", type=int, help="key/value heads (overrides the preset)")
    p.add_argument("--vocab", type=int, help="vocabulary size (overrides the preset)")
    p.add_argument(
        "--layers", type=int,
        help=f"decoder layers (default: the preset's on cuda, {DEFAULT_CPU_LAYERS} on cpu so it fits a CPU)",
    )
    p.add_argument("--tokens", type=int, nargs="+", default=[512, 2048], help="tokens per micro-batch (total_nnz)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per variant (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    p.add_argument("--memory-steps", type=int, default=1, help="steps in each fresh memory process")
    p.add_argument(
        "--malloc-mmap-threshold", type=int, default=128 * 1024,
        help="CPU memory runs: fix glibc's mmap threshold to this many bytes so peak RSS tracks live "
        "tensors, not allocation history (0: leave glibc's dynamic threshold)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory runs")
    p.add_argument("--no-timing", action="store_true", help="skip the interleaved timing run")
    p.add_argument("--variants", nargs="+", choices=ALL_VARIANTS, default=list(DEFAULT_VARIANTS))
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="model/compute dtype; bfloat16 runs forward+loss under autocast as verl's engine does")
    p.add_argument("--chunk-size", type=int, help="entropy_no_grad chunk_size (default: the package's)")
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing (verl's actor default)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads in the benchmark processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", default="erc_overhead.json", help="where to write the JSON report")
    p.add_argument("--check", action="store_true", help="exit 1 if the targets are missed at the largest token count")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    for v in list(args.variants):  # each variant's reference runs too
        ref = REFERENCE.get(v, "baseline")
        if ref not in args.variants:
            args.variants = [ref] + list(args.variants)
    shape = dict(SHAPES[args.shape])
    if args.layers is None and args.device == "cpu":
        shape["layers"] = min(shape["layers"], DEFAULT_CPU_LAYERS)
    for k in ("hidden", "intermediate", "heads", "kv_heads", "vocab", "layers"):
        if getattr(args, k, None) is not None:
            shape[k] = getattr(args, k)
    if args.chunk_size is None:
        from verl_erc.erc.entropy import DEFAULT_CHUNK_SIZE

        args.chunk_size = DEFAULT_CHUNK_SIZE
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("--device cuda but torch.cuda.is_available() is False", file=sys.stderr)
            return 2

    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    config = dict(
        shape_preset=args.shape, **shape, tokens=args.tokens, repeats=args.repeats, warmup=args.warmup,
        memory_steps=args.memory_steps, malloc_mmap_threshold=args.malloc_mmap_threshold, variants=args.variants, device=args.device, dtype=args.dtype,
        chunk_size=args.chunk_size, grad_ckpt=args.grad_ckpt, threads=args.threads, seed=args.seed,
        loss="verl vanilla (DAPO) clip_ratio_low=0.2 clip_ratio_high=0.28, token-mean",
        erc=dict(beta_low=BETA_LOW, beta_high=BETA_HIGH, entropy_eps=ENTROPY_EPS),
        prompt_fraction=0.25, targets=TARGETS,
    )
    report = {"benchmark": "erc_overhead", "schema": 1, "env": _env(args), "config": config, "results": []}
    t_start = time.time()
    launcher = _Launcher()
    for T in args.tokens:
        base_spec = dict(
            shape, tokens=T, device=args.device, dtype=args.dtype, chunk_size=args.chunk_size, seed=args.seed,
            grad_ckpt=args.grad_ckpt, threads=args.threads, repeats=args.repeats, warmup=args.warmup,
            memory_steps=args.memory_steps, malloc_mmap_threshold=args.malloc_mmap_threshold,
        )
        memory = {}
        if not args.no_memory:
            for v in args.variants:
                log(f"[{T} tokens] memory: fresh process for {v} ...")
                memory[v] = launcher.run(dict(base_spec, mode="memory", variants=[v]))
                log(f"[{T} tokens]   {v}: peak {_mib(memory[v]['peak_mem_bytes'])} MiB")
        timing = None
        if not args.no_timing:
            log(f"[{T} tokens] timing: {args.variants} interleaved, {args.warmup} warm-up + {args.repeats} rounds ...")
            timing = launcher.run(dict(base_spec, mode="timing", variants=list(args.variants)))
        res = aggregate(T, timing, memory, args.variants)
        src = (timing or next(iter(memory.values()), {})).get("erc_functions")
        res["erc_functions"] = src
        report["results"].append(res)
    report["env"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report["env"]["wall_s_total"] = round(time.time() - t_start, 1)
    largest = max(report["results"], key=lambda r: r["tokens"])
    report["targets_at_largest_tokens"] = check_targets(largest)

    table = format_table(report)
    print(table)
    tc = report["targets_at_largest_tokens"]
    if {"erc", "naive"} <= set(args.variants):  # the targets compare these two with the baseline
        print(
            f"targets at {tc['tokens']} tokens: ERC time x{_fmt(tc['erc_time_ratio'])} (<= {TARGETS['erc_time_ratio_max']}: "
            f"{'ok' if tc['erc_time_ratio_ok'] else 'MISSED'}), ERC peak mem x{_fmt(tc['erc_mem_ratio'])} "
            f"(<= {TARGETS['erc_mem_ratio_max']}: {'ok' if tc['erc_mem_ratio_ok'] else 'MISSED'}), "
            f"below naive: {'ok' if tc['erc_mem_below_naive'] else 'MISSED'}"
        )
    if args.json_out:
        harness.write_report(args.json_out, report)
    return 1 if (args.check and not tc["all_ok"]) else 0


if __name__ == "__main__":
    sys.exit(main())
