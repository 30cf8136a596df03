"""Alternating rounds (ABBA) of measurements against several servers, and the table of their medians.

Why one helper: every diagnostic in bench/experiments/ compares servers on a shared machine whose
background load drifts minute to minute, so each starts the servers in turn, round by round, in
reversed order every other round, measures each at every concurrency and reports medians. The
experiments differ only in how a server is started and what a point measures.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager

from bench.load import ServedPoint
from bench.perf import run_perf_analyzer
from bench.server import ServerProcess

# what a started server offers: measure(concurrency) -> (requests/s, the experiment's second value)
Measure = Callable[[int], tuple[float, float]]
Results = dict[tuple[str, int], list[tuple[float, float]]]


def alternate(
    kinds: Sequence[str],
    rounds: int,
    levels: Sequence[int],
    serve: Callable[[str], AbstractContextManager[Measure]],
    second: tuple[str, str] = ("p50", "{:.3f} ms"),
) -> Results:
    """Each kind's server (`serve(kind)`, stopped when its block ends) measured at every level,
    kinds in order on even rounds and reversed on odd ones; prints each point as it comes.
    `second` names the second value and its format."""
    results: Results = {}
    width = max(len(kind) for kind in kinds)
    label, fmt = second
    for round_index in range(rounds):
        for kind in kinds if round_index % 2 == 0 else list(reversed(kinds)):
            with serve(kind) as measure:
                for concurrency in levels:
                    rps, value = measure(concurrency)
                    results.setdefault((kind, concurrency), []).append((rps, value))
                    print(
                        f"round {round_index + 1} {kind:{width}s} c{concurrency}: {rps:,.0f} req/s, "
                        f"{label} {fmt.format(value)}",
                        flush=True,
                    )
    return results


@contextlib.contextmanager
def perf_analyzer_on(
    start: Callable[[], ServerProcess],
    model: str,
    seconds: float,
    transport: str = "grpc",
    second: Callable[[ServedPoint], float] = lambda point: point.latency_ms["p50"],
) -> Iterator[Measure]:
    """A server from `start()`, measured by perf_analyzer (V2 over `transport`: grpc, or shm for
    system shared memory) at any concurrency, and stopped after the block: the `serve` of
    experiments whose servers are convserve processes."""
    server = start()
    try:

        def measure(concurrency: int) -> tuple[float, float]:
            point = run_perf_analyzer(server, model, transport, concurrency, seconds)
            return point.throughput_rps, second(point)

        yield measure
    finally:
        server.stop()


def print_medians(results: Results, title: str, kind_column: str, second_column: str, second_format: str) -> None:
    """A markdown table of each (kind, concurrency)'s medians, by concurrency then kind."""
    print(f"\n{title}\n")
    print(f"| {kind_column} | concurrency | req/s | {second_column} |\n|---|---:|---:|---:|")
    for (kind, concurrency), points in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rps = statistics.median(p[0] for p in points)
        value = statistics.median(p[1] for p in points)
        print(f"| {kind} | {concurrency} | {rps:,.0f} | {second_format.format(value)} |")
