"""The benchmarks run end to end (tiny shapes, CPU) and write complete JSON reports.

Nothing is timed against a threshold here: CI only checks that the benchmark works.
"""

import json
import os
import subprocess
import sys

import pytest
from cpu_subprocess import free_port

pytestmark = pytest.mark.process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_benchmark(script: str, args: list[str], cwd, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``benchmarks/<script>`` on the CPU; assert it exits 0."""
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", script), *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=str(cwd),
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", **(env or {})},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def test_benchmark_script_end_to_end(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_benchmark("erc_overhead.py", ["--shape", "tiny", "--tokens", "64", "96", "--repeats", "1",
                                             "--warmup", "1", "--json-out", str(out), "--quiet"], tmp_path)
    assert "erc/baseline" in proc.stdout and "naive/baseline" in proc.stdout

    report = json.loads(out.read_text())
    env = report["env"]
    for key in ("torch", "verl", "transformers", "cpu_model", "date_utc", "torch_threads"):
        assert env.get(key), key
    assert report["config"]["device"] == "cpu" and report["config"]["vocab"] == 512

    assert [r["tokens"] for r in report["results"]] == [64, 96]
    for res in report["results"]:
        assert res["erc_functions"] == "verl_erc.erc.entropy + verl_erc.erc.losses"
        assert set(res["variants"]) == {"baseline", "erc", "naive"}
        for name, row in res["variants"].items():
            assert row["time_s_median"] > 0 and len(row["time_s_all"]) == 1, name
            assert row["peak_mem_bytes"] > row["mem_before_step_bytes"] > 0, name
            assert set(row["phases_s_median"]) == {"forward_logprob_s", "entropy_s", "loss_s", "backward_s"}
        for name in ("erc", "naive"):
            # first on-policy step: current entropy == verl's old-pass entropy, so the ratio is 1
            assert res["variants"][name]["onpolicy_max_abs_ratio_minus_1"] < 1e-5
            assert 0.0 < res["variants"][name]["erc_clipfrac"] < 1.0
        for name in ("erc/baseline", "naive/baseline"):
            ratios = res["ratios"][name]
            for key in ("time", "cpu_time", "peak_mem", "step_mem"):
                assert isinstance(ratios[key], float) and ratios[key] > 0, (name, key)

    targets = report["targets_at_largest_tokens"]
    assert targets["tokens"] == 96
    assert {"erc_time_ratio", "erc_mem_ratio", "erc_mem_below_naive", "all_ok"} <= set(targets)


def test_entropy_variants_script_end_to_end(tmp_path):
    """benchmarks/entropy_variants.py: every variant runs, and the package's path equals verl's bit for bit."""
    out = tmp_path / "variants.json"
    run_benchmark("entropy_variants.py", ["--tokens", "64", "--vocab", "512", "--repeats", "1", "--json-out", str(out)],
                  tmp_path)
    rows = {row["variant"]: row for row in json.loads(out.read_text())["results"]}
    assert {"verl_unchunked", "pkg", "pkg_v0_chunk256"} <= set(rows)
    assert rows["pkg"]["values"] == "bitwise" and rows["verl_unchunked"]["values"] == "bitwise"
    for name, row in rows.items():
        assert row["wall_s_median"] > 0 and row["transient_bytes"] is not None, name


def test_bonus_variants_are_measured_against_the_entropy_bonus(tmp_path):
    """erc_overhead.py with an entropy bonus: ERC reusing verl's entropy vs computing it a second time."""
    out = tmp_path / "bonus.json"
    proc = run_benchmark("erc_overhead.py", ["--shape", "tiny", "--tokens", "64", "--repeats", "1", "--no-memory",
                                             "--variants", "erc_bonus", "erc_bonus_twice", "--json-out", str(out), "--quiet"], tmp_path)
    assert "erc_bonus/bonus" in proc.stdout and "erc_bonus_twice/bonus" in proc.stdout
    (res,) = json.loads(out.read_text())["results"]
    assert set(res["variants"]) == {"bonus", "erc_bonus", "erc_bonus_twice"}  # each with its reference
    # the same ERC mask either way: reuse changes the cost, not the decision
    assert res["variants"]["erc_bonus"]["erc_clipfrac"] == res["variants"]["erc_bonus_twice"]["erc_clipfrac"]


def test_tp_entropy_script_end_to_end(tmp_path):
    """benchmarks/tp_entropy.py: 2 gloo ranks; gathered and sharded entropies agree."""
    out = tmp_path / "tp.json"
    run_benchmark("tp_entropy.py", ["--tokens", "64", "--vocab", "4096", "--repeats", "1", "--json-out", str(out)], tmp_path)
    (res,) = json.loads(out.read_text())["results"]
    gather, sharded = res["variants"]["gather"], res["variants"]["sharded"]
    assert abs(gather["mean_entropy"] - sharded["mean_entropy"]) < 1e-5
    assert res["sharded/gather"]["time"] > 0


def test_noise_floor_benchmark_end_to_end_with_torch_and_transformers_alone(tmp_path):
    """benchmarks/erc_noise_floor.py on a tiny vocabulary, with verl, Ray and vLLM unimportable (as on a bare GPU
    machine): every precision and arm, the plot, a complete JSON report; the aligned arm is exactly 0."""
    blocked = tmp_path / "blocked"
    for name in ("verl", "ray", "vllm"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} must not be imported here')\n")
    out, png = tmp_path / "noise.json", tmp_path / "noise.png"
    proc = run_benchmark("erc_noise_floor.py", ["--vocab", "2000", "--hidden", "128", "--intermediate", "256",
                                                "--sequences", "2", "--seq-len", "32", "--scales", "2", "30",
                                                "--json-out", str(out), "--plot", str(png)], tmp_path,
                         env={"PYTHONPATH": str(blocked)})
    assert "aligned" in proc.stdout
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"bf16", "bf16_body_fp32_logits", "fp32"}
    for precision, arms in report["results"].items():
        verl, aligned = arms["verl"], arms["aligned"]
        for res in (verl, aligned):
            assert res["tokens"] == 2 * 2 * 32
            assert sum(b["tokens"] for b in res["by_h_old"]) == res["tokens"]
            assert sum(p["tokens"] for p in res["by_population"].values()) == res["tokens"]
            fracs = [res["clipfrac_by_atol"][k] for k in sorted(res["clipfrac_by_atol"], key=float)]
            assert fracs == sorted(fracs, reverse=True) and fracs[0] == res["outside_band"]  # atol only keeps more
        # the aligned pass ran the update's kernels: identical entropies
        assert aligned["identical"] == 1 and aligned["outside_band"] == 0 and aligned["abs_dH"]["max"] == 0, precision
    assert report["results"]["bf16"]["verl"]["identical"] < 1  # verl's packing ran other kernels: entropies moved
    assert png.stat().st_size > 5000


