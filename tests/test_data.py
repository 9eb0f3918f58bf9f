"""``python -m verl_erc.data`` on fixtures in the hub datasets' schemas (tests/fixtures/)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from verl_erc.data import BENCHMARKS, INSTRUCTION, SPECS, DataError, convert, load_source

FIXTURES = Path(__file__).parent / "fixtures"
SOURCES = {
    "train": "klear_mathsub_30k.json",
    "aime24": "aime24.jsonl",
    "aime25": "aime25.parquet",
    "hmmt25": "hmmt25.parquet",
    "amc23": "amc23.jsonl",
    "math500": "math500.jsonl",
    "olympiadbench": "olympiadbench.parquet",
}


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "verl_erc.data", *args], capture_output=True, text=True, env=env)


def source_args(names=SOURCES):
    return [arg for name in names for arg in ("--source", f"{name}={FIXTURES / SOURCES[name]}")]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    result = run_cli("--out-dir", str(out), *source_args())
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.process
def test_writes_verl_rows_for_every_dataset(prepared):
    train = pd.read_parquet(prepared / "train.parquet")
    assert list(train.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    assert len(train) == 4 and set(train.data_source) == {"train"}
    row = train.iloc[1]
    assert list(row.prompt) == [
        {"role": "user", "content": f"What is the sum of all positive divisors of $36$?\n{INSTRUCTION}"}
    ]
    assert row.reward_model == {"style": "rule", "ground_truth": "91"}
    assert row.extra_info == {"split": "train", "index": 1}
    # a problem that already ends with the instruction does not get it twice
    assert train.iloc[3].prompt[0]["content"].count(INSTRUCTION) == 1


@pytest.mark.process
def test_validation_set_reports_per_benchmark_with_avg_at_k(prepared):
    val = pd.read_parquet(prepared / "val.parquet")
    assert set(val.data_source) == set(BENCHMARKS)
    k = val.groupby("data_source")["__rollout_n__"].unique().to_dict()
    assert {name: list(v) for name, v in k.items()} == {
        "aime24": [32], "aime25": [32], "hmmt25": [32], "amc23": [32], "math500": [4], "olympiadbench": [4]
    }
    for name in BENCHMARKS:
        alone = pd.read_parquet(prepared / f"{name}.parquet")
        assert len(alone) == 2 and set(alone.data_source) == {name}
    assert all(p[0]["content"].endswith(INSTRUCTION) and p[0]["role"] == "user" for p in val.prompt)


@pytest.mark.process
def test_answers_normalised_from_each_schema(prepared):
    truth = {
        name: [r["ground_truth"] for r in pd.read_parquet(prepared / f"{name}.parquet").reward_model]
        for name in BENCHMARKS
    }
    assert truth["aime24"] == ["376", "030"]  # string column, kept as written
    assert truth["aime25"] == ["14", "17"]  # int64 column
    assert truth["hmmt25"] == ["1", "2\\sqrt{2}"]
    assert truth["amc23"] == ["55", "52"]  # float column (55.0)
    assert truth["math500"] == ["15", "\\frac{1}{2}"]
    assert truth["olympiadbench"] == ["3, -3", "12"]  # list column with $...$ delimiters


@pytest.mark.process
def test_verl_dataset_reads_the_output(prepared):
    """verl's own RLHFDataset loads the files and hands __rollout_n__ to the V1 trainer per row."""
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 1024, "filter_overlong_prompts": False})
    dataset = RLHFDataset(data_files=str(prepared / "val.parquet"), tokenizer=None, config=config)
    assert len(dataset) == 12
    row = dataset[0]
    assert row["data_source"] == "aime24" and row["__rollout_n__"] == 32
    assert row["raw_prompt"][0]["content"].startswith("Find the remainder")


def write_jsonl(path: Path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


BAD_AIME = [
    {"id": 1, "problem": "What is 1+1?", "answer": "2"},
    {"id": 2, "problem": "   ", "answer": "3"},
    {"id": 3, "problem": "What is 2+2?", "answer": None},
    {"id": 4, "problem": "What is 3+3?", "answer": "6"},
]


@pytest.mark.process
def test_bad_rows_fail_with_their_index(tmp_path):
    bad = write_jsonl(tmp_path / "aime24.jsonl", BAD_AIME)
    result = run_cli("--out-dir", str(tmp_path / "out"), "--only", "aime24", "--source", f"aime24={bad}")
    assert result.returncode == 1
    assert "2 bad row(s) in aime24" in result.stderr
    assert "aime24 row 1: empty problem" in result.stderr and "aime24 row 2: missing answer" in result.stderr
    assert not (tmp_path / "out" / "aime24.parquet").exists()


@pytest.mark.process
def test_skip_bad_lists_and_drops_them(tmp_path):
    bad = write_jsonl(tmp_path / "aime24.jsonl", BAD_AIME)
    result = run_cli("--out-dir", str(tmp_path / "out"), "--only", "aime24", "--source", f"aime24={bad}", "--skip-bad")
    assert result.returncode == 0, result.stderr
    assert "skipped aime24 row 1: empty problem" in result.stderr
    assert "skipped aime24 row 2: missing answer" in result.stderr
    rows = pd.read_parquet(tmp_path / "out" / "aime24.parquet")
    assert [r["ground_truth"] for r in rows.reward_model] == ["2", "6"]
    assert [e["index"] for e in rows.extra_info] == [0, 3]  # source indices kept


def test_training_row_without_ground_truth_is_reported():
    frame = pd.read_json(FIXTURES / SOURCES["train"], lines=True, dtype=False)
    frame.at[2, "reward_model"] = {"ground_truth": "", "style": "rule"}
    with pytest.raises(DataError, match="train row 2: missing answer"):
        convert(frame, "train")


@pytest.mark.process
def test_val_parquet_collects_benchmarks_converted_one_at_a_time(tmp_path):
    for name in ("math500", "amc23"):
        result = run_cli("--out-dir", str(tmp_path), "--only", name, *source_args([name]))
        assert result.returncode == 0, result.stderr
    val = pd.read_parquet(tmp_path / "val.parquet")
    assert list(val.data_source) == ["amc23", "amc23", "math500", "math500"]
    assert "not yet converted: aime24, aime25, hmmt25, olympiadbench" in result.stdout


@pytest.mark.process
def test_clear_errors_for_sources(tmp_path):
    missing = run_cli("--out-dir", str(tmp_path), "--only", "aime24", "--source", f"aime24={tmp_path}/nope.jsonl")
    assert missing.returncode == 1 and "nope.jsonl: no such file" in missing.stderr
    typo = run_cli("--out-dir", str(tmp_path), "--source", "aime2024=x.jsonl")
    assert typo.returncode == 1 and "expected NAME=PATH_OR_HUB_ID" in typo.stderr
    offline = run_cli("--out-dir", str(tmp_path), "--only", "aime24", env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert offline.returncode == 1
    assert "HuggingFaceH4/aime_2024: cannot load from the hub" in offline.stderr and "--source" in offline.stderr
    (tmp_path / "a.csv").write_text("problem,answer\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_source(str(tmp_path / "a.csv"), SPECS["aime24"])
