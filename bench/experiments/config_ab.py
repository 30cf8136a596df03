"""`python -m bench.experiments.config_ab`: a model served as shipped vs with config fields or serve flags changed.

Why: a default (a config field's or a `convserve serve` flag's) should come from a measurement of
the served model, and on a shared machine only measurements taken side by side mean anything.
This copies the model's directory twice into temporary repositories, changes the given fields in
one copy (validated by the server's own config loader) and starts that copy's server with the
given extra flags, and drives each server with perf_analyzer (V2 tensors over gRPC, over system
shared memory, or over ModelStreamInfer streams) at each concurrency, the two alternating round
by round (ABBA). Prints each round and the medians. `--model resnet18` is `make bench`'s
torchvision ResNet-18, exported first. `--baseline-tree DIR` runs the "as shipped" server from
another checkout's code (before/after a change: `git worktree add /tmp/before HEAD~1`), with or
without changes on the other side.

    python -m bench.experiments.config_ab --set batching.inline_run_max_us=0
    python -m bench.experiments.config_ab --model lenet5 --set batching.max_queue_delay_us=0 --rounds 5
    python -m bench.experiments.config_ab --model resnet18 --flags "--max-reads-per-peer 4" --concurrency 1,16
    python -m bench.experiments.config_ab --baseline-tree /tmp/before --busy --concurrency 16,64
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from bench.experiments.alternating import alternate, perf_analyzer_on, print_medians
from bench.experiments.latency_breakdown import model_runs
from bench.models import export_resnet18
from bench.perf import TRANSPORTS, run_perf_analyzer
from bench.server import REPO_ROOT, served_models
from service.config import load_model_config
from service.errors import ConfigError


def changed_copy(source: Path, target: Path, changes: dict[str, object]) -> None:
    """`source` (a model directory) copied to `target` with dotted `changes` applied to its config."""
    shutil.copytree(source, target)
    path = target / "config.yaml"
    config = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    load_model_config(path)  # the server's own validation: a bad field fails here, named


def parse_changes(items: list[str]) -> dict[str, object]:
    changes = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set wants FIELD=VALUE (a dotted config field), got {item!r}")
        changes[key] = yaml.safe_load(value)
    return changes


# what each point's second value is: (label, format per round, table column, table format, the
# value read from perf_analyzer's point; None: measured around it by busy_on)
REPORTS = {
    "p50": ("p50", "{:.3f} ms", "p50 ms", "{:.3f}", lambda point: point.latency_ms["p50"]),
    "cpu": (
        "server",
        "{:.0f} us CPU/request",
        "server CPU us/request",
        "{:.0f}",
        lambda point: point.server_cpu_us_per_request,
    ),
    "busy": ("model busy", "{:.1f} %", "model busy %", "{:.1f}", None),
}


@contextlib.contextmanager
def busy_on(repo: Path, flags: list[str], source: Path, model: str, seconds: float, transport: str):
    """A server measured by perf_analyzer, its second value the share of the perf_analyzer run during
    which the model was running (the server's own run timings, convserve_model_execution_seconds):
    what is left is idle time between batches, the same for either side's start and end of the run."""
    server = served_models(repo, "--metrics-port", "0", *flags, source=source)
    try:

        def measure(concurrency: int) -> tuple[float, float]:
            ran, started = model_runs(server, model)[1], time.monotonic()
            point = run_perf_analyzer(server, model, transport, concurrency, seconds)
            busy = (model_runs(server, model)[1] - ran) / (time.monotonic() - started)
            return point.throughput_rps, 100 * busy

        yield measure
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.experiments.config_ab", description=__doc__)
    parser.add_argument("--model", default="lenet5", help="a model of model_repo/, or resnet18 (make bench's)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="repeatable")
    parser.add_argument("--flags", default="", help="extra `convserve serve` flags of the changed server")
    parser.add_argument(
        "--transport",
        choices=sorted(TRANSPORTS),
        default="grpc",
        help="; ".join(f"{name}: {words}" for name, (words, _) in TRANSPORTS.items()),
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=6.0, help="perf_analyzer time per point")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated perf_analyzer concurrencies")
    parser.add_argument("--baseline-tree", type=Path, help="serve the 'as shipped' side from this checkout's code")
    report = parser.add_mutually_exclusive_group()
    report.add_argument(
        "--busy", action="store_true", help="report the model's busy share of each run instead of p50 latency"
    )
    report.add_argument(
        "--cpu", action="store_true", help="report the server's CPU time per request instead of p50 latency"
    )
    args = parser.parse_args(argv)
    if not args.set and not args.flags and not args.baseline_tree:
        parser.error("nothing to compare: give --set FIELD=VALUE, --flags FLAGS and/or --baseline-tree DIR")
    if args.baseline_tree and not (args.baseline_tree / "service" / "server.py").is_file():
        parser.error(f"--baseline-tree {args.baseline_tree}: not a convserve checkout")
    changes = parse_changes(args.set)
    flags = shlex.split(args.flags)
    levels = [int(c) for c in args.concurrency.split(",")]
    changed_name = " ".join([f"{k}={v}" for k, v in changes.items()] + flags) or "this tree"
    with tempfile.TemporaryDirectory() as tmp:
        shipped, changed = Path(tmp) / "shipped", Path(tmp) / "changed"
        source = REPO_ROOT / "model_repo" / args.model
        if args.model == "resnet18" and not source.exists():
            source = Path(tmp) / "exported"
            export_resnet18(source)
            source = source / "resnet18"
        shutil.copytree(source, shipped / args.model)
        try:
            changed_copy(source, changed / args.model, changes)
        except ConfigError as exc:
            parser.error(str(exc))
        baseline = "baseline tree" if args.baseline_tree else "as shipped"
        servers = {
            baseline: (shipped, [], args.baseline_tree or REPO_ROOT),
            changed_name: (changed, flags, REPO_ROOT),
        }

        report = "busy" if args.busy else "cpu" if args.cpu else "p50"
        label, point_format, column, column_format, value = REPORTS[report]

        def serve(name: str):
            repo, extra, source = servers[name]
            if value is None:
                return busy_on(repo, extra, source, args.model, args.seconds, args.transport)
            return perf_analyzer_on(
                lambda: served_models(repo, *extra, source=source), args.model, args.seconds, args.transport, value
            )

        results = alternate(list(servers), args.rounds, levels, serve, (label, point_format))
    over = TRANSPORTS[args.transport][0]
    title = f"{args.model}, perf_analyzer V2 over {over}, medians of {args.rounds} alternating rounds"
    print_medians(results, title, "server", column, column_format)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
