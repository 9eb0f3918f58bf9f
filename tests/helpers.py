"""What several test modules share: actor configs and composed recipes, a tiny Qwen2 through verl's engine code,
checkpoint folders and metrics files as verl writes them, the rehearsal command, docs/security.md's census tables. (Test modules import these from
here, never from each other; fixtures live in conftest.py.)"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
#: tests/old_pass_script.py, run as ``python -c`` by gloo ranks (tests/cpu_subprocess.py), tests/ on its path for
#: tests/shape_keyed.py: verl's training worker, its old pass and update (test_old_pass.py, test_submit_check.py)
OLD_PASS_SCRIPT = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
                   + (ROOT / "tests" / "old_pass_script.py").read_text())


# --- configs -------------------------------------------------------------------------------------------

def make_actor_config(loss_mode: str = "vanilla", erc=True, **overrides):
    """An actor config (ErcFSDPActorConfig) as the workers get it, for calling losses directly (``erc``: on/off with the paper's band, or a config)."""
    from verl.workers.config import PolicyLossConfig

    from verl_erc.config import ErcConfig, ErcFSDPActorConfig

    policy_loss = PolicyLossConfig(loss_mode=loss_mode, dro_beta=0.1 if loss_mode == "dro" else None)
    kwargs = dict(
        strategy="fsdp2",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=1,
        clip_ratio_low=0.2,
        clip_ratio_high=0.28,
        policy_loss=policy_loss,
        erc=erc if isinstance(erc, ErcConfig) else ErcConfig(enable=erc, beta_low=0.05, beta_high=0.05),
    )
    kwargs.update(overrides)
    return ErcFSDPActorConfig(**kwargs)




def compose_erc(overrides=()):
    """verl-erc's default config (erc_trainer) with ``overrides``."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="verl_erc.hydra_conf", version_base=None):
        return compose(config_name="erc_trainer", overrides=["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", *overrides])


# run -> (model size, method, ERC on)
RUNS = {
    "grpo_1p5b": ("1p5b", "grpo", False),
    "dapo_1p5b": ("1p5b", "dapo", False),
    "erc_dapo_1p5b": ("1p5b", "dapo", True),
    "gppo_1p5b": ("1p5b", "gppo", False),
    "erc_gppo_1p5b": ("1p5b", "gppo", True),
    "entropy_reg_1p5b": ("1p5b", "dapo", False),
    "grpo_7b": ("7b", "grpo", False),
    "dapo_7b": ("7b", "dapo", False),
    "erc_dapo_7b": ("7b", "dapo", True),
    "gppo_7b": ("7b", "gppo", False),
    "erc_gppo_7b": ("7b", "gppo", True),
    "kl_penalty_7b": ("7b", "dapo", False),
    "gspo_7b": ("7b", "gspo", False),
    "erc_gspo_7b": ("7b", "gspo", True),
}

# each 1.5B recipe with a 7B twin (same method, same ERC setting): the sizes differ in parallelism only, which the
# laptop profile sets to one process, so the two rehearsals are one program (test_rehearsals.py says which it runs)
TWINS = {"grpo_1p5b": "grpo_7b", "dapo_1p5b": "dapo_7b", "erc_dapo_1p5b": "erc_dapo_7b", "gppo_1p5b": "gppo_7b",
         "erc_gppo_1p5b": "erc_gppo_7b"}

#: official variant -> its paper-text recipe
OFFICIAL = {f"{name}_official": name for name in ("erc_dapo_7b", "dapo_7b", "erc_gppo_7b", "gppo_7b", "erc_dapo_1p5b",
                                                  "dapo_1p5b", "erc_gppo_1p5b", "gppo_1p5b")}


# --- a tiny Qwen2 through verl's engine code (no FSDP, no process group) --------------------------------

PROMPT_LENS = [3, 4, 2, 5]
RESPONSE_LENS = [6, 2, 5, 4]


def tiny_qwen2(seed=0):
    """A 2-layer Qwen2ForCausalLM (vocabulary 97) with a peaked lm_head, in eval mode."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, attn_implementation="sdpa",
    )
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # peaked next-token distributions, so entropies can move both ways
        model.lm_head.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(seed + 5))
    return model


def make_engine(model, pad_to_length=False):
    """The engine class the plugin registers, without FSDP/distributed set-up around it."""
    from types import SimpleNamespace

    from verl.utils import torch_functional as verl_F

    from verl_erc.hooks.engine import ErcFSDPEngineWithLMHead

    engine = object.__new__(ErcFSDPEngineWithLMHead)
    engine.module = model
    engine.use_ulysses_sp = False
    engine.ulysses_sequence_parallel_size = 1
    engine.pad_to_length = pad_to_length
    engine.pad_to_length_bucket = 16
    engine.engine_config = SimpleNamespace(entropy_checkpointing=False, entropy_from_logits_with_chunking=False)
    engine.compute_entropy_from_logits = verl_F.entropy_from_logits
    return engine


