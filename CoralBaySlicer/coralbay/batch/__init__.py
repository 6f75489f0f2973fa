"""Cohorts: run segmentation (and optionally classification and review against ground truth) over
many scans, resumably, on a local pool of worker processes or on a Dask cluster.

cohort (what to run) -> ledger (what is already done, by recorded hashes) -> case (one scan, on
a worker with the model cached) -> local_pool / dask_backend (where it runs) -> results (tables,
summary, plot). `run_batch` in runner.py ties them together; commands/batch.py is the CLI.
"""
