"""Offline reports of runs, read from their metrics files (runlogs): seed groups and ERC/baseline pairs (grouping),
statistics over seeds (stats), tables, plots and the written report; ``python -m verl_erc.compare`` ties them."""
