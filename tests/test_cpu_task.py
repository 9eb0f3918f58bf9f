"""The CPU demo's toy task and its locally built assets (tokenizer, tiny Qwen2, parquet)."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest
import torch

from verl_erc.cpu import assets, task


@pytest.mark.parametrize(
    "response, truth, score",
    [
        ("7", "7", 1.0),
        ("7\n", "7", 1.0),
        (" 7 ", "7", 1.0),
        ("0", "0", 1.0),
        ("8", "7", 0.0),
        ("71", "7", 0.0),
        ("17", "7", 0.0),
        ("7.", "7", 0.0),
        ("7 is the sum", "7", 0.0),  # the answer and nothing else
        ("the sum is 7", "7", 0.0),
        ("07", "7", 0.0),
        ("", "7", 0.0),
        ("assistant", "7", 0.0),
    ],
)
def test_compute_score_hand_cases(response, truth, score):
    assert task.compute_score(task.DATA_SOURCE, response, truth) == score


def test_compute_score_refuses_other_data_sources():
    with pytest.raises(ValueError, match="digit_sum"):
        task.compute_score("openai/gsm8k", "7", "7")


def test_pairs_are_the_single_digit_successors():
    assert task.pairs() == [(a, 1) for a in range(9)]
    assert task.question(3, 1) == "3+1="


def test_parquet_rows_follow_verls_rl_dataset_layout(tmp_path):
    files = task.write_parquet(tmp_path, repeats=2, seed=0)
    train, val = pd.read_parquet(files["train"]), pd.read_parquet(files["val"])
    assert len(train) == 18 and len(val) == 9
    row = train.iloc[0]
    assert row["data_source"] == task.DATA_SOURCE
    assert list(row["prompt"]) == [{"role": "user", "content": row["prompt"][0]["content"]}]
    a, b = row["extra_info"]["a"], row["extra_info"]["b"]
    assert row["prompt"][0]["content"] == f"{a}+{b}="
    assert row["reward_model"]["ground_truth"] == str(a + b)
    # every row is scorable by the checker with its own ground truth
    for _, r in val.iterrows():
        assert task.compute_score(r["data_source"], r["reward_model"]["ground_truth"], r["reward_model"]["ground_truth"]) == 1.0


def _digest(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix != ".parquet"  # parquet embeds writer metadata; compared as tables below
    }


def test_assets_build_deterministically(tmp_path):
    first, second = assets.build_assets(tmp_path / "a"), assets.build_assets(tmp_path / "b")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    for split in ("train", "val"):
        pd.testing.assert_frame_equal(pd.read_parquet(first[split]), pd.read_parquet(second[split]))


def test_cache_dir_lookup(monkeypatch, tmp_path):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "explicit"))
    assert assets.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv(assets.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_dir() == tmp_path / "xdg" / "verl_erc"


def test_ensure_assets_builds_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path))
    paths = assets.ensure_assets()
    assert paths["model"].is_dir() and paths["train"].is_file() and paths["val"].is_file()
    mtime = (paths["model"] / "model.safetensors").stat().st_mtime_ns
    assert assets.ensure_assets() == paths
    assert (paths["model"] / "model.safetensors").stat().st_mtime_ns == mtime  # not rebuilt
    assert assets.asset_path("train") == str(paths["train"])
    with pytest.raises(ValueError, match="unknown"):
        assets.asset_path("weights")


def test_tokenizer_and_model_fit_the_task(monkeypatch, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path))
    model_dir = assets.ensure_assets()["model"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.model_type == "qwen2" and model.config.vocab_size == len(tokenizer)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "3+4="}], add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"])
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "<|im_start|>" and tokens[-3:] == ["<|im_start|>", "assistant", "Ċ"]
    assert ["3", "+", "4", "="] == tokens[3:7]  # digits are single tokens
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\n3+4=\nassistant\n"
    assert tokenizer.eos_token == assets.EOS_TOKEN and tokenizer.pad_token == assets.PAD_TOKEN
    eos = tokenizer.convert_tokens_to_ids(assets.EOS_TOKEN)
    assert eos in model.generation_config.eos_token_id
    # every digit is its own token, so a response's first digit is one sampling decision
    assert all(len(tokenizer.encode(str(d))) == 1 for d in range(10))


def test_model_is_warmed_up_to_the_answer_format_only(monkeypatch, tmp_path):
    """The demo model answers one digit and stops, but does not know the sums: it scores about 1 in 10."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path))
    model_dir = assets.ensure_assets()["model"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    scores, single_digit = [], []
    torch.manual_seed(0)
    for a, b in task.pairs():
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": task.question(a, b)}], add_generation_prompt=True, tokenize=True
        )["input_ids"]
        ids = torch.tensor([list(prompt)] * 64)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0, max_new_tokens=8)
        texts = tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
        scores += [task.compute_score(task.DATA_SOURCE, t, str(a + b)) for t in texts]
        single_digit += [len(t) == 1 and t.isdigit() for t in texts]
    assert sum(single_digit) / len(single_digit) > 0.8
    assert 0.03 < sum(scores) / len(scores) < 0.2
