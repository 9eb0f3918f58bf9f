"""``python -m verl_erc.cpu.assets``, the toy assets' earlier name: it runs :mod:`verl_erc.laptop.assets`."""

import sys

from verl_erc.laptop.assets import main

if __name__ == "__main__":
    sys.exit(main())
