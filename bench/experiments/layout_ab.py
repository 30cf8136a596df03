"""`python -m bench.experiments.layout_ab`: ResNet-18 served with different ONNX Runtime session layouts, A/B.

Why: `make bench`'s targets compare served throughput (concurrency 16) and served latency
(concurrency 1) with raw ONNX Runtime, and the session layout decides both. One session using
every core runs a lone request fastest, but anything else that runs during a batch (receiving
the next requests, the load tool) holds up one of its threads and with it the whole operator;
one single-threaded session per core keeps the other core busy but runs a lone request on one
core; two sessions of two threads each share the cores when both are busy. Which is best here is
measured, not assumed: each layout is a model of its own in one server (same ONNX file,
`batching.instances` and `runtime.intra_op_threads` differ), and the raw and served runs of the
layouts alternate in ABBA order, so the machine's drifting background load moves them alike.

The references are the best raw figures of *any* layout (throughput with every session busy;
batch-1 latency of a lone run), so no layout can pass by being slow in-process.

    python -m bench.experiments.layout_ab                                   # 1x2, 2x1 and 2x2 on a 2-core machine
    python -m bench.experiments.layout_ab --layouts 1x2,2x1 --rounds 6 --seconds 10
    # /4: preferred_batch_sizes [4] (the batcher cuts batches at 4)
    python -m bench.experiments.layout_ab --layouts 1x2,1x2/4,2x1/4
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.load import run_served
from bench.models import export_resnet18
from bench.raw import measure_raw
from bench.server import served_models
from service.config import dump_model_config, load_model_config
from service.runtime import ModelRuntime, cpu_count

RAW_BATCHES = (4, 8, 16)


Layout = tuple[int, int, tuple[int, ...]]  # sessions, intra-op threads per session, preferred batch sizes


def parse_layouts(text: str) -> list[Layout]:
    """'1x2,2x1/4,1x2/4+8' -> [(sessions, threads, preferred batch sizes), ...]."""
    layouts = []
    for item in text.split(","):
        shape, _, preferred = item.strip().partition("/")
        sessions, _, threads = shape.partition("x")
        try:
            layout = (int(sessions), int(threads), tuple(int(size) for size in preferred.split("+") if size))
        except ValueError:
            layout = None
        if layout is None or min(layout[0], layout[1], *layout[2]) < 1:
            raise ValueError(
                f"layouts are SESSIONSxTHREADS[/PREFERRED+PREFERRED...], comma separated, e.g. 1x2,2x1/4; got {text!r}"
            )
        layouts.append(layout)
    return layouts


def layout_name(layout: Layout) -> str:
    sessions, threads, preferred = layout
    return f"{sessions}x{threads}" + (f"/{'+'.join(map(str, preferred))}" if preferred else "")


def make_layouts(repo: Path, layouts: list[Layout]) -> dict[Layout, str]:
    """One model directory per layout: resnet18_<S>x<T>[_p<P>...], the same ONNX file, S sessions of T
    threads, preferred batch sizes P."""
    export_resnet18(repo)
    names = {}
    for layout in layouts:
        sessions, threads, preferred = layout
        name = f"resnet18_{sessions}x{threads}" + "".join(f"_p{size}" for size in preferred)
        shutil.copytree(repo / "resnet18", repo / name)
        config = load_model_config(repo / name / "config.yaml")
        batching = {"instances": sessions, "preferred_batch_sizes": preferred}
        config = config.model_copy(
            update={
                "name": name,
                "batching": config.batching.model_copy(update=batching),
                "runtime": config.runtime.model_copy(update={"intra_op_threads": threads}),
            }
        )
        dump_model_config(config, repo / name / "config.yaml")
        names[layout] = name
    shutil.rmtree(repo / "resnet18")
    return names


def lone_run_ms(model_dir: Path, runs: int = 15) -> float:
    """p50 of batch-1 runs with nothing else running (what a concurrency-1 request could get)."""
    config = load_model_config(model_dir / "config.yaml")
    runtime = ModelRuntime(model_dir / "1" / "model.onnx", config, ("cpu",))
    x = {config.inputs[0].name: np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    runtime.run(x)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        runtime.run(x)
        times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.experiments.layout_ab", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--layouts",
        default=f"1x{cpu_count()},{cpu_count()}x1,2x{cpu_count()}",
        help="comma list of SESSIONSxTHREADS[/PREFERRED+...] "
        "(default: one session on all cores, one per core, two on all cores)",
    )
    parser.add_argument("--concurrency", type=int, default=16, help="the throughput run's concurrency")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per served run")
    parser.add_argument("--raw-seconds", type=float, default=2.0, help="seconds per raw batch size")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or args.raw_seconds <= 0:
        parser.error("--rounds must be at least 1 and --seconds / --raw-seconds positive")
    try:
        layouts = list(dict.fromkeys(parse_layouts(args.layouts)))
    except ValueError as exc:
        parser.error(str(exc))
    rows = {layout: {"raw": [], "lone": [], "busy": [], "c1": []} for layout in layouts}
    with tempfile.TemporaryDirectory(prefix="convserve-layout-") as tmp:
        repo = Path(tmp) / "repo"
        names = make_layouts(repo, layouts)
        server = served_models(repo)
        try:
            for round_ in range(args.rounds):
                for layout in layouts if round_ % 2 == 0 else layouts[::-1]:  # ABBA: no layout always goes last
                    name, row = names[layout], rows[layout]
                    points = measure_raw(repo / name, RAW_BATCHES, args.raw_seconds, repo / name / "1" / "model.onnx")
                    row["raw"].append(max(p.images_per_s for p in points))
                    row["lone"].append(lone_run_ms(repo / name))
                    row["busy"].append(
                        run_served(server, name, "tensor", args.concurrency, args.seconds, 3.0).images_per_s
                    )
                    row["c1"].append(
                        run_served(server, name, "tensor", 1, args.seconds / 2, 1.0).latency_ms.get("p50", float("nan"))
                    )
                    print(
                        f"round {round_} {name}: raw {row['raw'][-1]:.1f} img/s, "
                        f"lone run {row['lone'][-1]:.1f} ms, served "
                        f"c{args.concurrency} {row['busy'][-1]:.1f} img/s, c1 p50 {row['c1'][-1]:.1f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            server.stop()
    print(_markdown(layouts, rows, args))
    return 0


def _markdown(layouts, rows, args) -> str:
    med = {layout: {key: statistics.median(values) for key, values in row.items()} for layout, row in rows.items()}
    best_raw = max(m["raw"] for m in med.values())
    best_lone = min(m["lone"] for m in med.values())
    lines = [
        f"resnet18 (random weights), V2 tensor input, closed loop; {args.rounds} alternating rounds; medians. "
        f"Raw throughput = best of batches {', '.join(map(str, RAW_BATCHES))} with every session busy; lone run = "
        f"batch 1 with nothing else running. References: best raw {best_raw:.1f} img/s, "
        f"best lone run {best_lone:.2f} ms.",
        "",
        "| sessions x threads / preferred batch sizes | raw img/s | lone run ms | "
        f"served c{args.concurrency} img/s | c{args.concurrency} / best raw | "
        "served c1 p50 ms | c1 p50 - best lone run |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for layout in layouts:
        m = med[layout]
        lines.append(
            f"| {layout_name(layout)} | {m['raw']:.1f} | {m['lone']:.2f} | {m['busy']:.1f} | "
            f"{m['busy'] / best_raw:.2f} | "
            f"{m['c1']:.2f} | {m['c1'] - best_lone:+.2f} ms |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
