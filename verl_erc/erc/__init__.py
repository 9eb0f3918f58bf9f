"""The ERC math: the paper's equations as pure functions, the entropies, verl's losses with ERC."""
