#!/usr/bin/env bash
# Quick start 1: set up, then quantize the official BasicVSR on the embedded calibration clips and
# compare FP vs quantized quality on a real clip (a few minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/vsrq demo --overwrite "$@"
