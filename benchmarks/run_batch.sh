#!/bin/bash
# Scale evidence for `coralbay batch` (docs/batch.md): 1 vs 2 local workers over 20 phantoms, the
# per-case time split and size, the local pool's look-ahead and torch threads on and off, and the
# Dask scheduler's memory over 3,000 synthetic cases; load averages before and after each run.
# Usage: bash benchmarks/run_batch.sh [OUT_DIR]   (about 10 minutes on 2 cores; OUT_DIR default /tmp/coralbay-batch-bench)
# OMP_NUM_THREADS is left unset: the local pool gives each worker cores/workers torch threads
# (the script sets it only for the run that measures 2 threads per worker).
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/CoralBaySlicer"
unset OMP_NUM_THREADS
PY="${PYTHON:-python3}"  # the environment coralbay is installed in, e.g. PYTHON=.venv/bin/python
OUT="${1:-/tmp/coralbay-batch-bench}"
mkdir -p benchmarks/batch
"$PY" benchmarks/batch_scale.py --out "$OUT" --cases 20 --synthetic 3000 --sample-every 250 | tee benchmarks/batch/run.log
cp "$OUT/batch_scale.json" benchmarks/batch/batch_scale.json
