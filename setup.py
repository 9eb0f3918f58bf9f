"""verl-erc: Entropy Ratio Clipping (arXiv 2512.05591) as a verl plugin."""

import re
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (ROOT / "verl_erc" / "__init__.py").read_text()).group(1)

setup(
    name="verl-erc",
    version=VERSION,
    description="Entropy Ratio Clipping (ERC) and GPPO for verl, as a plugin",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["verl_erc", "verl_erc.*"]) + ["verl_erc.hydra_conf"],
    # the Hydra configs live at the repo root (hydra_conf/) and install as verl_erc.hydra_conf
    package_dir={"verl_erc.hydra_conf": "hydra_conf"},
    package_data={"verl_erc.hydra_conf": ["*.yaml", "**/*.yaml"]},
    install_requires=[
        # verl 0.9.1 is the supported release; its verl-core extra brings TransferQueue & co,
        # which the V1 trainer needs. verl pins transformers/tensordict; it does not pin torch.
        "verl[verl-core]==0.9.1",
        "torch>=2.7,<2.15",
        "ray[default]>=2.52,<2.61",  # 2.52: token authentication, used by the Slurm launcher
        "hydra-core>=1.3.2,<1.4",
        "math-verify>=0.8,<0.10",
        "tokenizers>=0.21",
        "pandas>=2",
        "pyarrow>=19",
        "matplotlib>=3.8",
        "tensorboard>=2.15",
        "markdown>=3.4",
        "scipy>=1.11",  # Student's t intervals and tests of the seed statistics (verl_erc/report/stats.py)
    ],
    extras_require={
        # GPU rollout: verl 0.9.1's own [vllm] set (vllm==0.24.0, torch==2.11.0, transformers==5.9.0,
        # mbridge). Pinned set: requirements/constraints-gpu.txt. flash-attn is NOT here: it ships only
        # as an sdist that imports torch at build time, so it fails in pip's isolated build. Install it
        # after this extra, with verl's pin: pip install flash-attn==2.8.3 --no-build-isolation
        "gpu": ["verl[vllm]==0.9.1"],
        "test": ["pytest>=8", "pytest-timeout>=2.3"],
    },
    entry_points={"verl.plugins": ["verl_erc = verl_erc.plugin"]},
)
