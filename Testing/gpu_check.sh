#!/usr/bin/env bash
# GPU check for issues 6 and 13: CoralBay U96B (F=48) and U96H (F=192, lightweight decoder), 96^3 windows, 14 structures, random
# weights, on a 192^3 phantom at 1.5 mm; ours against the plain MONAI path in fp32 and bf16,
# with the achieved fraction of the GPU's peak bf16 rate and peak GPU memory. One run, under 10 minutes.
# Then the teach case of issue 24 (benchmarks/interactive/teach_gpu.py: the teach loop of the phantom
# targets on the device, and a teach's cost at U96B's size; teach-gpu.json), also under 10 minutes.
# With one lent machine's 15 minutes, run the stages as separate calls:
#   GPU_CHECK_STAGES=bench bash Testing/gpu_check.sh OUT     and     GPU_CHECK_STAGES=teach bash Testing/gpu_check.sh OUT
#
# On a machine whose python3 has CUDA PyTorch but not MONAI/SimpleITK (the lent GPU machines),
# carry the missing wheels in .whl/ (prepared on a machine with pip, Python 3.12 wheels):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl monai==1.6.1 simpleitk==2.5.7 nibabel==5.4.2 pynrrd==1.1.3 importlib_resources==7.1.0
# and this script installs them into /tmp/site first.
# Usage: [GPU_CHECK_STAGES=bench,teach] bash Testing/gpu_check.sh [OUT_DIR] [extra options of python -m coralbay_bench.gpu_check]
set -euo pipefail
source "$(dirname "$0")/gpu_env.sh"   # OUT, PY, the carried wheels and PYTHONPATH
shift || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
STAGES=",${GPU_CHECK_STAGES:-bench,teach},"
if [[ "$STAGES" == *,bench,* ]]; then
  timeout 570 "$PY" -m coralbay_bench.gpu_check --out "$OUT" "$@"
fi
if [[ "$STAGES" == *,teach,* ]]; then
  timeout 570 "$PY" benchmarks/interactive/teach_gpu.py --device cuda --out "$OUT"
fi
