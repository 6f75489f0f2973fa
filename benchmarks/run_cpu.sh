#!/bin/bash
# Final CPU benchmark queue, one run at a time.
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/CoralBaySlicer"
PY="${PYTHON:-python3}"
OUT=benchmarks/cpu
run() { name=$1; shift; echo "== $name $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"; $PY -m coralbay bench "$@" --json $OUT/$name.json > $OUT/$name.txt 2> $OUT/$name.log; echo "rc=$? $(date +%T)"; cat $OUT/$name.txt; }
run phantom300-14cls-ov0 --synthetic 300 --classes 14 --feature-size 6 --window 64 --overlap 0
run scale-size96 --synthetic 96 --classes 8 --feature-size 6 --window 64 --overlap 0.5
run scale-size128 --synthetic 128 --classes 8 --feature-size 6 --window 64 --overlap 0.5
run scale-size96-ov0 --synthetic 96 --classes 8 --feature-size 6 --window 64 --overlap 0
run scale-size96-ov075 --synthetic 96 --classes 8 --feature-size 6 --window 64 --overlap 0.75
run scale-size64 --synthetic 64 --classes 8 --feature-size 6 --window 64 --overlap 0.5
run diag-size96-nocrop --synthetic 96 --classes 8 --feature-size 6 --window 64 --overlap 0.5 --no-crop
run lung1-1.5mm-8cls-final ../shared/data/pyradiomics/lung1_image.nrrd --resample-to 1.5 --classes 8 --feature-size 6 --window 64 --overlap 0.5
echo ALL DONE $(date +%T)
