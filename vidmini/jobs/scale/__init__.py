"""Summarize past one process: `ray.py` runs a summarize job's files on a Ray cluster (`--ray`). The driver loop
that writes the report is summarize.run_job, shared with the plain loop and `--devices` (vidmini/jobs/workers.py)."""
