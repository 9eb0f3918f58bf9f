"""The CPU demo's tiny Qwen2 model, BPE tokenizer and parquet data, built locally on first use.

Nothing is downloaded. :func:`ensure_assets` builds, once per cache directory and asset version:

- a BPE tokenizer trained with the ``tokenizers`` library on the task's chat-formatted text
  (digits kept as single tokens, Qwen-style ``<|im_start|>``/``<|im_end|>`` chat template);
- a 2-layer Qwen2 (``Qwen2ForCausalLM``, hidden 128), randomly initialised and then warmed up
  for a few supervised steps on the answer *format* only: after any ``a+b=`` prompt, one
  uniformly random digit and EOS (:func:`warm_up_format`). Like a base model that knows how to
  answer but not what, it scores ~0.1 on the task, and RL learns the rest. Saved with the
  tokenizer as a Hugging Face model folder, so verl loads it like any checkpoint;
- the toy task's ``train.parquet`` / ``val.parquet`` (:mod:`verl_erc.cpu.task`).

Every step is seeded and single-threaded, so a version builds the same bytes run after run. The cache is
``$VERL_ERC_CACHE_DIR``, else ``$XDG_CACHE_HOME/verl_erc``, else ``~/.cache/verl_erc``. Builds go
to a temporary folder renamed into place under a file lock, so concurrent processes are safe.

Configs reach the paths through the OmegaConf resolver ``erc_cpu.asset`` (registered by
:mod:`verl_erc.cpu`): ``${erc_cpu.asset:model}``, ``${erc_cpu.asset:train}``, ``${erc_cpu.asset:val}``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from verl_erc.cpu import task

#: bump when anything below changes what gets built (the cache keeps one folder per version)
ASSET_VERSION = "v2"
SEED = 0
CACHE_ENV = "VERL_ERC_CACHE_DIR"

VOCAB_SIZE = 64
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PAD_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MODEL_KWARGS = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)
ASSET_NAMES = ("model", "train", "val")
WARM_UP = dict(steps=60, batch_size=16, lr=1e-3)


def cache_dir() -> Path:
    """Root of verl-erc's cache (see the module docstring for the lookup order)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "verl_erc"


def asset_root() -> Path:
    """The folder holding this asset version: ``<cache>/cpu_demo-<version>``."""
    return cache_dir() / f"cpu_demo-{ASSET_VERSION}"


def asset_paths(root: Path | None = None) -> dict[str, Path]:
    """Paths of the model folder and the two parquet files under ``root``."""
    root = asset_root() if root is None else root
    return {"model": root / "model", "train": root / "data" / "train.parquet", "val": root / "data" / "val.parquet"}


def asset_path(name: str) -> str:
    """Path of one asset (``model``, ``train`` or ``val``), building them all if missing."""
    if name not in ASSET_NAMES:
        raise ValueError(f"unknown verl_erc CPU asset {name!r}; expected one of {ASSET_NAMES}")
    return str(ensure_assets()[name])


def ensure_assets() -> dict[str, Path]:
    """Build the assets into the cache unless they are there; return their paths."""
    root = asset_root()
    paths = asset_paths(root)
    if root.is_dir():
        return paths
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not root.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
            try:
                build_assets(tmp)
                tmp.rename(root)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return paths


def build_assets(root: Path) -> dict[str, Path]:
    """Build tokenizer, model and data under ``root`` (deterministic)."""
    paths = asset_paths(root)
    tokenizer = build_tokenizer()
    build_model(tokenizer, paths["model"])
    task.write_parquet(paths["train"].parent, seed=SEED)
    return paths


def _corpus() -> list[str]:
    """The tokenizer's training text: every ``a+b=`` prompt and digit answer with its chat role (no special tokens)."""
    texts = []
    for a in range(10):
        for b in range(10):
            texts += [f"user\n{task.question(a, b)}\n", f"assistant\n{(a + b) % 10}\n"]
    return texts


def build_tokenizer():
    """A Qwen2 tokenizer (byte-level BPE, Qwen2's pre-tokenizer) with a vocabulary trained on :func:`_corpus`.

    The trained pipeline is exactly the one ``Qwen2Tokenizer`` rebuilds when transformers loads the
    folder (its model type is ``qwen2``), so what is saved is what verl loads. Qwen2's pattern
    splits digits into single tokens.
    """
    import json

    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False)
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    trained = json.loads(bpe.to_str())["model"]
    return Qwen2Tokenizer(
        vocab=trained["vocab"],
        merges=[tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]],
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=PAD_TOKEN,
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in (EOS_TOKEN, PAD_TOKEN)],
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_KWARGS["max_position_embeddings"],
    )


def build_model(tokenizer, out_dir: Path) -> None:
    """Save a seeded, randomly initialised tiny ``Qwen2ForCausalLM`` with ``tokenizer`` to ``out_dir``."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        **MODEL_KWARGS,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reproducible float reductions
    try:
        torch.manual_seed(SEED)
        model = Qwen2ForCausalLM(config).to(torch.float32)
        warm_up_format(model, tokenizer)
    finally:
        torch.set_num_threads(threads)
    model.generation_config = GenerationConfig(eos_token_id=[eos_id, pad_id], pad_token_id=pad_id)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def warm_up_format(model, tokenizer) -> None:
    """A few seeded supervised steps: after an ``a+b=`` prompt (any digits), answer one random digit, then EOS.

    The targets are independent of the prompt, so the model learns the answer format, not the task.
    """
    import random

    import torch

    rng = random.Random(SEED)
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    optimizer = torch.optim.AdamW(model.parameters(), lr=WARM_UP["lr"], weight_decay=0.0)
    model.train()
    for _ in range(WARM_UP["steps"]):
        rows = []
        for _ in range(WARM_UP["batch_size"]):
            messages = [{"role": "user", "content": task.question(rng.randrange(10), rng.randrange(10))}]
            prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
            rows.append((list(prompt), [*tokenizer.encode(str(rng.randrange(10))), eos_id]))
        input_ids = torch.tensor([prompt + answer for prompt, answer in rows])  # prompts have one length
        labels = torch.full_like(input_ids, -100)
        labels[:, -2:] = input_ids[:, -2:]
        loss = model(input_ids=input_ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
