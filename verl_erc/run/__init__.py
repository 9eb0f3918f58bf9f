"""The life of a run: checked before Ray starts (preflight: device, Ray address and resources), its identity across
launches (identity, launch), where it resumes (checkpoints), how it stops on request (preemption), and what it
leaves behind (cleanup)."""
