#!/usr/bin/env bash
# The GPU checks, in one go: the CUDA tests, then bench/gpu.py. For a machine with an NVIDIA
# GPU and PyTorch already installed (CI has none; `make test` skips the CUDA tests).
#
#   bash scripts/gpu-check.sh [OUT_DIR]      # logs and gpu.json go to OUT_DIR (default: .)
#
# Packages the machine lacks may come as wheels in .whl/ (installed to a scratch folder).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-.}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/parley-site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/parley-site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$out/gpu.txt"
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'

status=0
timeout 240 python3 -m pytest -q -p no:cacheprovider -o addopts="" \
    tests/unit/test_cuda.py tests/unit/test_engine_slots.py tests/unit/test_scheduler.py \
    tests/unit/test_train_loop.py tests/unit/test_models.py 2>&1 | tee "$out/pytest.log" | tail -25
[ "${PIPESTATUS[0]}" = 0 ] || status=1

timeout "${BENCH_TIMEOUT_S:-300}" python3 -m bench.gpu ${BENCH_ARGS:---seconds 30} \
    >"$out/gpu.json" 2>"$out/bench.log"
rc=$?
tail -5 "$out/bench.log"
cat "$out/gpu.json"
[ "$rc" = 0 ] || status=1
exit $status
