#!/usr/bin/env bash
# Set up fedagg in ./.venv. Usage: scripts/setup.sh [--dev]
# torch: installs torch==2.13.0 unless torch is already in the venv (PyPI's
# Linux wheel of that release is the CUDA build, so GPU users get CUDA; where a
# CPU wheel of it lies on disk, pip takes that). Override with TORCH_SPEC=...
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
EXTRA=""
[ "${1:-}" = "--dev" ] && EXTRA="[dev]"
.venv/bin/pip install -q -e ".${EXTRA}"
