"""`bench/gpu_check.sh` / `python -m bench.gpu_check`: a prepared CUDA check that ends in a short table.

On a GPU host (about 5 minutes on one H100/H200):
1. the environment: torch and its CUDA, which onnxruntime build is installed, its providers. A host
   whose Python has torch with CUDA 13 libraries but only the CPU `onnxruntime` is detected; with
   `--ort-gpu-wheel PATH` that wheel is installed with `pip --no-deps` into a temporary directory
   and this script re-executes itself with that directory first on PYTHONPATH;
2. CUDA libraries are loaded before any session: torch is imported before onnxruntime and
   `torch.cuda` touched (torch's wheels carry CUDA and cuDNN), then `onnxruntime.preload_dlls()`
   runs when it exists;
3. parity CPU vs CUDA, fp32 and fp16, for ResNet-50 (random weights) and the bundled models;
4. raw ONNX Runtime (the server's own ModelRuntime, IO binding on CUDA) and the served path
   (`convserve serve --providers cuda,cpu --require-gpu`, V2 requests) at batch 1-64, over plain
   gRPC and with input and output in system shared memory (tritonclient's utilities).
Whatever could not be tested is listed as "not tested: <reason>", never skipped silently.

`--cpu-smoke` runs the same code end to end on a CPU-only machine with a tiny model and two batch
sizes, reports every GPU item as not tested, and checks what a CPU can (fp16 conversion parity,
the served path on CPU); tests/unit/test_gpu_check.py runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bench.gpu_workloads import (
    CUDA,
    Item,
    TimingRow,
    raw_timings,
    parity_items,
    resnet50_model,
    served_timings,
    session,
    tiny_model,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
REEXEC_MARK = "CONVSERVE_GPU_CHECK_ORT_TARGET"
BUNDLED = ("lenet5", "simple_cnn", "bn_cnn", "yolo_grid", "fcn8s", "gap_cnn")


def plan_onnxruntime(
    providers: list[str], distributions: dict[str, str], wheel: str | None, reexeced: bool
) -> tuple[str, str]:
    """What to do about ONNX Runtime: ("use", why), ("install", why) or ("missing", reason). Pure."""
    if CUDA in providers:
        return "use", f"{CUDA} available ({', '.join(f'{k} {v}' for k, v in distributions.items())})"
    if reexeced:
        return "missing", f"the wheel installed from --ort-gpu-wheel still offers no {CUDA} (providers: {providers})"
    build = (
        "only the CPU build `onnxruntime`" if "onnxruntime-gpu" not in distributions else "onnxruntime-gpu without CUDA"
    )
    if wheel:
        if not Path(wheel).is_file():
            return "missing", f"{build} is installed and --ort-gpu-wheel {wheel} does not exist"
        return "install", f"{build} is installed: installing {Path(wheel).name} into a temporary directory"
    return (
        "missing",
        f"{build} is installed (providers: {providers}); pass --ort-gpu-wheel PATH to an onnxruntime-gpu wheel",
    )


def ort_distributions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def install_and_reexec(wheel: str) -> None:
    """pip install --no-deps the wheel into a temporary directory, then exec this script again with it first."""
    target = tempfile.mkdtemp(prefix="convserve-ort-gpu-")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target, wheel], check=True
    )
    env = dict(
        os.environ,
        **{REEXEC_MARK: target, "PYTHONPATH": os.pathsep.join(filter(None, [target, os.environ.get("PYTHONPATH")]))},
    )
    os.execve(sys.executable, [sys.executable, "-m", "bench.gpu_check", *sys.argv[1:]], env)


def torch_description(load: bool) -> str:
    """torch's version (its local tag names the CUDA build, e.g. +cu130); with `load`, what torch sees."""
    from importlib import metadata

    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "torch not installed"
    if not load:
        return f"torch {version} (not imported)"
    import torch

    return (
        f"torch {version}, built with CUDA {torch.version.cuda or 'none'}, cuda available: {torch.cuda.is_available()}"
    )


