#!/bin/sh
# The interactive evaluation on the TEST phantoms declared in test_set.json: run ONCE, at the end,
# on the method as it is to be reported (by the imethod engineer or the lead), then commit the JSON
# (it is stamped with the commit it measured). Refuses to overwrite an earlier test run.
# Run from the repository root:   sh benchmarks/interactive/run_test.sh
set -e
PY=${PY:-.venv/bin/python}
export PYTHONPATH=$PWD/CoralBaySlicer:$PWD/benchmarks OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
W=${WORK:-/tmp/coralbay-interactive-test}
OUT=benchmarks/interactive/test-phantoms.json
if [ -e "$OUT" ]; then echo "$OUT exists: the test set is run once (see test_set.json)." >&2; exit 1; fi
SEEDS=$($PY -c "import json; print(' '.join(map(str, json.load(open('benchmarks/interactive/test_set.json'))['phantom_seeds'])))")
OPTIONS=$($PY -c "import json; print(' '.join(json.load(open('benchmarks/interactive/test_set.json'))['phantom_options']))")
STRUCTURES=$($PY -c "import json; print(','.join(json.load(open('benchmarks/interactive/test_set.json'))['structures']))")
mkdir -p "$W"
set -- $($PY benchmarks/interactive/stamp.py --now) "$@"   # the commit measured, fixed at the start
export MEASURED_COMMIT=$1 MEASURED_DIRTY=$2; shift 2
PAIRS=""
for s in $SEEDS; do
  $PY -m coralbay phantom --seed $s --output "$W/p$s.nii.gz" --labels "$W/p$s-labels.nii.gz" $OPTIONS >/dev/null
  PAIRS="$PAIRS $W/p$s.nii.gz $W/p$s-labels.nii.gz"
done
ARGS="$PAIRS --model demo-phantom-seg --clicks 10 --structures $STRUCTURES --cache $W/cache"
$PY benchmarks/interactive/eval_with_slicer.py $ARGS --json "$OUT"
$PY benchmarks/interactive/stamp.py "$OUT" eval_with_slicer.py $ARGS
