"""``python -m verl_erc.analyze RUN --out DIR``: the paper's token-level Figures 1a, 3 and 4.

RUN is a token-record JSONL file written by :func:`verl_erc.erc.token_analysis.record_tokens`, or a directory
searched recursively for such files (``*.jsonl`` whose first line has the record's keys; all ranks
are pooled). Writes into DIR:

* ``prob_vs_entropy_ratio.png`` (Fig. 1a): old-policy probability of the sampled token vs entropy ratio.
* ``ratio_vs_entropy_ratio.png`` (Fig. 3): importance ratio vs entropy ratio, coloured by clip region.
* ``prob_vs_entropy.png`` (Fig. 4): old-policy probability vs old-policy entropy, coloured by ERC clipping.
* ``analysis.md``: token counts and clip fractions, with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from verl_erc.erc.token_analysis import RECORD_FIELDS
from verl_erc.report.runlogs import first_json_object


class TokenRecordError(ValueError):
    """No usable token records; the message names the path."""


def _is_token_file(path: Path) -> bool:
    record = first_json_object(path)
    return record is not None and set(RECORD_FIELDS) <= set(record)


def load_tokens(run: Path) -> pd.DataFrame:
    """All token records under ``run`` (a file or a directory), one row per token."""
    run = Path(run)
    if run.is_file():
        files = [run]
    elif run.is_dir():
        files = sorted(p for p in run.rglob("*.jsonl") if p.is_file() and _is_token_file(p))
    else:
        raise TokenRecordError(f"{run} does not exist")
    records = []
    for file in files:
        lines = file.read_text().splitlines()
        for lineno, line in enumerate(lines, start=1):
            try:
                records.append(json.loads(line))
            except ValueError as err:
                if lineno < len(lines):  # only the last line may be a write in progress
                    raise TokenRecordError(f"{file}:{lineno}: not a token record ({err})") from err
    frame = pd.DataFrame.from_records(records)
    if frame.empty or not set(RECORD_FIELDS) <= set(frame.columns):
        raise TokenRecordError(
            f"{run}: no ERC token records (JSONL lines with keys {', '.join(RECORD_FIELDS)}); "
            "enable actor_rollout_ref.actor.erc.analysis and point its path into the run directory"
        )
    return frame


def _scatter(ax, frame: pd.DataFrame, x: str, y: str, color: str, label: str, total: int) -> None:
    size = min(16.0, max(2.0, 4000 / total))  # larger points when there are few
    label = f"{label} ({len(frame)})"
    ax.scatter(frame[x], frame[y], s=size, alpha=0.6, color=color, linewidths=0, rasterized=True, label=label)


def _figure(title: str, xlabel: str, ylabel: str):
    fig = Figure(figsize=(6.4, 4.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _log_scale(ax, which: str) -> None:
    """Log scale on axis ``which`` ("x"/"y"), plain-number labels; minor ones too when it spans under a decade."""
    ax.set(**{f"{which}scale": "log"})
    axis = ax.xaxis if which == "x" else ax.yaxis
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axis.set_major_formatter(plain)
    low, high = axis.get_view_interval()
    axis.set_minor_formatter(plain if high / low < 10 else NullFormatter())


def _band(ax, frame: pd.DataFrame) -> None:
    """Horizontal lines at the ERC band edges 1 - beta_low and 1 + beta_high."""
    for edge in sorted({1 - frame["beta_low"].iloc[0], 1 + frame["beta_high"].iloc[0]}):
        ax.axhline(edge, color="black", linestyle="--", linewidth=0.8)


def plot_prob_vs_entropy_ratio(frame: pd.DataFrame, path: Path) -> None:
    """Fig. 1a: where in probability the entropy ratio leaves the ERC band."""
    fig, ax = _figure("Sampled-token probability vs entropy ratio", "π_old(y_t)", "entropy ratio ρ_t (log scale)")
    _scatter(ax, frame, "p_old", "entropy_ratio", "tab:blue", "tokens", len(frame))
    _band(ax, frame)
    ax.set_xlim(-0.02, 1.02)
    _log_scale(ax, "y")
    ax.legend(fontsize="small", title="dashed: ERC band")
    fig.savefig(path)


def clip_region(frame: pd.DataFrame) -> pd.Series:
    """Each token's region: ERC above band, ERC below band, PPO-clipped only, or kept by both."""
    region = pd.Series("kept", index=frame.index)
    region[frame["ppo_clipped"]] = "PPO-clipped only"
    region[frame["erc_clip_low"]] = "ERC below band"
    region[frame["erc_clip_high"]] = "ERC above band"
    return region