def preload_cuda(ort) -> Item:
    """Load CUDA/cuDNN before sessions exist: torch's libraries (already imported), then ORT's preloader.

    Why both: torch imported before onnxruntime makes its CUDA/cuDNN visible to ONNX Runtime when the
    CUDA majors match; `preload_dlls()` (onnxruntime >= 1.21) also finds the nvidia pip packages.
    """
    done = []
    try:
        import torch

        if torch.cuda.is_available():
            torch.zeros(1, device="cuda")
            done.append("torch.cuda initialised")
        else:
            done.append("torch.cuda.is_available() = False")
    except ImportError:
        done.append("torch not installed")
    try:
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
            done.append("onnxruntime.preload_dlls()")
    except Exception as exc:  # a loader failure is a finding to report, not a crash
        return Item("load CUDA libraries", "FAILED", "; ".join(done) + f"; preload_dlls: {type(exc).__name__}: {exc}")
    return Item("load CUDA libraries", "ok", "; ".join(done))


def models_for(args, scratch: Path) -> dict[str, Path]:
    """name -> model.onnx inside a scratch repository (tiny for --cpu-smoke; ResNet-50 + bundled otherwise)."""
    repo = scratch / "repo"
    if args.cpu_smoke:
        return {"tiny": tiny_model(repo / "tiny")}
    from service.repository import scan_model

    wanted = [name.strip() for name in args.models.split(",") if name.strip()]
    found = {"resnet50": resnet50_model(repo / "resnet50")} if "resnet50" in wanted else {}
    for name in wanted:
        if name != "resnet50" and (REPO_ROOT / "model_repo" / name / "config.yaml").is_file():
            shipped = scan_model(REPO_ROOT / "model_repo" / name)
            keep = str(shipped.default_version)  # only the served (fp32) version: INT8 QDQ graphs are for CPUs
            shutil.copytree(
                shipped.directory,
                repo / name,
                ignore=lambda d, names, shipped=shipped, keep=keep: [
                    n for n in names if Path(d) == shipped.directory and n.isdigit() and n != keep
                ],
            )
            found[name] = scan_model(repo / name).model_path(shipped.default_version)
    return found


def table(items: list[Item], rows: list[TimingRow]) -> str:
    lines = ["| check | result | detail |", "|---|---|---|"]
    lines += [f"| {i.check} | {i.status} | {i.detail} |" for i in items]
    lines += ["", "| model | path | provider | batch | median ms | images/s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.model} | {r.path} | {r.provider} | {r.batch} | {r.median_ms} | {r.images_per_s} |" for r in rows]
    return "\n".join(lines)


