#!/bin/bash
# The CPU benchmark queue behind docs/benchmarks.md, one run at a time (about 35 minutes on 2 cores).
# Usage: bash benchmarks/run_cpu.sh [NAME ...]   (no names: every run)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/CoralBaySlicer:$PWD/benchmarks"
PY="${PYTHON:-python3}"  # the environment coralbay is installed in, e.g. PYTHON=.venv/bin/python
OUT=benchmarks/cpu
LUNG=../shared/data/pyradiomics/lung1_image.nrrd
mkdir -p $OUT
declare -A RUNS=(
  # The targets (issue 6): the trained demo bundle on lung1 at 1.5 mm; 300^3 with a 14-class head.
  [lung1-1.5mm-demo]="$LUNG --resample-to 1.5 --model demo-phantom-seg --overlap 0.5 --repeat 3"
  [lung1-1.5mm-demo-labels]="$LUNG --resample-to 1.5 --model demo-phantom-seg --overlap 0.5 --baseline-invert labels --restore nearest"
  [phantom300-demo-arch-14cls]="--synthetic 300 --classes 14 --model demo-phantom-seg --overlap 0.5"
  [phantom300-standin-14cls-ov0]="--synthetic 300 --classes 14 --feature-size 6 --window 64 --overlap 0"
  # The same two against the label-first MONAI variant.
  [phantom300-demo-arch-14cls-labels]="--synthetic 300 --classes 14 --model demo-phantom-seg --overlap 0.5 --baseline-invert labels"
  [phantom300-standin-14cls-ov0-labels]="--synthetic 300 --classes 14 --feature-size 6 --window 64 --overlap 0 --baseline-invert labels"
  # Scaling with the demo bundle: volume size at overlap 0.5, overlap at 300^3 (113^3 model voxels).
  [scale-size100]="--synthetic 100 --model demo-phantom-seg --overlap 0.5"
  [scale-size150]="--synthetic 150 --model demo-phantom-seg --overlap 0.5"
  [scale-size200]="--synthetic 200 --model demo-phantom-seg --overlap 0.5"
  [scale-size250]="--synthetic 250 --model demo-phantom-seg --overlap 0.5"
  [scale-size300]="--synthetic 300 --model demo-phantom-seg --overlap 0.5"
  [scale-size300-ov0]="--synthetic 300 --model demo-phantom-seg --overlap 0"
  [scale-size300-ov025]="--synthetic 300 --model demo-phantom-seg --overlap 0.25"
  [scale-size300-ov075]="--synthetic 300 --model demo-phantom-seg --overlap 0.75"
  # Diagnostic: the random 14-class head with our body crop switched off (see docs/benchmarks.md).
  [diag-phantom300-demo-arch-14cls-nocrop]="--synthetic 300 --classes 14 --model demo-phantom-seg --overlap 0.5 --no-crop"
)
ORDER=(lung1-1.5mm-demo lung1-1.5mm-demo-labels phantom300-demo-arch-14cls phantom300-standin-14cls-ov0
       phantom300-demo-arch-14cls-labels phantom300-standin-14cls-ov0-labels
       scale-size100 scale-size150 scale-size200 scale-size250 scale-size300
       scale-size300-ov0 scale-size300-ov025 scale-size300-ov075 diag-phantom300-demo-arch-14cls-nocrop)
[ $# -gt 0 ] && ORDER=("$@")
for name in "${ORDER[@]}"; do
  echo "== $name $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  # shellcheck disable=SC2086
  $PY -m coralbay bench ${RUNS[$name]} --json $OUT/$name.json > $OUT/$name.txt 2> $OUT/$name.log
  echo "rc=$? $(date +%T)"; cat $OUT/$name.txt
done
echo "ALL DONE $(date +%T)"
