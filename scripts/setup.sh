#!/usr/bin/env bash
# Create .venv (once) and install vsrq with its extras. CPU-friendly: torch is installed first, pinned,
# so nothing later pulls a multi-GB CUDA build. On a machine without the local CPU wheel, point
# VSRQ_TORCH_INDEX at PyTorch's CPU index: VSRQ_TORCH_INDEX=https://download.pytorch.org/whl/cpu
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "torch==${VSRQ_TORCH_VERSION:-2.13.0}" ${VSRQ_TORCH_INDEX:+--index-url "$VSRQ_TORCH_INDEX"}
fi
.venv/bin/pip install -q -e ".[all,test]"
