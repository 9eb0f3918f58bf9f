"""verl-erc's hooks into verl, each through one of verl's extension points: the registrations that wait for verl's
modules (after_import), the FSDP engine with the entropy hook and the aligned old pass (engine, entropy_hook,
old_pass), and ERC inside verl's V1 trainer modes (trainer). Nothing here edits a verl file."""
