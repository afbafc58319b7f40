#!/usr/bin/env bash
# The one GPU check (see benchmarks/gpu_check.py): GPU tests, then the speed table and training images/s, within
# a hard time budget. Writes gpu_check.{json,md,png}, gpu_check_tuning.json, gpu_check_pytest.log and gpu_check.log
# to $OUT (default benchmarks/results). At most 8 minutes (a 420 s section budget, killed at 480 s), compilation
# included; sections that did not fit are listed in gpu_check.md: run them in a second call, e.g.
#   OUT=/some/dir bash benchmarks/gpu_check.sh --skip pytest --models vanillanet_13,vanillanet_9,resnet50
#
#   cd /repo && OUT=/some/dir bash benchmarks/gpu_check.sh              # on the GPU machine (its own python3)
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh --dry-run       # anywhere: tiny models on the CPU
#
# Extra arguments go to gpu_check.py (--models, --skip, --budget-s, --pytest-timeout-s, --batch-size, ...).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
case " $* " in *" --dry-run "*) export TRITON_INTERPRET=1 ;; esac
timeout -k 10 "${GPU_CHECK_TIMEOUT_S:-480}" "$PY" benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
