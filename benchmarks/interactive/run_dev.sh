#!/bin/sh
# The interactive evaluation on DEVELOPMENT data (tune on these freely; the test set is in
# test_set.json and run_test.sh). Official CVPR 2025 protocol, box + CLICKS clicks (default 5),
# our session against Slicer's Grow from seeds and the random walker, each on its own errors.
# Run from the repository root:   sh benchmarks/interactive/run_dev.sh [realct] [totalseg] [nodule] [phantoms] [sequence]
# (no names: the first four). Writes benchmarks/interactive/dev-*.json, each stamped with the commit it measured.
# While tuning our method: EXTRA=--no-baseline SUFFIX=-mine (the baselines do not change with it;
# their curves are in the committed dev-*.json); CLICKS=10 for 10 clicks.
set -e
PY=${PY:-.venv/bin/python}
export PYTHONPATH=$PWD/CoralBaySlicer:$PWD/benchmarks OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
W=${WORK:-/tmp/coralbay-interactive-dev}
D=${DATA:-../shared/data}
CLICKS=${CLICKS:-5}
OUT=benchmarks/interactive
EVAL="$PY benchmarks/interactive/eval_with_slicer.py"
COMMON="--model demo-phantom-seg --clicks $CLICKS --cache $W/cache ${EXTRA:-}"
mkdir -p "$W"
set -- $($PY benchmarks/interactive/stamp.py --now) "$@"   # the commit measured, fixed at the start
export MEASURED_COMMIT=$1 MEASURED_DIRTY=$2; shift 2
run() {  # run NAME ARGS...: one evaluation, then the stamp
  name=$1; shift
  $EVAL "$@" $COMMON --json "$OUT/dev-$name.json"
  $PY $OUT/stamp.py "$OUT/dev-$name.json" eval_with_slicer.py "$@" $COMMON
}
PARTS=${*:-realct totalseg nodule phantoms}
for part in $PARTS; do
  case $part in
    realct)  # 16 limb sarcoma CTs, label 1 = the clinician's GTV
      PAIRS=""   # CASES="sts_001 sts_008 ..." runs a subset (SUFFIX names its JSON), e.g. two halves side by side
      for case in ${CASES:-$(cd "$D/realct_dev" && echo sts_*)}; do
        PAIRS="$PAIRS $D/realct_dev/$case/image.nii.gz $D/realct_dev/$case/label.nii.gz"
      done
      echo '{"1": "GTV_Mass"}' > "$W/realct-labels.json"   # the name in each case's labels.txt
      run realct-c$CLICKS${SUFFIX:-} $PAIRS --labels-table "$W/realct-labels.json" ;;
    totalseg)  # TotalSegmentator's example (another model's labels: agreement, not accuracy)
      run totalseg-c$CLICKS${SUFFIX:-} "$D/totalseg/example_ct_sm.nii.gz" "$D/totalseg/example_seg.nii.gz" \
        --structures kidney_left,kidney_right,liver,spleen,aorta,vertebrae_L1 ;;
    nodule)
      run lung-nodule-c$CLICKS${SUFFIX:-} "$D/pyradiomics/lung1_image.nrrd" "$D/pyradiomics/lung1_label.nrrd" ;;
    phantoms)  # dev phantom seeds (the method was tuned on these: development, never "held-out")
      PAIRS=""
      for s in 10000 10001 10002; do
        $PY -m coralbay phantom --seed $s --output "$W/p$s.nii.gz" --labels "$W/p$s-labels.nii.gz" \
          --spacing 2 --size-mm 240,200,140 --lesions no >/dev/null
        PAIRS="$PAIRS $W/p$s.nii.gz $W/p$s-labels.nii.gz"
      done
      run phantoms-c$CLICKS${SUFFIX:-} $PAIRS --structures liver,spleen,kidney_left,kidney_right,aorta,vertebrae,lung ;;
    sequence)  # across scans: dev phantoms 10003-10006 in order, each scan's accepted structures
      PAIRS=""  # proposing the next scan's first answer (--sequence); ours only, box + CLICKS clicks
      for s in 10003 10004 10005 10006; do
        $PY -m coralbay phantom --seed $s --output "$W/p$s.nii.gz" --labels "$W/p$s-labels.nii.gz" \
          --spacing 2 --size-mm 240,200,140 --lesions no >/dev/null
        PAIRS="$PAIRS $W/p$s.nii.gz $W/p$s-labels.nii.gz"
      done
      run sequence-c$CLICKS${SUFFIX:-} $PAIRS --sequence --no-baseline --structures liver,spleen,kidney_left,kidney_right,aorta,vertebrae,lung ;;
    *) echo "unknown part $part (realct, totalseg, nodule, phantoms, sequence)" >&2; exit 2 ;;
  esac
done
