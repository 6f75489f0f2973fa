#!/bin/bash
# The real-size benchmark queue behind BENCHMARKS.md (issue 13): CoralBay U96B (F=48) and U96H
# (F=192, lightweight decoder) with random weights, 96^3 windows at 1.5 mm, one run at a time.
# Usage: bash benchmarks/run_real_size.sh [NAME ...]   (no names: every run, in ORDER; hours on 2 cores)
#   window-*   one window's forward per path (python -m coralbay_bench.window_peak): peak added
#              memory and time; also the calibration of resources.ACTIVATION_TABLE
#   *-limited  --max-windows K: the network runs on K windows only, zero logits for the rest, so
#              the whole pipeline's memory (stitching store, restore) is measured on a whole CT
#              with a model too slow to run on every window here (times and Dice then mean nothing)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/CoralBaySlicer:$PWD/benchmarks"
PY="${PYTHON:-python3}"  # the environment coralbay is installed in, e.g. PYTHON=.venv/bin/python
OUT=benchmarks/real
LUNG=../shared/data/pyradiomics/lung1_image.nrrd
U96B="--classes 14 --feature-size 48 --window 96"
U96H="--classes 14 --feature-size 192 --window 96 --project-dims 48,48,96,192,384,768"
H_DIMS="--project-dims 48,48,96,192,384,768"
mkdir -p $OUT
declare -A RUNS=(
  # The issue's check command (U96B, 144^3 phantom, 8 windows, same window batch for both paths).
  [check-U96B-phantom144-b2]="bench --synthetic 144 $U96B --overlap 0.5 --window-batch 2 --no-crop"
  # Whole pipelines at U96B.
  [U96B-lung1-b2]="bench $LUNG --resample-to 1.5 $U96B --overlap 0.5 --window-batch 2 --no-crop"
  [U96B-lung1-b1]="bench $LUNG --resample-to 1.5 $U96B --overlap 0.5 --window-batch 1 --no-crop"
  [U96B-phantom300-b2]="bench --synthetic 300 $U96B --overlap 0.5 --window-batch 2 --no-crop"
  [U96B-phantom300-b1]="bench --synthetic 300 $U96B --overlap 0.5 --window-batch 1 --no-crop"
  # U96H on a whole chest CT (2 real windows per path, see above) and the 300^3 phantom (1), batch 1.
  [U96H-lung1-b1-limited]="bench $LUNG --resample-to 1.5 $U96H --overlap 0.5 --window-batch 1 --no-crop --max-windows 2"
  [U96B-lung1-b2-limited]="bench $LUNG --resample-to 1.5 $U96B --overlap 0.5 --window-batch 2 --no-crop --max-windows 4"
  [U96B-phantom300-b2-limited]="bench --synthetic 300 $U96B --overlap 0.5 --window-batch 2 --no-crop --max-windows 4"
  [U96H-phantom300-b1-limited]="bench --synthetic 300 $U96H --overlap 0.5 --window-batch 1 --no-crop --max-windows 1"
  # One window per path: calibration widths, U96B, U96H.
  [window-F6-w64-ours]="window --path ours --feature-size 6 --window 64"
  [window-F6-w64-monai]="window --path monai --feature-size 6 --window 64"
  [window-F12-w64-ours]="window --path ours --feature-size 12 --window 64"
  [window-F12-w64-monai]="window --path monai --feature-size 12 --window 64"
  [window-U96B-ours-b1]="window --path ours --feature-size 48 --window 96 --batch 1"
  [window-U96B-monai-b1]="window --path monai --feature-size 48 --window 96 --batch 1"
  [window-U96B-ours-b2]="window --path ours --feature-size 48 --window 96 --batch 2"
  [window-U96B-monai-b2]="window --path monai --feature-size 48 --window 96 --batch 2"
  [window-U96H-ours-b1]="window --path ours --feature-size 192 --window 96 --batch 1 $H_DIMS"
  [window-U96H-monai-b1]="window --path monai --feature-size 192 --window 96 --batch 1 $H_DIMS"
)
ORDER=(window-U96B-ours-b1 window-U96B-monai-b1 window-U96B-ours-b2 window-U96B-monai-b2
       window-F6-w64-ours window-F6-w64-monai window-F12-w64-ours window-F12-w64-monai
       check-U96B-phantom144-b2 window-U96H-ours-b1 window-U96H-monai-b1 U96H-lung1-b1-limited
       U96B-lung1-b2-limited U96H-phantom300-b1-limited U96B-phantom300-b2-limited
       U96B-lung1-b2 U96B-lung1-b1 U96B-phantom300-b2 U96B-phantom300-b1)
[ $# -gt 0 ] && ORDER=("$@")
for name in "${ORDER[@]}"; do
  echo "== $name $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  read -r kind args <<< "${RUNS[$name]}"
  if [ "$kind" = bench ]; then
    # shellcheck disable=SC2086
    $PY -m coralbay bench $args --json $OUT/$name.json > $OUT/$name.txt 2> $OUT/$name.log
  else
    # shellcheck disable=SC2086
    $PY -m coralbay_bench.window_peak $args > $OUT/$name.json 2> $OUT/$name.log
  fi
  echo "rc=$? $(date +%T)"; cat $OUT/$name.txt 2>/dev/null || cat $OUT/$name.json
done
echo "ALL DONE $(date +%T)"
