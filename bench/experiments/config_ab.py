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
import tempfile
from pathlib import Path

import yaml

from bench.experiments.alternating import alternate, perf_analyzer_on, print_medians
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
    with tempfile.TemporaryDirectory() as tmp:
        shipped, changed = Path(tmp) / "shipped", Path(tmp) / "changed"
        shutil.copytree(REPO_ROOT / "model_repo" / args.model, shipped / args.model)
        try:
            changed_copy(REPO_ROOT / "model_repo" / args.model, changed / args.model, changes)
        except ConfigError as exc:
            parser.error(str(exc))
        repos = {"shipped config": shipped, changed_name: changed}

        def serve(name: str):
            return perf_analyzer_on(lambda: served_models(repos[name]), args.model, args.seconds)

        results = alternate(list(repos), args.rounds, levels, serve)
    title = f"{args.model}, perf_analyzer V2 over gRPC, medians of {args.rounds} alternating rounds"
    print_medians(results, title, "config", "p50 ms", "{:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
