#!/usr/bin/env bash
# The GPU checks, in one command (at most 8 minutes), on a machine with an NVIDIA GPU and torch:
#  1. bench/gpu_check_engine.py (5 min): the in-flight engine on CUDA, greedy output against generate(),
#     and the serving benchmark's figures at concurrency 1, 4, 16 and 32;
#  2. bench/gpu_check_quant.py (3 min): an int4-weight-only build (compressed-tensors) loaded into vLLM,
#     or into transformers on CUDA where vLLM is absent, with decode tokens/s and its quality figures.
#
#   bash bench/gpu_check.sh            # from the repository root, in an environment with torch (CUDA)
#   PYTHON=/path/to/python bash bench/gpu_check.sh
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_TINY=1 bash bench/gpu_check.sh   # a dry run of the script on the CPU
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="$PWD:$PWD/operator${PYTHONPATH:+:$PYTHONPATH}"

export GPU_CHECK_DEVICE="${GPU_CHECK_DEVICE:-cuda}"
if [ "$GPU_CHECK_DEVICE" = cuda ]; then
  "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
    || { echo "gpu_check: no CUDA device visible to torch" >&2; exit 2; }
fi

rc=0
echo "== in-flight engine"
timeout --signal=INT 300 "$PYTHON" bench/gpu_check_engine.py || rc=$?
echo "== int4 (compressed-tensors)"
timeout --signal=INT 170 "$PYTHON" bench/gpu_check_quant.py || rc=$?
exit "$rc"
