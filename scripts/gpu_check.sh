#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py), bounded to 8 minutes, with the device's state before and after.
#   bash scripts/gpu_check.sh                         # on a machine with one CUDA GPU
#   bash scripts/gpu_check.sh --device cpu --quick    # smoke test without a GPU
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" FLWR_TELEMETRY_ENABLED=0 RAY_USAGE_STATS_ENABLED=0
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
timeout 480 "$PY" scripts/gpu_check.py "$@"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