def nested(rows):
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def make_batch(use_remove_padding=True, seed=0):
    """A V1-trainer-style actor micro-batch (TensorDict) in the no-padding (nested) layout."""
    from verl.utils import tensordict_utils as tu

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, 97, (n,), generator=g) for n in PROMPT_LENS]
    responses = [torch.randint(1, 97, (n,), generator=g) for n in RESPONSE_LENS]
    n_resp = sum(RESPONSE_LENS)
    return tu.get_tensordict(
        tensor_dict={
            "input_ids": nested([torch.cat([p, r]) for p, r in zip(prompts, responses)]),
            "position_ids": nested([torch.arange(p + r) for p, r in zip(PROMPT_LENS, RESPONSE_LENS)]),
            "prompts": nested(prompts),
            "responses": nested(responses),
            "response_mask": nested([torch.ones(n, dtype=torch.int64) for n in RESPONSE_LENS]),
            "advantages": nested([torch.randn(n, generator=g) for n in RESPONSE_LENS]),
        },
        non_tensor_dict={
            "temperature": 1.0,
            "use_remove_padding": use_remove_padding,
            "dp_size": 1,
            "batch_num_tokens": n_resp,
            "global_batch_size": len(PROMPT_LENS),
        },
    )


def forward(engine, batch, **flags):
    """The engine's own prepare_model_inputs, the model, prepare_model_outputs (with the entropy hook), ``flags`` set."""
    from verl.utils import tensordict_utils as tu

    for key, value in flags.items():
        tu.assign_non_tensor(batch, **{key: value})
    inputs, output_args = engine.prepare_model_inputs(batch)
    output = engine.module(**inputs, use_cache=False)
    return engine.prepare_model_outputs(output, output_args, batch, None)


def old_pass(engine, batch):
    """verl's old-log-prob pass: log-probs + entropy, cut to response tokens like the V1 trainer."""
    from verl.workers.utils.padding import response_from_nested

    with torch.no_grad():
        out = forward(engine, batch, calculate_entropy=True)
    batch["old_log_probs"] = response_from_nested(out["log_probs"], batch["response_mask"])
    batch["entropy"] = response_from_nested(out["entropy"], batch["response_mask"])


def perturb(model, scale=0.1, seed=1):
    """Stand-in for earlier mini-batch updates: move the policy away from pi_old."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.lm_head.weight.add_(torch.randn(model.lm_head.weight.shape, generator=g) * scale)


# --- run directories as verl and verl-erc write them ---------------------------------------------------

def save_step(checkpoint_dir, step, *, complete=True, pointer=True):
    """A checkpoint folder as verl writes it: the actor's shards, then data.pt, then the pointer."""
    from verl_erc.run.checkpoints import POINTER

    folder = checkpoint_dir / f"global_step_{step}"
    (folder / "actor").mkdir(parents=True)
    (folder / "actor" / "model_world_size_1_rank_0.pt").write_bytes(b"weights")
    if complete:
        torch.save({"dataloader": step}, folder / "data.pt")
        if pointer:
            (checkpoint_dir / POINTER).write_text(str(step))
    else:
        (folder / "data.pt").write_bytes(b"PK\x03\x04 cut short")  # a zip whose end never got written
    return folder


#: the launch id of the metrics files :func:`log_run` writes
LAUNCH = "20260101-000000"


def log_run(run_dir: Path, name: str, steps: dict, launch: str = LAUNCH, backends=("file", "tensorboard")) -> None:
    """Log ``steps`` as verl's trainer does: Tracking with the file and tensorboard backends."""
    from verl.utils.tracking import Tracking

    saved = {k: os.environ.get(k) for k in ("VERL_FILE_LOGGER_PATH", "TENSORBOARD_DIR")}
    os.environ["VERL_FILE_LOGGER_PATH"] = str(run_dir / "metrics" / f"{launch}.jsonl")
    os.environ["TENSORBOARD_DIR"] = str(run_dir / "tensorboard")
    try:
        (run_dir / "metrics").mkdir(parents=True, exist_ok=True)
        tracking = Tracking("verl_erc_fixture", name, default_backend=list(backends))
        for step, data in steps.items():
            tracking.log(data=data, step=step)
        tracking.finish()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def markdown_tables(md: str) -> dict[str, dict[str, list[str]]]:
    """Markdown tables by their heading: {first cell: row cells} (bold markers stripped)."""
    tables, heading = {}, None
    for line in md.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("| ") and heading:
            cells = [c.strip().replace("**", "") for c in line.strip("|").split("|")]
            tables.setdefault(heading, {})[cells[0]] = cells[1:]
    return tables


