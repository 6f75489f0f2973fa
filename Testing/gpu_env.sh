# Sourced by the GPU check scripts (gpu_check.sh, gpu_check_serve.sh): from the repository root,
# installs the wheels carried in .whl/ into /tmp/site (the lent machines' python3 has CUDA PyTorch
# but not our other dependencies), puts them and the engine and benchmarks on PYTHONPATH, and sets
# OUT (first argument, default gpu-check-results) and PY (python3 unless PYTHON is set).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${1:-gpu-check-results}"
PY="${PYTHON:-python3}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/CoralBaySlicer:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