def test_old_pass_cost_benchmark_end_to_end(tmp_path):
    """benchmarks/old_pass_cost.py on a tiny model: both packings timed and measured, the same log-probs."""
    out = tmp_path / "cost.json"
    proc = run_benchmark("old_pass_cost.py", ["--hidden", "64", "--intermediate", "128", "--layers", "1", "--heads", "4",
                                              "--vocab", "512", "--sequences", "16", "--min-len", "8", "--max-len", "40",
                                              "--mini-batches", "4", "--update-tokens", "128", "--infer-tokens", "256",
                                              "--rounds", "1", "--json-out", str(out)], tmp_path,
                         env={"MASTER_PORT": str(free_port())})
    assert "aligned / verl" in proc.stdout
    report = json.loads(out.read_text())
    verl, aligned = report["results"]["verl"], report["results"]["aligned"]
    assert aligned["forwards"] > verl["forwards"]  # the update's smaller micro-batches, per mini-batch
    assert max(aligned["tokens_per_forward"]) <= 128 < max(verl["tokens_per_forward"])
    assert sum(aligned["tokens_per_forward"]) == sum(verl["tokens_per_forward"])  # the same tokens, once each
    assert report["logprob_max_abs_diff"] < 1e-5  # fp32 on this CPU: the packings agree in value
    assert report["ratios"]["time"] > 0 and report["ratios"]["peak_memory"] > 0
    assert report["environment"]["verl"] and report["environment"]["torch"]


def test_gpu_check_stops_before_any_work_without_a_gpu(tmp_path):
    """benchmarks/gpu_check.sh, the prepared GPU run, refuses a machine where torch sees no CUDA device at once."""
    proc = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_check.sh"), str(tmp_path)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode != 0 and "torch sees no CUDA device" in proc.stderr
    assert not any(tmp_path.iterdir())
