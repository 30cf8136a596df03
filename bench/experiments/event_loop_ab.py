"""`python -m bench.experiments.event_loop_ab`: the server on uvloop vs the standard asyncio loop, A/B.

Why: with small requests the server's event-loop thread is its bottleneck (gRPC's per-call
work runs there; the model runs in a worker thread), so the loop implementation shows in
requests/s. Both servers serve the bundled lenet5; perf_analyzer (V2 over gRPC) drives each at
concurrency 16 and 64, the two servers alternating round by round so the machine's drifting
background load moves them alike. Prints each round and the medians.

    python -m bench.experiments.event_loop_ab                  # 3 rounds, 6 s per point
    python -m bench.experiments.event_loop_ab --rounds 5 --seconds 10
"""

from __future__ import annotations

import argparse

from bench.experiments.alternating import alternate, perf_analyzer_on, print_medians
from bench.server import REPO_ROOT, served_models

LOOPS = ("asyncio", "uvloop")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.experiments.event_loop_ab", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="perf_analyzer time per point")
    parser.add_argument("--model", default="lenet5", help="a model of model_repo/")
    parser.add_argument("--concurrency", default="16,64", help="comma-separated perf_analyzer concurrencies")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]

    def serve(loop: str):
        return perf_analyzer_on(
            lambda: served_models(REPO_ROOT / "model_repo", "--event-loop", loop),
            args.model,
            args.seconds,
            second=lambda point: point.server_cpu_us_per_request,
        )

    results = alternate(LOOPS, args.rounds, levels, serve, second=("server", "{:.0f} us CPU/request"))
    title = f"{args.model}, medians of {args.rounds} alternating rounds"
    print_medians(results, title, "loop", "server CPU us/request (median)", "{:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
