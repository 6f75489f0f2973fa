#!/bin/bash
# Scale evidence for `coralbay batch` (docs/batch.md): 1 vs 2 local workers over 20 phantoms, the
# per-case time split and size, and the Dask scheduler's memory over 3,000 synthetic cases.
# Usage: bash benchmarks/run_batch.sh [OUT_DIR]   (about 5 minutes on 2 cores; OUT_DIR default /tmp/coralbay-batch-bench)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/CoralBaySlicer" OMP_NUM_THREADS=1
PY="${PYTHON:-python3}"  # the environment coralbay is installed in, e.g. PYTHON=.venv/bin/python
OUT="${1:-/tmp/coralbay-batch-bench}"
mkdir -p benchmarks/batch
"$PY" benchmarks/batch_scale.py --out "$OUT" --cases 20 --synthetic 3000 --sample-every 250 | tee benchmarks/batch/run.log
cp "$OUT/batch_scale.json" benchmarks/batch/batch_scale.json