# --- the rehearsals ----------------------------------------------------------------------------------

# 2 steps, validation once (at the last step), half the prompts per step and one agent-loop worker (the test reads
# no learning curve: a rehearsal takes ~2/3 of its time); everything else is the rehearsal's
SHORT = ["trainer.total_training_steps=2", "trainer.val_before_train=false", "data.train_batch_size=8",
         "actor_rollout_ref.rollout.agent.num_workers=1"]


def rehearse(recipe: str, runs_dir: Path, cache: Path, *overrides: str, rc: int = 0, env: dict | None = None,
             script: str = "rehearse.sh") -> str:
    """The console log of ``recipes/<script> <recipe> <overrides>`` (its exit code asserted), run as a user would."""
    extra, env = env or {}, {k: v for k, v in os.environ.items() if not k.startswith("ERC_")}
    env.pop("VERL_PLATFORM", None)  # trainer.device=cpu in the profile selects the platform
    env.update(ERC_RUNS_DIR=str(runs_dir), VERL_ERC_CACHE_DIR=str(cache), ERC_PYTHON=sys.executable, **extra)
    proc = subprocess.run(["bash", str(ROOT / "recipes" / script), recipe, *overrides],
                          cwd=runs_dir, env=env, capture_output=True, text=True, timeout=1200)
    log = proc.stdout + proc.stderr
    assert proc.returncode == rc, log[-20000:]
    return log


# --- who can reach a run: docs/security.md's census tables -------------------------------------------

#: the headings of docs/security.md's census tables
TWO_NODE_CENSUS, ONE_NODE_CENSUS = "## The sockets of a real two-node run", "## The sockets of a one-node run"
WILDCARD = {"0.0.0.0", "*", "::"}


def process_name(title: str) -> str:
    """A listening process as the census tables name it: Ray's and vLLM's process titles (``ray::WorkerDict``,
    ``VLLM::Worker``) cut at "." "(" and a parallel rank suffix, else its executable's name."""
    name = re.split(r"[.(]", title)[0] if title.startswith(("ray::", "VLLM::")) else Path(title).name
    return re.sub(r"_(TP|DP|PP|EP)\d.*$", "", name)


def security_table(heading: str) -> list[list[str]]:
    """The cells of each row of the census table under ``heading`` in docs/security.md."""
    section = (ROOT / "docs" / "security.md").read_text().split(heading)[1]
    table = section.split("| process |", 1)[1].split("\n\n")[0]
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table.splitlines()[2:]]


def documented_sockets(heading: str) -> list[tuple[list[str], list[range] | None]]:
    """Per row of the census table under ``heading``: its process names (fnmatch patterns, in backticks) and its
    ports (None: random)."""
    rows = []
    for process, _, ports, *_ in security_table(heading):
        names = re.findall(r"`([^`]+)`", process)
        numbers = re.sub(r"\(`[^`]*`\)", "", ports)
        spans = [range(int(a), int(b) + 1) for a, b in re.findall(r"(\d{4,5})-(\d{4,5})", numbers)]
        singles = [range(int(a), int(a) + 1) for a in re.findall(r"(?<![-\d])(\d{4,5})(?![-\d])", numbers)]
        rows.append((names, None if "random" in ports else spans + singles))
    return rows


def table_row(heading: str, name: str, port: int) -> int | None:
    """The index of the first row of the census table under ``heading`` that documents a socket of ``name`` on
    ``port``."""
    return next((i for i, (names, ports) in enumerate(documented_sockets(heading))
                 if any(fnmatch.fnmatchcase(name, pattern) for pattern in names)
                 and (ports is None or any(port in span for span in ports))), None)


def measured_results(heading: str) -> dict[int, set[str]]:
    """Per row of the census table under ``heading``: the probe results its last column lists (in backticks)."""
    return {i: set(re.findall(r"`([^`]+)`", row[4])) for i, row in enumerate(security_table(heading))}


def undocumented_results(heading: str, probed: list[dict]) -> list[tuple[str, int, str]]:
    """The probe results (tests/slurm/outside_probe.py) that the row of their socket in the census table under
    ``heading`` does not list: (process, port, result)."""
    documented = measured_results(heading)
    return sorted((r["process"], r["port"], r["result"]) for r in probed
                  if r["result"] not in documented.get(table_row(heading, r["process"], r["port"]), set()))