def _cuda_status(ort, args, action: str, why: str, items: list[Item], probe: Path) -> str | None:
    """None when CUDA is usable, else the reason every CUDA item is not tested."""
    if args.cpu_smoke:
        return "--cpu-smoke: CPU-only run (see 'onnxruntime build' for what this machine offers)"
    if action != "use":
        return why
    loaded = preload_cuda(ort)
    items.append(loaded)
    try:
        session(ort, probe, CUDA)
    except Exception as exc:
        return f"a CUDA session could not be created ({type(exc).__name__}: {exc}); {loaded.detail}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/gpu_check.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="CPU-only end-to-end run with a tiny model")
    parser.add_argument("--ort-gpu-wheel", help="onnxruntime-gpu wheel to use when only the CPU build is installed")
    parser.add_argument(
        "--models",
        default=",".join(("resnet50", *BUNDLED)),
        help="resnet50 and/or bundled models to include (comma list; default all)",
    )
    parser.add_argument("--budget", type=float, default=270.0, help="seconds; later steps are reported not tested")
    parser.add_argument("--out", type=Path, help="write gpu_check.json and gpu_check.md here")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget
    described = torch_description(load=not args.cpu_smoke)  # torch (and its CUDA libraries) before onnxruntime
    import onnxruntime as ort

    distributions, providers = ort_distributions(), ort.get_available_providers()
    action, why = plan_onnxruntime(providers, distributions, args.ort_gpu_wheel, bool(os.environ.get(REEXEC_MARK)))
    if action == "install" and not args.cpu_smoke:
        print(f"gpu_check: {why}", flush=True)
        install_and_reexec(args.ort_gpu_wheel)
    print(
        f"python {sys.version.split()[0]}; {described}\nonnxruntime {ort.__version__} from {Path(ort.__file__).parent}"
        f"\ninstalled builds: {distributions}\nproviders: {providers}",
        flush=True,
    )
    items = [Item("onnxruntime build", "ok" if action == "use" else "not tested", why)]
    rows: list[TimingRow] = []
    with tempfile.TemporaryDirectory(prefix="convserve-gpu-check-") as tmp:
        scratch = Path(tmp)
        models = models_for(args, scratch)
        cuda_reason = _cuda_status(ort, args, action, why, items, next(iter(models.values())))
        rows += _measure(ort, args, models, scratch, cuda_reason, items, deadline)
    report = table(items, rows)
    print(report)
    if args.out or not args.cpu_smoke:
        out = args.out or REPO_ROOT / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.json").write_text(
            json.dumps(
                {
                    "items": [asdict(i) for i in items],
                    "timings": [asdict(r) for r in rows],
                    "providers": providers,
                    "builds": distributions,
                },
                indent=2,
            )
            + "\n"
        )
        (out / "gpu_check.md").write_text(f"# GPU check ({time.strftime('%Y-%m-%d %H:%M')})\n\n{report}\n")
    if os.environ.get(REEXEC_MARK, "").startswith(tempfile.gettempdir()):
        shutil.rmtree(os.environ[REEXEC_MARK], ignore_errors=True)  # the wheel installed for this run
    return 1 if any(i.status == "FAILED" for i in items) else 0


def _measure(
    ort, args, models: dict[str, Path], scratch: Path, cuda_reason: str | None, items: list[Item], deadline: float
) -> list[TimingRow]:
    from service.config import load_model_config

    batches = (1, 4) if args.cpu_smoke else (1, 2, 4, 8, 16, 32, 64)
    seconds = 0.2 if args.cpu_smoke else 0.5
    provider = "cpu" if cuda_reason else "cuda"
    configs = {name: load_model_config(path.parents[1] / "config.yaml") for name, path in models.items()}
    rows: list[TimingRow] = []
    for name, path in models.items():
        if time.monotonic() > deadline:
            items.append(Item(f"{name}: parity and raw timings", "not tested", "time budget exhausted"))
            continue
        items.extend(parity_items(ort, name, path, configs[name], scratch, cuda_reason))
        try:
            rows += raw_timings(name, path, configs[name], provider, batches, seconds)
        except Exception as exc:  # e.g. ProviderUnavailable: a finding for the table, not a crash
            items.append(Item(f"{name}: raw timings on {provider}", "FAILED", f"{type(exc).__name__}: {exc}"))
    if cuda_reason:
        items.append(Item("raw and served timings on CUDA", "not tested", cuda_reason + "; timed on the CPU instead"))
    items.append(
        Item(
            "CUDA shared memory (inputs in GPU memory)",
            "not tested",
            "the server implements system shared memory only; CudaSharedMemoryRegister answers UNIMPLEMENTED "
            "(docs/shared-memory.md); the served-shm rows use system shared memory",
        )
    )
    if time.monotonic() > deadline:
        items.append(Item("served path", "not tested", "time budget exhausted"))
        return rows
    try:
        served, actual = served_timings(scratch / "repo", configs, provider, batches, seconds)
        rows += served
        wrong = {m: p for m, p in actual.items() if p != provider}
        items.append(
            Item(
                f"served path on {provider}",
                "FAILED" if wrong else "ok",
                f"models ready on: {actual}" + (f"; expected {provider}" if wrong else ""),
            )
        )
    except Exception as exc:
        items.append(Item(f"served path on {provider}", "FAILED", f"{type(exc).__name__}: {exc}"))
    return rows


if __name__ == "__main__":
    sys.exit(main())
