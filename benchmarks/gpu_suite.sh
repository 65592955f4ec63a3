#!/usr/bin/env bash
# The GPU benchmark suite in one command (what it measures: benchmarks/gpu_suite.py).
#   bash benchmarks/gpu_suite.sh             # on a machine with a CUDA GPU and the project installed
#   bash benchmarks/gpu_suite.sh --dry-run   # anywhere: every stage for a few steps on the CPU
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" benchmarks/gpu_suite.py "$@"   # PYTHON: another interpreter than the one on PATH
