"""`python -m bench.quantization [--quick]`: INT8 vs FP32 on this CPU, and session start-up times.

Part of `make bench`. Three measurements, all in this one process, each side by side:
1. ResNet-18 (torchvision, random weights, 224x224, exported here) quantised here on skimage
   photo crops; fp32 and int8 timed interleaved (A B A B) at several batch sizes; agreement of
   their top-1 on held-out crops (random weights have no accuracy to lose).
2. Every bundled model with an INT8 version in model_repo/ (written by `convserve optimize`):
   fp32 and int8 re-timed interleaved; accuracy/mAP/mIoU drop read from the INT8 model card
   (tests/export/test_quantized_models.py re-evaluates the committed files).
3. Start-up: session creation time of each fp32 model as shipped vs its graph saved after ONNX
   Runtime's optimisation, at the levels a server could load it with, plus batch-1 run time at
   each (a lower level that starts faster but runs slower is no win).
The machine is shared, so absolute times are noisy; ratios of medians are what to read.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.models import REPO_ROOT, export_resnet18
from export.calibration import photo_inputs
from export.optimize import quantize_int8, save_optimized_graph
from export.throughput import (
    cpu_session,
    interleaved_creation,
    interleaved_timings,
    machine_description,
    ratio_of_medians,
    tile_batch,
)
from service.config import load_model_config

PLANS = {
    "full": {
        "resnet_batches": (1, 8, 32),
        "bundled_batches": (1, 8, 32),
        "rounds": 7,
        "min_seconds": 4.0,
        "startup_repeats": 7,
        "calibration": 128,
    },
    "quick": {
        "resnet_batches": (1, 8),
        "bundled_batches": (1, 8),
        "rounds": 3,
        "min_seconds": 1.0,
        "startup_repeats": 3,
        "calibration": 32,
    },
}
SPEEDUP_TARGET = 2.0
BUNDLED_REPO = REPO_ROOT / "model_repo"


def say(message: str) -> None:
    print(f"[bench.quantization {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timing_rows(fp32: Path, int8: Path, feeds: dict[int, dict], plan: dict, threads: int) -> list[dict]:
    """Interleaved fp32/int8 timings per batch size: medians, images/s, speedup (ratio of medians)."""
    sessions = {"fp32": cpu_session(fp32, threads), "int8": cpu_session(int8, threads)}
    rows = []
    for batch, feed in feeds.items():
        timings = interleaved_timings(sessions, feed, plan["rounds"], min_seconds=plan["min_seconds"])
        rows.append(
            {
                "batch": batch,
                "runs": len(timings["fp32"].seconds),
                "fp32_ms": round(timings["fp32"].median_s * 1000, 2),
                "int8_ms": round(timings["int8"].median_s * 1000, 2),
                "fp32_images_per_s": round(timings["fp32"].images_per_s, 1),
                "int8_images_per_s": round(timings["int8"].images_per_s, 1),
                "speedup": round(ratio_of_medians(timings["fp32"], timings["int8"]), 3),
            }
        )
        say(f"  batch {batch}: fp32 {rows[-1]['fp32_ms']} ms, int8 {rows[-1]['int8_ms']} ms, x{rows[-1]['speedup']}")
    return rows


def best_batch(rows: list[dict]) -> dict:
    """The row where int8 reaches its highest images/s (the 'best batch size')."""
    return max(rows, key=lambda r: r["int8_images_per_s"])


def resnet18_section(scratch: Path, plan: dict, threads: int) -> dict:
    say("resnet18: export (random weights), quantise on photo crops")
    model = export_resnet18(scratch)
    config = load_model_config(scratch / "resnet18" / "config.yaml")
    calibration = photo_inputs(config, plan["calibration"], "calibration")
    int8 = scratch / "resnet18_int8.onnx"
    quantize_int8(model.onnx_path, int8, [{"input": calibration[i : i + 8]} for i in range(0, len(calibration), 8)])
    heldout = photo_inputs(config, 64, "heldout", seed=7)
    a = cpu_session(model.onnx_path, threads).run(None, {"input": heldout})[0]
    b = cpu_session(int8, threads).run(None, {"input": heldout})[0]
    cosine = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    rows = timing_rows(
        model.onnx_path, int8, {n: {"input": tile_batch(heldout, n)} for n in plan["resnet_batches"]}, plan, threads
    )
    return {
        "model": "resnet18",
        "note": model.note,
        "calibration": f"{len(calibration)} crops of skimage photos "
        "(astronaut, coffee, chelsea, rocket, hubble_deep_field, retina)",
        "agreement": {
            "heldout_crops": len(heldout),
            "top1_agreement": float(np.mean(a.argmax(1) == b.argmax(1))),
            "mean_cosine": float(np.mean(cosine)),
            "max_abs_logit_diff": float(np.max(np.abs(a - b))),
        },
        "timings": rows,
        "best": best_batch(rows),
    }


def int8_versions(repo: Path) -> list[tuple[str, Path, Path, dict]]:
    """(model, fp32 file, int8 file, int8 card) for each INT8 version in the repository."""
    found = []
    for card_path in sorted(repo.glob("*/*/model_card.json")):
        card = json.loads(card_path.read_text())
        if card.get("precision") == "int8":
            model_dir = card_path.parents[1]
            source = model_dir / str(card["derived_from"]["version"]) / "model.onnx"
            found.append((model_dir.name, source, card_path.parent / "model.onnx", card))
    return found


def bundled_section(repo: Path, plan: dict, threads: int) -> list[dict]:
    from export.calibration import calibration_batches, model_data

    results = []
    for name, fp32, int8, card in int8_versions(repo):
        say(f"{name}: fp32 v{card['derived_from']['version']} vs int8 v{card['version']}")
        config = load_model_config(repo / name / "config.yaml")
        samples = next(iter(calibration_batches(model_data(name), config, 16, batch=16)[0].values()))
        batches = [b for b in plan["bundled_batches"] if b <= config.batching.max_batch_size]
        if config.batching.max_batch_size not in batches and len(plan["bundled_batches"]) > 2:
            batches.append(config.batching.max_batch_size)
        feeds = {n: {config.inputs[0].name: tile_batch(samples, n)} for n in batches}
        rows = timing_rows(fp32, int8, feeds, plan, threads)
        evaluation = card["evaluation"]
        judged = evaluation.get("full", evaluation["test_subset"])
        results.append(
            {
                "model": name,
                "int8_version": card["version"],
                "fp32_version": card["derived_from"]["version"],
                "metric": evaluation["metric"],
                "heldout_count": judged["count"],
                "fp32": judged["fp32"],
                "int8": judged["int8"],
                "drop": judged["drop"],
                "max_drop": evaluation["max_drop"],
                "timings": rows,
                "best": best_batch(rows),
            }
        )
    return results


STARTUP_VARIANTS = (
    ("shipped @ all (server default)", "source", "all"),
    ("shipped @ extended", "source", "extended"),
    ("saved extended @ basic", "extended", "basic"),
    ("saved extended @ all", "extended", "all"),
    ("saved all @ disable (CPU-specific file)", "all", "disable"),
)


def startup_rows(
    name: str, source: Path, scratch: Path, sample: np.ndarray, input_name: str, plan: dict, threads: int
) -> list[dict]:
    """Session creation (median, interleaved) and batch-1 run time for each way of loading a model."""
    saved = {"source": source, "extended": scratch / f"{name}.extended.onnx", "all": scratch / f"{name}.all.onnx"}
    save_optimized_graph(source, saved["extended"], "extended")
    cpu_session(source, 1, "all", optimized_output=saved["all"])  # level 'all' adds CPU-specific layouts
    paths = {label: (saved[kind], level) for label, kind, level in STARTUP_VARIANTS}
    created = interleaved_creation(paths, threads, plan["startup_repeats"])
    sessions = {label: cpu_session(path, threads, level) for label, (path, level) in paths.items()}
    runs = interleaved_timings(sessions, {input_name: sample[:1]}, plan["rounds"], min_seconds=plan["min_seconds"] / 2)
    return [
        {
            "model": name,
            "load": label,
            "create_ms": round(created[label] * 1000, 1),
            "batch1_ms": round(runs[label].median_s * 1000, 3),
        }
        for label in paths
    ]


def startup_section(scratch: Path, repo: Path, plan: dict, threads: int) -> list[dict]:
    from export.calibration import calibration_batches, model_data

    rows = []
    resnet_config = load_model_config(scratch / "resnet18" / "config.yaml")
    say("start-up: resnet18")
    rows += startup_rows(
        "resnet18",
        scratch / "resnet18" / "1" / "model.onnx",
        scratch,
        photo_inputs(resnet_config, 1),
        "input",
        plan,
        threads,
    )
    for name, fp32, _, _ in int8_versions(repo):
        say(f"start-up: {name}")
        config = load_model_config(repo / name / "config.yaml")
        sample = next(iter(calibration_batches(model_data(name), config, 1, batch=1)[0].values()))
        rows += startup_rows(name, fp32, scratch, sample, config.inputs[0].name, plan, threads)
    return rows


def targets(resnet: dict, bundled: list[dict]) -> list[dict]:
    """The issue's goals, each with the measured figure."""
    found = [
        {
            "target": f"resnet18 int8 >= {SPEEDUP_TARGET}x fp32 at the best batch size",
            "measured": f"x{resnet['best']['speedup']} at batch {resnet['best']['batch']}",
            "met": resnet["best"]["speedup"] >= SPEEDUP_TARGET,
        }
    ]
    for entry in bundled:
        if entry["model"] == "yolo_grid":
            found.append(
                {
                    "target": f"yolo_grid int8 >= {SPEEDUP_TARGET}x fp32 at the best batch size",
                    "measured": f"x{entry['best']['speedup']} at batch {entry['best']['batch']}",
                    "met": entry["best"]["speedup"] >= SPEEDUP_TARGET,
                }
            )
        points = "points" if entry["metric"] != "mAP@0.5" else "mAP points"
        found.append(
            {
                "target": f"{entry['model']} {entry['metric']} drop <= {entry['max_drop'] * 100:g} {points}",
                "measured": f"{entry['fp32']:.4f} -> {entry['int8']:.4f} (drop {entry['drop'] * 100:.2f} points, "
                f"{entry['heldout_count']} held-out items)",
                "met": entry["drop"] <= entry["max_drop"] + 1e-9,
            }
        )
    return found


