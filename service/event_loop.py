"""The event loop the server runs on: uvloop where it is installed, else the standard library's.

Why: gRPC's asyncio stack and aiohttp run on any asyncio loop, and with small requests the event
loop thread is the server's bottleneck (the model runs in a worker thread). On a 2-core AMD EPYC,
perf_analyzer at concurrency 16 against lenet5 measured 5-8 % less server CPU per request and
1-7 % more requests/s on uvloop, in three alternating runs (bench/results/bench.md says how to
rerun it). `--event-loop asyncio` keeps the standard loop (for debugging or a platform without
uvloop); `uvloop` makes a missing install an error instead of a silent fallback.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class EventLoopUnavailable(RuntimeError):
    """--event-loop uvloop was asked for but uvloop is not installed."""


def chosen_loop(setting: str) -> str:
    """The loop a setting means on this machine: auto is uvloop when it can be imported."""
    if setting == "auto":
        return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    if setting == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise EventLoopUnavailable("--event-loop uvloop: uvloop is not installed (pip install uvloop)")
    return setting


def run_on(loop_name: str, main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on the named loop ("uvloop" or "asyncio")."""
    if loop_name == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)
