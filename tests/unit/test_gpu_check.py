"""The prepared GPU check: its ONNX Runtime decision table, and a full --cpu-smoke run on this CPU.

The smoke run goes through bench/gpu_check.sh exactly as an operator would start it: it must finish,
print the providers, check what a CPU can (fp16 conversion parity, raw and served timings on the
CPU) and report every CUDA item as "not tested: <reason>" instead of passing it silently.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_check import CUDA, plan_onnxruntime

REPO_ROOT = Path(__file__).resolve().parents[2]
CPU_ONLY = ["AzureExecutionProvider", "CPUExecutionProvider"]


def test_cuda_provider_present_is_used():
    action, why = plan_onnxruntime([CUDA, "CPUExecutionProvider"], {"onnxruntime-gpu": "1.23.0"}, None, False)
    assert action == "use" and "onnxruntime-gpu 1.23.0" in why


def test_cpu_build_with_a_wheel_installs_it(tmp_path):
    wheel = tmp_path / "onnxruntime_gpu-1.23.0-cp311-cp311-linux_x86_64.whl"
    wheel.write_bytes(b"not really a wheel")
    action, why = plan_onnxruntime(CPU_ONLY, {"onnxruntime": "1.32.0"}, str(wheel), False)
    assert action == "install" and "only the CPU build" in why and wheel.name in why


def test_cpu_build_without_a_wheel_says_how_to_fix_it(tmp_path):
    action, why = plan_onnxruntime(CPU_ONLY, {"onnxruntime": "1.32.0"}, None, False)
    assert action == "missing" and "--ort-gpu-wheel" in why
    action, why = plan_onnxruntime(CPU_ONLY, {"onnxruntime": "1.32.0"}, str(tmp_path / "absent.whl"), False)
    assert action == "missing" and "does not exist" in why


def test_after_reinstall_without_cuda_it_stops_instead_of_looping(tmp_path):
    action, why = plan_onnxruntime(CPU_ONLY, {"onnxruntime": "1.32.0"}, str(tmp_path / "x.whl"), True)
    assert action == "missing" and "still offers no" in why


def test_gpu_build_without_cuda_libraries_is_named():
    action, why = plan_onnxruntime(CPU_ONLY, {"onnxruntime-gpu": "1.23.0"}, None, False)
    assert action == "missing" and "onnxruntime-gpu without CUDA" in why


@pytest.mark.slow
def test_cpu_smoke_runs_end_to_end_and_reports_gpu_items_not_tested(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "bench" / "gpu_check.sh"), "--cpu-smoke", "--out", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "providers: [" in done.stdout and "| check | result | detail |" in done.stdout
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    items = {item["check"]: item for item in report["items"]}
    cuda_items = [item for name, item in items.items() if "CUDA" in name]
    assert len(cuda_items) >= 3
    assert all(item["status"] == "not tested" and item["detail"] for item in cuda_items)
    if CUDA not in report["providers"]:
        assert (
            items["onnxruntime build"]["status"] == "not tested"
            and "--ort-gpu-wheel" in items["onnxruntime build"]["detail"]
        )
    assert items["tiny: fp16 on CPU vs fp32 on CPU"]["status"] == "ok"
    assert items["served path on cpu"]["status"] == "ok"
    paths = {(row["path"], row["batch"]) for row in report["timings"]}
    assert paths == {("raw", 1), ("raw", 4), ("served", 1), ("served", 4), ("served-shm", 1), ("served-shm", 4)}
    assert all(row["provider"] == "cpu" and row["median_ms"] > 0 for row in report["timings"])
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check")
