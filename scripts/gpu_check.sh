#!/usr/bin/env bash
# The one-command device check: `gpu` tests, the speed benchmark, OUT/summary.md (see scripts/gpu_check.py).
# Usage: scripts/gpu_check.sh [OUT_DIR] [--quick]     (default OUT_DIR: $OUT, else experiments/gpu_check)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-experiments/gpu_check}"
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then out="$1"; shift; fi
exec python scripts/gpu_check.py --out "$out" "$@"
