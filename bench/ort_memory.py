"""`python -m bench.ort_memory`: resident memory of ONNX Runtime CPU sessions under variable shapes.

Why: a fully convolutional segmenter takes any H x W, and ONNX Runtime's CPU arena keeps the
largest activations it ever allocated. This runs one model (default: the bundled fcn8s) in a
fresh child process per arena setting, feeds it a series of input sizes (small, one large, small
again), and reports VmRSS (from /proc/self/status) after each run and VmHWM (the peak), so the
setting in service/runtime.py is chosen from figures rather than assumed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "arena_default": {"arena": True},
    "arena_shrinkage": {"arena": True, "shrink": True},
    "no_arena": {"arena": False},
}


def status_kib(field: str) -> int:
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(model: str, setting: str, sizes: list[int]) -> dict:
    import numpy as np
    import onnxruntime as ort

    opts = SETTINGS[setting]
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = opts["arena"]
    options.intra_op_num_threads = 2
    providers = ["CPUExecutionProvider"]
    session = ort.InferenceSession(model, sess_options=options, providers=providers)
    run_options = ort.RunOptions()
    if opts.get("shrink"):
        run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    name = session.get_inputs()[0].name
    rows = [{"size": 0, "rss_mib": status_kib("VmRSS") / 1024}]
    for size in sizes:
        session.run(None, {name: np.zeros((1, 3, size, size), np.float32)}, run_options)
        rows.append({"size": size, "rss_mib": round(status_kib("VmRSS") / 1024, 1)})
    return {"setting": setting, "runs": rows, "peak_mib": round(status_kib("VmHWM") / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO_ROOT / "model_repo" / "fcn8s" / "1" / "model.onnx"))
    parser.add_argument(
        "--sizes",
        default="256,512,1024,1440,512,256",
        help="square input sizes (multiples of the stride, 32 for fcn8s), run in order",
    )
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.child:
        print(json.dumps(child(args.model, args.child, sizes)))
        return 0
    for setting in SETTINGS:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.ort_memory",
                "--model",
                args.model,
                "--sizes",
                args.sizes,
                "--child",
                setting,
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO_ROOT,
        )
        result = json.loads(out.stdout)
        runs = "  ".join(f"{r['size']}:{r['rss_mib']:.0f}" for r in result["runs"])
        print(f"{setting:26s} peak {result['peak_mib']:7.0f} MiB   RSS after each run (size:MiB) {runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
