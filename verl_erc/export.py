"""``python -m verl_erc.export RUN_DIR [--step N] --out DIR``: a run's checkpoint as a Hugging Face model folder.

The actor's FSDP shards of the run's newest complete checkpoint (or ``--step N``) are merged by verl's
own model merger (``verl.model_merger``: ``FSDPModelMerger.merge_and_save``, which writes bf16
safetensors, the config, the generation config and the tokenizer verl saved beside the shards). Then
the folder is checked: it loads with ``transformers`` and, for one prompt, generates greedily the same
tokens as a model holding the checkpoint's own weights, read from the shards here (not by the merger)
and cast to the exported dtype. ``--no-verify`` skips the check (it holds the model twice in memory).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from verl_erc.run.checkpoints import is_complete, resume_point, step_folders
from verl_erc.run.launch import CONFIG_FILE

PROMPT = "What is 12 * 7? Put the final answer in \\boxed{}."


class ExportError(RuntimeError):
    """The run has no checkpoint to export, or the exported folder does not reproduce it."""


def checkpoint_dir_of(run_dir: Path) -> Path:
    """``trainer.default_local_dir`` of the run (its ``config.yaml``), else ``RUN_DIR/checkpoints``."""
    config = run_dir / CONFIG_FILE
    if config.is_file():
        from omegaconf import OmegaConf

        local_dir = OmegaConf.load(config).get("trainer", {}).get("default_local_dir")
        if local_dir:
            return Path(local_dir)
    return run_dir / "checkpoints"


def actor_folder(run_dir: Path, step: int | None) -> Path:
    """The actor's folder of the checkpoint to export: ``--step`` or the newest complete one."""
    checkpoint_dir = checkpoint_dir_of(run_dir)
    folders = step_folders(checkpoint_dir)
    complete = sorted(s for s, folder in folders.items() if is_complete(folder))
    if step is None:
        if not complete:
            raise ExportError(f"{checkpoint_dir} holds no complete checkpoint (a global_step_N folder with a whole "
                              "data.pt): has the run saved one (trainer.save_freq)?")
        folder = resume_point(checkpoint_dir).folder
    elif step not in complete:
        state = "is incomplete (a save cut short)" if step in folders else "does not exist"
        raise ExportError(f"{checkpoint_dir}/global_step_{step} {state}; complete checkpoints: {complete or 'none'}")
    else:
        folder = folders[step]
    return folder / "actor"


def checkpoint_state_dict(actor_dir: Path) -> dict[str, torch.Tensor]:
    """The full weights in the actor's FSDP shards: each rank's local piece of a sharded tensor, in rank order."""
    from torch.distributed.tensor import DTensor, Shard

    files = sorted(actor_dir.glob("model_world_size_*_rank_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    shards = [torch.load(path, map_location="cpu", weights_only=False) for path in files]
    state = {}
    for key, first in shards[0].items():
        if not isinstance(first, DTensor):
            state[key] = first
            continue
        (placement,) = first.placements[-1:]
        pieces = [shard[key].to_local() for shard in shards]
        state[key] = torch.cat(pieces, dim=placement.dim) if isinstance(placement, Shard) else pieces[0]
    return state


def merge(actor_dir: Path, out: Path) -> None:
    """verl's FSDP model merger, as ``python -m verl.model_merger merge --backend fsdp`` runs it."""
    from verl.model_merger.base_model_merger import ModelMergerConfig
    from verl.model_merger.fsdp_model_merger import FSDPModelMerger

    out.mkdir(parents=True, exist_ok=True)
    config = ModelMergerConfig(operation="merge", backend="fsdp", local_dir=str(actor_dir), target_dir=str(out),
                               hf_model_config_path=str(actor_dir / "huggingface"))
    FSDPModelMerger(config).merge_and_save()


def greedy_tokens(model, input_ids: torch.Tensor, max_new_tokens: int) -> list[int]:
    with torch.no_grad():
        output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                                do_sample=False, num_beams=1)
    return output[0, input_ids.shape[1]:].tolist()


def verify(actor_dir: Path, out: Path, prompt: str, max_new_tokens: int) -> list[int]:
    """The exported folder generates the checkpoint's greedy tokens for ``prompt``; returns them."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    exported = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    reference = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(actor_dir / "huggingface"))
    state = {key: value.to(exported.dtype) for key, value in checkpoint_state_dict(actor_dir).items()}
    missing, unexpected = reference.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if reference.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ExportError(f"the checkpoint's weights do not fit its own config: missing {missing}, unexpected {unexpected}")
    reference.to(exported.dtype).eval()
    exported.eval()
    messages = [{"role": "user", "content": prompt}]
    if tokenizer.chat_template:
        input_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        input_ids = input_ids if isinstance(input_ids, torch.Tensor) else input_ids["input_ids"]
    else:
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids
    want, got = greedy_tokens(reference, input_ids, max_new_tokens), greedy_tokens(exported, input_ids, max_new_tokens)
    if want != got:
        raise ExportError(f"{out} generates {got} for the check prompt, the checkpoint {want}")
    return got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m verl_erc.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run directory (runs/<recipe>-seed<N>)")
    parser.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: the newest complete)")
    parser.add_argument("--out", type=Path, help="the Hugging Face folder to write (new or empty)")
    parser.add_argument("--which", action="store_true", help="print the actor folder it would export, and exit")
    parser.add_argument("--prompt", default=PROMPT, help="the check's prompt")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="tokens the check generates")
    parser.add_argument("--no-verify", action="store_true", help="skip the load-and-generate check")
    args = parser.parse_args(argv)
    if not args.which and args.out is None:
        parser.error("--out is required")
    try:
        if args.which:
            print(actor_folder(args.run_dir, args.step))
            return 0
        if args.out.exists() and any(args.out.iterdir()):
            raise ExportError(f"{args.out} exists and is not empty: give a new folder")
        actor_dir = actor_folder(args.run_dir, args.step)
        print(f"verl_erc.export: merging {actor_dir} into {args.out} (verl's model merger)", flush=True)
        merge(actor_dir, args.out)
        if not args.no_verify:
            tokens = verify(actor_dir, args.out, args.prompt, args.max_new_tokens)
            print(f"verl_erc.export: {args.out} loads with transformers and generates the checkpoint's "
                  f"{len(tokens)} greedy tokens for the check prompt", flush=True)
    except ExportError as error:
        print(f"verl_erc.export: {error}", file=sys.stderr)
        return 2
    print(f"verl_erc.export: done: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
