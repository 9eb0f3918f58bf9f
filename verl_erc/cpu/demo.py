"""``python -m verl_erc.cpu.demo``, the laptop demo's earlier name: it runs :mod:`verl_erc.laptop.demo`."""

import sys

from verl_erc.laptop.demo import main

if __name__ == "__main__":
    sys.exit(main())
