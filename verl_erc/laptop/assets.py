"""The rehearsals' tiny Qwen2 model, BPE tokenizer and parquet data, built locally on first use.

Nothing is downloaded. :func:`ensure_assets` builds, once per cache directory and asset version:

- a BPE tokenizer trained with the ``tokenizers`` library on the task's chat-formatted text
  (digits kept as single tokens, Qwen-style ``<|im_start|>``/``<|im_end|>`` chat template);
- a 2-layer Qwen2 (``Qwen2ForCausalLM``, hidden 128), randomly initialised and then warmed up
  for a few hundred supervised steps on the response *format* only: after any of the task's
  prompts, the restated problem, ``\\boxed{d}`` with a uniformly random digit, filler words, then EOS
  (:func:`warm_up_format`). Like a base model that knows how to answer but not what, it scores
  ~0.1 on the task, and RL learns the rest. Saved with the tokenizer as a Hugging Face model
  folder, so verl loads it like any checkpoint;
- the toy task's source files in the paper's schemas and their ``train.parquet`` / ``val.parquet``
  from ``python -m verl_erc.data`` (:mod:`verl_erc.laptop.task`).

Every step is seeded and single-threaded, so a version builds the same bytes run after run. The cache is
``$VERL_ERC_CACHE_DIR``, else ``$XDG_CACHE_HOME/verl_erc``, else ``~/.cache/verl_erc``. Builds go
to a temporary folder renamed into place under a file lock, so concurrent processes are safe.

``recipes/rehearse.sh`` gets the paths from ``python -m verl_erc.laptop.assets``, which builds them if
needed and prints them one per line (``model=<folder>``, ``data=<parquet folder>``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
from contextlib import redirect_stdout
from pathlib import Path

from verl_erc.laptop import task
from verl_erc.data import chat_prompt, user_prompt

#: bump when anything below changes what gets built (the cache keeps one folder per version)
ASSET_VERSION = "v9"
SEED = 0
CACHE_ENV = "VERL_ERC_CACHE_DIR"

VOCAB_SIZE = 160
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
WARM_UP = dict(steps=300, batch_size=32, lr=1e-3)


def cache_dir() -> Path:
    """Root of verl-erc's cache (see the module docstring for the lookup order)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "verl_erc"


def asset_root() -> Path:
    """The folder holding this asset version: ``<cache>/rehearsal-<version>``."""
    return cache_dir() / f"rehearsal-{ASSET_VERSION}"


def asset_paths(root: Path | None = None) -> dict[str, Path]:
    """Paths of the model folder and the two parquet files under ``root``."""
    root = asset_root() if root is None else root
    return {"model": root / "model", "train": root / "data" / "train.parquet", "val": root / "data" / "val.parquet"}


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
    with redirect_stdout(sys.stderr):  # the converter's report; stdout is main()'s
        task.prepare(root / "raw", paths["train"].parent, seed=SEED)
    return paths


def _corpus() -> list[str]:
    """The tokenizer's training text: every prompt, training and held-out, and sample responses with their chat roles
    (no special tokens)."""
    import random

    rng = random.Random(SEED)
    texts = []
    for a in range(10):
        for question in task.questions(a) + task.heldout_questions(a):
            texts += [f"user\n{user_prompt(question)}\n", f"assistant\n{task.response(rng, a)}\n"]
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
    """Seeded supervised steps: after a prompt of the task (any digit, any phrasing: training or held-out), a random
    response in its format, then EOS.

    The targets (:func:`verl_erc.laptop.task.response`) restate the prompt's operand but box a digit
    drawn independently of it, so the model learns the response format and its spread of lengths,
    not the task. RL training then sees the training phrasings only.
    """
    import random

    import torch

    rng = random.Random(SEED)
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    optimizer = torch.optim.AdamW(model.parameters(), lr=WARM_UP["lr"], weight_decay=0.0)
    model.train()
    for _ in range(WARM_UP["steps"]):
        rows = []
        for _ in range(WARM_UP["batch_size"]):
            a = rng.randrange(10)
            question = rng.choice(task.questions(a) + task.heldout_questions(a))
            prompt = tokenizer.apply_chat_template(chat_prompt(question), add_generation_prompt=True, tokenize=True)
            prompt = list(prompt["input_ids"])
            rows.append((prompt, [*tokenizer.encode(task.response(rng, a)), eos_id]))
        width = max(len(p) + len(r) for p, r in rows)
        input_ids = torch.full((len(rows), width), pad_id)
        labels = torch.full_like(input_ids, -100)
        attention_mask = torch.zeros_like(input_ids)
        for i, (prompt, answer) in enumerate(rows):
            n = len(prompt) + len(answer)
            input_ids[i, :n] = torch.tensor(prompt + answer)
            labels[i, len(prompt) : n] = torch.tensor(answer)
            attention_mask[i, :n] = 1
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def main() -> int:
    """``python -m verl_erc.laptop.assets``: build the assets if needed; print ``model=<path>`` and ``data=<path>``."""
    paths = ensure_assets()
    print(f"model={paths['model']}")
    print(f"data={paths['train'].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
