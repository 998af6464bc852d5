#!/usr/bin/env bash
# Quick start 2 (and CI): set up, then run the test suite (CPU only, a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
