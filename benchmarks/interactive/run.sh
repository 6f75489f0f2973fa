#!/bin/sh
# SUPERSEDED (issue #20) by run_dev.sh (development data) and run_test.sh (the declared test set):
# this made the earlier tables of docs/interactive.md "Benchmark" with the earlier evaluator (same
# clicks for both methods, the old random walker; phantoms 10000-10006 are development data, not
# held-out). Today's eval-interactive writes another JSON layout, which table.py does not read.
# The interactive benchmark (docs/interactive.md): phantoms, --sequence, real CT.
# Run from the repository root; writes benchmarks/interactive/*.json. Two chains run side by side
# (2 cores); ~20 min on this shared CPU.
set -e
export PYTHONPATH=$PWD/CoralBaySlicer OMP_NUM_THREADS=1
PY=${PY:-/work/main/.venv/bin/python}
W=${WORK:-/tmp/coralbay-interactive-bench}
OUT=benchmarks/interactive
D=../shared/data
ALL=liver,spleen,kidney_left,kidney_right,aorta,vertebrae,lung
mkdir -p "$W"
# Held-out phantoms (the demo encoder was trained on seeds 0-79): 2 mm, 240 x 200 x 140 mm field of view.
for s in 10000 10001 10002 10003 10004 10005 10006; do
  $PY -m coralbay phantom --seed $s --output "$W/p$s.nii.gz" --labels "$W/p$s-labels.nii.gz" --spacing 2 --size-mm 240,200,140 --lesions no >/dev/null
done
(
  for s in 10000 10001 10002; do
    $PY -m coralbay eval-interactive "$W/p$s.nii.gz" "$W/p$s-labels.nii.gz" --model demo-phantom-seg --clicks 10 \
      --cache "$W/cache" --structures $ALL --json $OUT/phantom-$s.json
  done
  $PY -m coralbay eval-interactive $D/pyradiomics/lung1_image.nrrd $D/pyradiomics/lung1_label.nrrd \
    --model demo-phantom-seg --clicks 10 --cache "$W/cache" --json $OUT/real_lung_nodule.json
) &
(
  # Across scans: 4 phantoms in order, the structures accepted on earlier ones kept.
  $PY -m coralbay eval-interactive "$W/p10003.nii.gz" "$W/p10003-labels.nii.gz" "$W/p10004.nii.gz" "$W/p10004-labels.nii.gz" \
    "$W/p10005.nii.gz" "$W/p10005-labels.nii.gz" "$W/p10006.nii.gz" "$W/p10006-labels.nii.gz" --model demo-phantom-seg \
    --clicks 10 --cache "$W/cache" --sequence --no-baseline --structures $ALL --json $OUT/sequence.json
  # Real CT: TotalSegmentator's example (its names from the labels.json beside the label map), the 3-slice DICOM liver.
  $PY -m coralbay eval-interactive $D/totalseg/example_ct_sm.nii.gz $D/totalseg/example_seg.nii.gz --model demo-phantom-seg \
    --clicks 10 --cache "$W/cache" --structures liver,spleen,kidney_left,kidney_right,aorta --json $OUT/real_totalseg.json
  $PY -m coralbay eval-interactive $D/dcmqi/ct-3slice $D/dcmqi/liver_seg.nrrd --model demo-phantom-seg --clicks 10 \
    --cache "$W/cache" --json $OUT/real_dcmqi_liver.json
) &
wait
