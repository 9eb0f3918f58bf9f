"""The laptop toy: the tiny local Qwen2 and the toy task the rehearsals train (assets, task), and the demo that
rehearses DAPO against ERC-DAPO and compares them (demo). It runs on the CPU backend (verl_erc.cpu)."""