REGION_COLORS = {
    "kept": "tab:blue",
    "PPO-clipped only": "tab:gray",
    "ERC below band": "goldenrod",
    "ERC above band": "tab:red",
}


def plot_ratio_vs_entropy_ratio(frame: pd.DataFrame, path: Path) -> None:
    """Fig. 3: importance ratio vs entropy ratio, with the PPO-clip and ERC bounds."""
    fig, ax = _figure("Clip regions", "importance ratio r_t (log scale)", "entropy ratio ρ_t (log scale)")
    region = clip_region(frame)
    for name, color in REGION_COLORS.items():
        _scatter(ax, frame[region == name], "ratio", "entropy_ratio", color, name, len(frame))
    _band(ax, frame)
    for edge in (1 - frame["clip_ratio_low"].iloc[0], 1 + frame["clip_ratio_high"].iloc[0]):
        ax.axvline(edge, color="black", linestyle=":", linewidth=0.8)
    _log_scale(ax, "x")
    _log_scale(ax, "y")
    ax.legend(fontsize="small", title="dashed: ERC band, dotted: PPO clip")
    fig.savefig(path)


def plot_prob_vs_entropy(frame: pd.DataFrame, path: Path) -> None:
    """Fig. 4: probability vs entropy of the sampled token's distribution, ERC-clipped tokens highlighted."""
    fig, ax = _figure("Probability vs entropy", "π_old(y_t)", "entropy H(π_old, t) (nats)")
    clipped = frame["erc_clip_high"] | frame["erc_clip_low"]
    _scatter(ax, frame[~clipped], "p_old", "entropy_old", "tab:blue", "not clipped by ERC", len(frame))
    _scatter(ax, frame[clipped], "p_old", "entropy_old", "tab:orange", "clipped by ERC", len(frame))
    ax.set_xlim(-0.02, 1.02)
    ax.legend(fontsize="small")
    fig.savefig(path)


FIGURES = {
    "prob_vs_entropy_ratio.png": ("Fig. 1a", plot_prob_vs_entropy_ratio),
    "ratio_vs_entropy_ratio.png": ("Fig. 3", plot_ratio_vs_entropy_ratio),
    "prob_vs_entropy.png": ("Fig. 4", plot_prob_vs_entropy),
}


def write_analysis(run: Path, out: Path) -> Path:
    """Draw the figures and ``analysis.md`` into ``out``; return the Markdown path."""
    frame = load_tokens(run)
    out.mkdir(parents=True, exist_ok=True)
    region = clip_region(frame)
    erc_only = (frame["erc_clip_high"] | frame["erc_clip_low"]) & ~frame["ppo_clipped"]
    md = [
        f"# ERC token analysis: `{run}`",
        "",
        f"{len(frame)} tokens from {frame['update'].nunique()} sampled updates. "
        f"PPO-clipped: {frame['ppo_clipped'].mean():.2%}; ERC above band: {frame['erc_clip_high'].mean():.2%}; "
        f"ERC below band: {frame['erc_clip_low'].mean():.2%}; "
        f"ERC-clipped but not PPO-clipped: {erc_only.mean():.2%}.",
        "",
        "| region | tokens |",
        "|---|---|",
        *(f"| {name} | {int((region == name).sum())} |" for name in REGION_COLORS),
        "",
    ]
    for filename, (caption, plot) in FIGURES.items():
        plot(frame, out / filename)
        md += [f"## {caption}", "", f"![{caption}]({filename})", ""]
    report = out / "analysis.md"
    report.write_text("\n".join(md))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m verl_erc.analyze",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", type=Path, metavar="RUN", help="token-record JSONL file or run directory")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    args = parser.parse_args(argv)
    try:
        report = write_analysis(args.run, args.out)
    except TokenRecordError as err:
        parser.exit(2, f"error: {err}\n")
    print(f"wrote {report} and {', '.join(FIGURES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