def to_markdown(data: dict) -> str:
    lines = [
        "# INT8 vs FP32 on the CPU, and start-up with pre-optimised graphs",
        "",
        f"Generated by `python -m bench.quantization{' --quick' if data['mode'] == 'quick' else ''}` "
        f"({data['date']}). Machine: {data['machine']['cpu']}, {data['machine']['cores']} cores, INT8-relevant "
        f"extensions: {', '.join(data['machine']['int8_extensions']) or 'none'}; "
        f"load average {data['machine']['loadavg']} "
        f"before, {data['loadavg_after']} after. intra_op threads: {data['threads']}. Each timing pair is interleaved "
        "(fp32, int8, fp32, ...) in one process; speedup = ratio of median run times.",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |" for t in data["targets"]]
    lines += [
        "",
        "## Throughput",
        "",
        "| model | batch | runs | fp32 ms | int8 ms | fp32 img/s | int8 img/s | speedup |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in [data["resnet18"], *data["bundled"]]:
        lines += [
            f"| {entry['model']} | {r['batch']} | {r['runs']} | {r['fp32_ms']} | {r['int8_ms']} | "
            f"{r['fp32_images_per_s']} | "
            f"{r['int8_images_per_s']} | x{r['speedup']} |"
            for r in entry["timings"]
        ]
    agreement = data["resnet18"]["agreement"]
    lines += [
        "",
        "## Accuracy",
        "",
        "| model | metric | held-out items | fp32 | int8 | drop (points) |",
        "|---|---|---|---|---|---|",
        f"| resnet18 (random weights) | top-1 agreement with fp32 | {agreement['heldout_crops']} | 1 | "
        f"{agreement['top1_agreement']:.4f} | (mean cosine of logits {agreement['mean_cosine']:.4f}) |",
    ]
    lines += [
        f"| {e['model']} | {e['metric']} | {e['heldout_count']} | {e['fp32']:.4f} | {e['int8']:.4f} | "
        f"{e['drop'] * 100:.2f} |"
        for e in data["bundled"]
    ]
    lines += [
        "",
        "## Session start-up (graph optimisation at load vs saved)",
        "",
        "| model | file @ level loaded with | create ms | batch-1 run ms |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['model']} | {r['load']} | {r['create_ms']} | {r['batch1_ms']} |" for r in data["startup"]]
    lines += ["", *[f"- {note}" for note in data["notes"]], ""]
    return "\n".join(lines)


def int8_kernel_note(extensions: list[str]) -> str:
    """What ONNX Runtime's INT8 (u8s8) GEMM kernels can use on a CPU with these /proc/cpuinfo flags."""
    found = ", ".join(extensions) or "none of avx2, avx512f, avx512_vnni, avx_vnni, amx_int8"
    if "amx_int8" in extensions:
        path = (
            "AMX tile multiply-adds (TDPBUSD), far more int8 multiply-adds per instruction than any vector "
            "path: large matrices gain the most, small models stay bound by per-op overhead"
        )
    elif "avx512_vnni" in extensions or "avx_vnni" in extensions:
        width = "512" if "avx512_vnni" in extensions else "256"
        path = (
            f"VNNI ({width}-bit VPDPBUSD: one instruction per int8 multiply-add step, where AVX2 needs three, "
            "and no int16 saturation)"
        )
    elif "avx2" in extensions:
        path = (
            "AVX2 only: VPMADDUBSW + VPMADDWD + VPADDD (three instructions where VNNI needs one; VPMADDUBSW "
            "saturates at int16, which per-tensor weight scales avoid better), so the INT8 gain is smaller "
            "than on a VNNI CPU"
        )
    else:
        path = "no AVX2: ONNX Runtime's INT8 kernels fall back to SSE paths, and INT8 may not beat fp32 at all"
    return f"This CPU's INT8-relevant extensions: {found}. ONNX Runtime's u8s8 kernels use {path}."


NOTES = [
    "Small models (the bundled ones, ~0.1-1 M parameters) spend a large share of each run in QuantizeLinear/"
    "DequantizeLinear at the graph boundary and in per-op overhead, which INT8 does not shrink.",
    "'saved all' files contain CPU-specific NCHWc layouts and may only be loaded on the CPU type that wrote them; "
    "'saved extended' files are portable. See docs/optimization.md for the recommendation.",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quantization", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batch sizes and rounds (about 3 minutes)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for every session (default 1)")
    parser.add_argument(
        "--repo", type=Path, default=BUNDLED_REPO, help="repository with INT8 versions (default model_repo)"
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results", help="results directory")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    plan = PLANS[mode]
    data = {
        "mode": mode,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_description(),
        "threads": args.threads,
    }
    with tempfile.TemporaryDirectory(prefix="convserve-quant-") as tmp:
        scratch = Path(tmp)
        data["resnet18"] = resnet18_section(scratch, plan, args.threads)
        data["bundled"] = bundled_section(args.repo, plan, args.threads)
        data["startup"] = startup_section(scratch, args.repo, plan, args.threads)
    data["loadavg_after"] = machine_description()["loadavg"]
    data["targets"] = targets(data["resnet18"], data["bundled"])
    data["notes"] = [int8_kernel_note(data["machine"]["int8_extensions"]), *NOTES]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "quantization-quick" if args.quick else "quantization"
    (args.out / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(to_markdown(data))
    print(to_markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
