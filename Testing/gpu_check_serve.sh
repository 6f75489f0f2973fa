#!/usr/bin/env bash
# GPU check for issue 23: the remote engine's latency table with the engine processes on the GPU
# (per click, remote over http and TLS minus local, 50 clicks, masks compared voxel by voxel).
# A separate script from gpu_check.sh so that each stays within one lent machine's 10 minutes.
#
# Needs the serve extra on the machine's python3 besides what gpu_check.sh carries in .whl/
# (starlette, uvicorn, h11, anyio, sniffio, click, cryptography, cffi, pycparser: add their
# Python 3.12 wheels to the same pip download); they are installed into /tmp/site first.
# Usage: bash Testing/gpu_check_serve.sh [OUT_DIR] [extra options of benchmarks/serve/serve_bench.py]
# SERVE_DEVICE=cpu runs the same on a machine without a GPU (to try the script).
set -euo pipefail
source "$(dirname "$0")/gpu_env.sh"   # OUT, PY, the carried wheels and PYTHONPATH
shift || true
if ! "$PY" -c "import starlette, uvicorn, cryptography" 2>/dev/null; then
  echo "The serve extra (starlette, uvicorn, cryptography) is not installed for $PY; add its wheels to .whl/." >&2
  exit 2
fi
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 540 "$PY" benchmarks/serve/serve_bench.py --parts latency --device "${SERVE_DEVICE:-cuda}" \
  --json "$OUT/serve-latency.json" "$@"
