#!/usr/bin/env bash
# The device script: the one command to run when a GPU is lent (bench/gpu/README.md).
#   bash bench/gpu/run.sh --stage 1      # correctness, <= 7 min
#   bash bench/gpu/run.sh --stage 2      # the whole model, <= 5 min
#   bash bench/gpu/run.sh --dry-run      # both stages on the CPU (CI)
#   bash bench/gpu/run.sh --stage full-tests | --stage full-bench   # later sessions
# Writes under $OUT (the device machine's output folder), else --out DIR, else
# bench/results/<date>-gpu-run/. Exit status 1 when a part failed or timed out.
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONUNBUFFERED=1
exec "$PYTHON" bench/gpu/driver.py "$@"
