"""Slurm: the pre-queue check of a job against its allocation (submit_check) and the job's requeue decision
(requeue). The batch scripts themselves live in slurm/."""
