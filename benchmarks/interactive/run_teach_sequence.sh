#!/bin/sh
# The Teach-model loop measured (issue 24): `eval-interactive --teach-between-scans` over 5 phantoms
# in order, no box, 10 clicks per structure on the proposal's errors, ours only. After each scan the
# session's accepted answers are taught (the first teach from demo-phantom-seg, each later one --from
# the model taught before) and the next scan starts from the newest taught model's proposal.
# Run from the repository root:   sh benchmarks/interactive/run_teach_sequence.sh dev|test
#   dev:  development phantoms 10010-10014 (the teach examples' scans), tune freely;
#   test: the seeds declared in teach_sequence_test_set.json, run ONCE (refuses to overwrite its JSON).
# Phantom options as the teach benchmarks': --spacing 2 --size-mm 240,200,140 --lesions no.
set -e
PY=${PY:-.venv/bin/python}
export PYTHONPATH=$PWD/CoralBaySlicer:$PWD/benchmarks OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
SET=${1:?give dev or test}
W=${WORK:-/tmp/coralbay-teach-sequence-$SET}
export CORALBAY_HOME=$W/home   # the teach's crop store, private to the run
DECLARED=benchmarks/interactive/teach_sequence_test_set.json
case $SET in
  dev)  SEEDS="10010 10011 10012 10013 10014"; OUT=benchmarks/interactive/dev-teach-sequence-c10${SUFFIX:-}.json ;;
  test) SEEDS=$($PY -c "import json; print(' '.join(map(str, json.load(open('$DECLARED'))['test_phantom_seeds'])))")
        OUT=benchmarks/interactive/test-teach-sequence-c10.json
        if [ -e "$OUT" ]; then echo "$OUT exists: the test set is run once (see $DECLARED)." >&2; exit 1; fi ;;
  *) echo "unknown set $SET (dev, test)" >&2; exit 2 ;;
esac
rm -rf "$W/teach"
mkdir -p "$W"
set -- $($PY benchmarks/interactive/stamp.py --now)   # the commit measured, fixed at the start
export MEASURED_COMMIT=$1 MEASURED_DIRTY=$2
PAIRS=""
for s in $SEEDS; do
  $PY -m coralbay phantom --seed $s --output "$W/p$s.nii.gz" --labels "$W/p$s-labels.nii.gz" \
    --spacing 2 --size-mm 240,200,140 --lesions no >/dev/null
  PAIRS="$PAIRS $W/p$s.nii.gz $W/p$s-labels.nii.gz"
done
ARGS="$PAIRS --model demo-phantom-seg --clicks 10 --no-baseline --teach-between-scans --teach-dir $W/teach
  --structures liver,spleen,kidney_left,kidney_right,aorta,vertebrae,lung --cache $W/cache ${EXTRA:-}"
$PY -m coralbay eval-interactive $ARGS --json "$OUT"
$PY benchmarks/interactive/stamp.py "$OUT" coralbay eval-interactive $ARGS
