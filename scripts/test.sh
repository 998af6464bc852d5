#!/usr/bin/env bash
# Quick start 2 (and CI): set up, then run the test suite (CPU only, a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# two worker processes of one torch thread each (VSRQ_TEST_WORKERS=0: one process, two threads)
workers=${VSRQ_TEST_WORKERS:-2}
.venv/bin/python -m pytest -q $([ "$workers" -gt 0 ] && echo "-n $workers") "$@"
