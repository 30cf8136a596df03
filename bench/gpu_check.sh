#!/usr/bin/env bash
# The prepared CUDA check (see bench/gpu_check.py): about 5 minutes on one H100/H200 host.
#
#   bench/gpu_check.sh                               # GPU host; results in bench/results/gpu_check.{md,json}
#   bench/gpu_check.sh --ort-gpu-wheel /path/onnxruntime_gpu-*.whl   # only the CPU onnxruntime installed
#   bench/gpu_check.sh --cpu-smoke --out /tmp/gpu    # CPU-only machine: every GPU item "not tested"
#
# PYTHON picks the interpreter (default: the repository's .venv, else python3). A hard limit of
# 300 s stops a hung driver call; the script's own --budget (270 s) ends measurements before that.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi
cd "$root"
exec timeout 300 "$PYTHON" -m bench.gpu_check "$@"
