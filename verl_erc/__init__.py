"""verl-erc: Entropy Ratio Clipping (arXiv 2512.05591) for verl, as a plugin.

The registrations live in :mod:`verl_erc.plugin`, which verl imports in every process that
imports verl (our ``verl.plugins`` entry point). This package module stays light.
"""

__version__ = "0.1.0"
#: verl releases this version is built and tested against.
SUPPORTED_VERL_VERSIONS = ("0.9.1",)
