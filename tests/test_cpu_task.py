"""The rehearsals' toy task (paper-schema sources through ``python -m verl_erc.data``) and its locally built assets."""

from __future__ import annotations

import hashlib
import random

import pandas as pd
import torch

from verl_erc import data
from verl_erc.laptop import assets, task
from verl_erc.reward import last_boxed


def test_sources_are_in_the_hub_schemas_the_converter_reads(tmp_path):
    files = task.write_sources(tmp_path, repeats=2)
    assert sorted(files) == ["aime24", "math500", data.TRAIN]
    train = pd.read_json(files[data.TRAIN], lines=True)
    assert len(train) == 2 * 10 * 2 and set(train.columns) == {"data_source", "prompt", "ability", "reward_model"}
    row = train.iloc[0]
    assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"] in task.questions(int(row["reward_model"]["ground_truth"]))
    for schema, phrasing in task.HELDOUT.values():
        bench = pd.read_json(files[schema], lines=True, dtype=False)
        assert list(bench.columns) == ["problem", "answer"] and len(bench) == 10
        assert bench.iloc[3].tolist() == [phrasing.format(a=3), "3"]


def test_validation_is_held_out_from_training(tmp_path):
    """No validation prompt is a training prompt (the operands are the same ten digits, in other phrasings)."""
    paths = task.prepare(tmp_path / "raw", tmp_path / "data")
    train, val = pd.read_parquet(paths["train"]), pd.read_parquet(paths["val"])
    prompts = {name: {row[0]["content"] for row in frame["prompt"]} for name, frame in (("train", train), ("val", val))}
    assert len(prompts["train"]) == 20 and len(prompts["val"]) == 20 and not prompts["train"] & prompts["val"]
    assert {q.split("\n")[0] for q in prompts["val"]} == {q for a in task.digits() for q in task.heldout_questions(a)}


def test_prepare_converts_with_the_users_converter(tmp_path):
    paths = task.prepare(tmp_path / "raw", tmp_path / "data")
    train, val = pd.read_parquet(paths["train"]), pd.read_parquet(paths["val"])
    assert len(train) == 640 and set(train["data_source"]) == {data.TRAIN}
    assert all(r[0]["content"].endswith(data.INSTRUCTION) for r in train["prompt"])
    # two validation sources with the paper's avg@k, named as the toy's (no file named for a real benchmark is left)
    assert val.groupby("data_source")["__rollout_n__"].unique().map(list).to_dict() == {
        "toy_heldout_avg32": [32], "toy_heldout_avg4": [4]}
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["train.parquet", "val.parquet"]


def test_responses_restate_the_operand_close_the_thinking_box_a_random_digit_and_vary_in_length():
    rng = random.Random(0)
    responses = [task.response(rng, 3) for _ in range(2000)]
    assert all(r.startswith("3 times one is </think> \\boxed{") for r in responses)  # as the official reward wants
    words = [len(r.split()) - 6 for r in responses]
    assert min(words) == 0 and max(words) == task.FILLER_MAX
    assert task.FILLER_MEAN - 1 < sum(words) / len(words) < task.FILLER_MEAN
    assert {last_boxed(r) for r in responses} == {str(d) for d in range(10)}


def _digest(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix != ".parquet"  # parquet embeds writer metadata; compared as tables below
    }


def test_assets_build_deterministically(tmp_path, rehearsal_cache):
    cached = assets.asset_root()
    rebuilt = assets.build_assets(tmp_path / "b")
    assert _digest(cached) == _digest(tmp_path / "b"), (
        f"the cached assets in {cached} are not what the code builds: bump ASSET_VERSION in verl_erc/laptop/assets.py")
    for split in ("train", "val"):
        pd.testing.assert_frame_equal(pd.read_parquet(assets.asset_paths(cached)[split]), pd.read_parquet(rebuilt[split]))


def test_cache_dir_lookup(monkeypatch, tmp_path):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "explicit"))
    assert assets.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv(assets.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_dir() == tmp_path / "xdg" / "verl_erc"


def test_ensure_assets_builds_once_into_the_cache_and_prints_the_paths(rehearsal_cache, capsys):
    paths = assets.ensure_assets()
    assert paths["model"].is_dir() and paths["train"].is_file() and paths["val"].is_file()
    mtime = (paths["model"] / "model.safetensors").stat().st_mtime_ns
    assert assets.main() == 0
    assert capsys.readouterr().out.splitlines() == [f"model={paths['model']}", f"data={paths['train'].parent}"]
    assert (paths["model"] / "model.safetensors").stat().st_mtime_ns == mtime  # not rebuilt


def _prompt_ids(tokenizer, question):
    return list(tokenizer.apply_chat_template(data.chat_prompt(question), add_generation_prompt=True, tokenize=True)["input_ids"])


def test_tokenizer_and_model_fit_the_task(rehearsal_cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = assets.ensure_assets()["model"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.model_type == "qwen2" and model.config.vocab_size == len(tokenizer)
    ids = _prompt_ids(tokenizer, "What is 3 * 1?")
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "<|im_start|>" and tokens[-3:] == ["<|im_start|>", "assistant", "Ċ"]
    assert "3" in tokens  # digits are single tokens
    assert tokenizer.decode(ids, skip_special_tokens=True) == f"user\nWhat is 3 * 1?\n{data.INSTRUCTION}\nassistant\n"
    assert len(ids) <= 32  # the rehearsals' max_prompt_length is 64
    assert tokenizer.eos_token == assets.EOS_TOKEN and tokenizer.pad_token == assets.PAD_TOKEN
    assert tokenizer.convert_tokens_to_ids(assets.EOS_TOKEN) in model.generation_config.eos_token_id
    assert all(len(tokenizer.encode(str(d))) == 1 for d in range(10))


def test_model_is_warmed_up_to_the_response_format_only(rehearsal_cache):
    """It answers in the format, in responses of varying length, a few past 32 tokens; it does not know the answers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = assets.ensure_assets()["model"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    eos = tokenizer.convert_tokens_to_ids(assets.EOS_TOKEN)
    correct, boxed, lengths = [], [], []
    torch.manual_seed(0)
    for a in task.digits():
        ids = torch.tensor([_prompt_ids(tokenizer, task.questions(a)[0])] * 32)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                             max_new_tokens=32, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        for row in out[:, ids.shape[1]:].tolist():
            n = row.index(eos) + 1 if eos in row else len(row)
            answer = last_boxed(tokenizer.decode(row[:n], skip_special_tokens=True))
            lengths.append(n)
            boxed.append(answer is not None and answer.isdigit())
            correct.append(answer == str(task.answer(a)))
    assert sum(boxed) / len(boxed) > 0.7
    assert 0.03 < sum(correct) / len(correct) < 0.2
    assert sum(lengths) / len(lengths) >= 8 and min(lengths) <= 11  # 11: the restated problem, boxed digit, a word, EOS
    assert 0 < sum(n == 32 for n in lengths) / len(lengths) < 0.1  # a few run into the limit
