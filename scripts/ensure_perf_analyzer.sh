#!/usr/bin/env bash
# Provide Triton's perf_analyzer (the standard Open Inference Protocol load generator) and print its path.
#
# Why: tests/integration/test_perf_analyzer.py points the real perf_analyzer at convserve, because the
# project promises that standard V2 clients work unchanged; it fails (does not skip) without one.
# PyPI's `perf-analyzer` package is an empty placeholder and its newer wheels need glibc 2.38, so this
# takes the 2.51.0 binary from the tritonclient 2.51.0 manylinux1 wheel; the binary links libcudart 12
# (from the nvidia-cuda-runtime-cu12 wheel, no GPU needed) and libb64 (Debian package libb64-0d).
# Idempotent: does nothing when PERF_ANALYZER_BIN (default ~/.cache/convserve/perf_analyzer/perf_analyzer)
# already runs. Usage: scripts/ensure_perf_analyzer.sh   (prints the wrapper's path on the last line)
set -euo pipefail

BIN="${PERF_ANALYZER_BIN:-$HOME/.cache/convserve/perf_analyzer/perf_analyzer}"
DIR="$(dirname "$BIN")"
if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then
    echo "$BIN"
    exit 0
fi
mkdir -p "$DIR/wheels"
if ! ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'; then
    bash "$(dirname "$0")/apt_install.sh" ensure_perf_analyzer libb64-0d
fi
python3 -m venv "$DIR/venv"
"$DIR/venv/bin/pip" install -q nvidia-cuda-runtime-cu12
"$DIR/venv/bin/pip" download -q --no-deps --only-binary=:all: --platform manylinux1_x86_64 'tritonclient==2.51.0' -d "$DIR/wheels"
"$DIR/venv/bin/python" - "$DIR" <<'EOF'
import glob, sys, zipfile
directory = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{directory}/wheels/tritonclient-2.51.0-*.whl")[0])
member = next(name for name in wheel.namelist() if name.endswith("/perf_analyzer"))
with open(f"{directory}/perf_analyzer.bin", "wb") as out:
    out.write(wheel.read(member))
EOF
chmod +x "$DIR/perf_analyzer.bin"
CUDART="$(ls -d "$DIR"/venv/lib/python3*/site-packages/nvidia/cuda_runtime/lib)"
cat > "$BIN" <<EOF
#!/bin/sh
export LD_LIBRARY_PATH="$CUDART\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$DIR/perf_analyzer.bin" "\$@"
EOF
chmod +x "$BIN"
"$BIN" --version >/dev/null 2>&1
echo "$BIN"
