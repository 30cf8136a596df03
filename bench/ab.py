"""`python -m bench.ab --tree before=PATH --tree after=.`: per-request cost of two source trees, side by side.

Why alternate: on a shared machine the load from other processes drifts minute to minute, so
two servers (one per tree, same model repository) run at once and the load tool visits them in
turn, round after round, in ABBA order (whichever goes second in a pair measured worse here);
medians over rounds are compared. The model's own run time is tiny
(the digits model), so what is measured is the serving path's cost per request.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bench.load import run_served
from bench.models import digits_model
from bench.server import served_models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=PATH", help="a source tree to serve from (twice or more)")
    parser.add_argument("--concurrency", type=int, action="append", default=None, help="default: 1 and 64")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)
    trees = [(name, Path(path).resolve()) for name, _, path in (t.partition("=") for t in args.tree)]
    levels = args.concurrency or [1, 64]
    with tempfile.TemporaryDirectory(prefix="convserve-ab-") as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        model = digits_model(repo).name
        servers = {name: served_models(repo, tree=path) for name, path in trees}
        try:
            table = {(name, c): [] for name, _ in trees for c in levels}
            for round_ in range(args.rounds):
                for concurrency in levels:
                    order = list(servers.items())
                    for name, server in order if round_ % 2 == 0 else order[::-1]:  # ABBA: no tree always goes second
                        point = run_served(server, model, "tensor", concurrency, args.seconds, 1.0)
                        table[(name, concurrency)].append(point)
                        print(f"round {round_} {name} c{concurrency}: {point.throughput_rps:.0f} req/s, "
                              f"server {point.server_cpu_us_per_request:.0f} us/req", file=sys.stderr, flush=True)
        finally:
            for server in servers.values():
                server.stop()
    markdown = _markdown(table, trees, levels, model, args)
    print(markdown)
    if args.out:
        args.out.write_text(markdown)
    return 0


def _markdown(table, trees, levels, model, args) -> str:
    lines = [f"Model `{model}`, V2 tensor input, closed loop; {args.rounds} alternating rounds of {args.seconds:g} s "
             "per tree and concurrency (ABBA order); medians over rounds.", "",
             "| tree | concurrency | server CPU us/request | req/s | p50 ms | p99 ms | client CPU us/request |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for concurrency in levels:
        for name, _ in trees:
            points = table[(name, concurrency)]
            med = lambda f: statistics.median(f(p) for p in points)  # noqa: E731
            lines.append(f"| {name} | {concurrency} | {med(lambda p: p.server_cpu_us_per_request):.0f} | "
                         f"{med(lambda p: p.throughput_rps):.0f} | {med(lambda p: p.latency_ms.get('p50', 0)):.2f} | "
                         f"{med(lambda p: p.latency_ms.get('p99', 0)):.2f} | {med(lambda p: p.client_cpu_us_per_request):.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
