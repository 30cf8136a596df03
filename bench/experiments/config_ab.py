"""`python -m bench.experiments.config_ab`: one model served with its shipped config vs with fields changed, A/B.

Why: a config default should come from a measurement of the served model, and on a shared machine
only measurements taken side by side mean anything. This copies the model's directory twice into
temporary repositories, changes the given fields in one copy (validated by the server's own
config loader), and drives each server with perf_analyzer (V2 over gRPC) at each concurrency, the
two alternating round by round (ABBA). Prints each round and the medians.

    python -m bench.experiments.config_ab --set batching.inline_run_max_us=0
    python -m bench.experiments.config_ab --model lenet5 --set batching.max_queue_delay_us=0 --rounds 5
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import yaml

from bench.perf import run_perf_analyzer
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.experiments.config_ab", description=__doc__)
    parser.add_argument("--model", default="lenet5", help="a model of model_repo/")
    parser.add_argument("--set", action="append", required=True, metavar="FIELD=VALUE", help="repeatable")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=6.0, help="perf_analyzer time per point")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated perf_analyzer concurrencies")
    args = parser.parse_args(argv)
    changes = parse_changes(args.set)
    levels = [int(c) for c in args.concurrency.split(",")]
    changed_name = " ".join(f"{k}={v}" for k, v in changes.items())
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        shipped, changed = Path(tmp) / "shipped", Path(tmp) / "changed"
        shutil.copytree(REPO_ROOT / "model_repo" / args.model, shipped / args.model)
        try:
            changed_copy(REPO_ROOT / "model_repo" / args.model, changed / args.model, changes)
        except ConfigError as exc:
            parser.error(str(exc))
        kinds = [("shipped config", shipped), (changed_name, changed)]
        for round_index in range(args.rounds):
            for name, repo in kinds if round_index % 2 == 0 else kinds[::-1]:
                server = served_models(repo)
                try:
                    for concurrency in levels:
                        point = run_perf_analyzer(server, args.model, "grpc", concurrency, args.seconds)
                        results.setdefault((name, concurrency), []).append(
                            (point.throughput_rps, point.latency_ms["p50"])
                        )
                        print(
                            f"round {round_index + 1} {name} c{concurrency}: {point.throughput_rps:,.0f} req/s, "
                            f"p50 {point.latency_ms['p50']:.3f} ms",
                            flush=True,
                        )
                finally:
                    server.stop()
    print(f"\n{args.model}, perf_analyzer V2 over gRPC, medians of {args.rounds} alternating rounds\n")
    print("| config | concurrency | req/s | p50 ms |\n|---|---:|---:|---:|")
    for (name, concurrency), points in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rps = statistics.median(p[0] for p in points)
        p50 = statistics.median(p[1] for p in points)
        print(f"| {name} | {concurrency} | {rps:,.0f} | {p50:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
