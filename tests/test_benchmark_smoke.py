"""benchmarks/erc_overhead.py runs end to end (tiny shape, CPU) and writes a complete JSON report.

Nothing is timed against a threshold here: CI only checks that the benchmark works.
"""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_benchmark(script: str, args: list[str], cwd) -> subprocess.CompletedProcess:
    """Run ``benchmarks/<script>`` on the CPU; assert it exits 0."""
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", script), *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=str(cwd),
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
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
        assert res["erc_functions"] == "verl_erc.entropy + verl_erc.losses"
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


def test_noise_floor_benchmark_end_to_end(tmp_path):
    """benchmarks/erc_noise_floor.py on a tiny vocabulary: both dtypes, the plot and a complete JSON report."""
    out, png = tmp_path / "noise.json", tmp_path / "noise.png"
    proc = run_benchmark("erc_noise_floor.py", ["--vocab", "2000", "--hidden", "48", "--intermediate", "96",
                                                "--sequences", "2", "--seq-len", "32", "--scales", "2", "30",
                                                "--json-out", str(out), "--plot", str(png)], tmp_path)
    assert "smallest entropy_atol under 0.1 %" in proc.stdout
    report = json.loads(out.read_text())
    bf16, fp32 = report["results"]["bfloat16"], report["results"]["float32"]
    for res in (bf16, fp32):
        assert res["tokens"] == 2 * 2 * 32
        assert sum(b["tokens"] for b in res["by_h_old"]) == res["tokens"]
        fracs = [res["clipfrac_by_atol"][k] for k in sorted(res["clipfrac_by_atol"], key=float)]
        assert fracs == sorted(fracs, reverse=True) and fracs[0] == res["outside_band"]  # atol only keeps more
    # pass B's other accumulation order changed some entropies (the two passes are not one computation)
    assert bf16["identical"] < 1 and fp32["identical"] < 1
    assert png.stat().st_size > 5000
