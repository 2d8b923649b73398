"""The preprocessing wing: shard-to-shard jobs (`jobs.run`, on a local pool or Ray) and the ops
they chain (`ops`). Imports nothing of `train/`."""

from .jobs import JobReport, run, summary

__all__ = ["JobReport", "run", "summary"]
