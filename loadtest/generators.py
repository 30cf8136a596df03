"""Arrival schedules for open-loop load: when each request is due, independent of responses.

Why open loop at all: a closed-loop client slows down when the server does, which hides queueing
(coordinated omission). An open-loop client sends on a schedule, and each request's latency is
measured from the moment it was *due*, so a late send counts against the server, as a user would
feel it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

ARRIVALS = ("poisson", "constant")


def arrival_offsets(rate: float, kind: str, duration: float, seed: int = 0, phase: float = 0.0) -> Iterator[float]:
    """Due times in seconds from the start, in [0, duration), `rate` per second on average.

    poisson: exponential gaps (independent users); constant: evenly spaced, first at
    `phase`/rate (processes sharing a rate use phases 0..1 to interleave).
    """
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    if kind == "constant":
        step = 1.0 / rate
        t = phase * step
        while t < duration:
            yield t
            t += step
        return
    if kind != "poisson":
        raise ValueError(f"arrival must be one of {ARRIVALS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    t = 0.0
    while True:
        for gap in rng.exponential(1.0 / rate, 4096):
            t += gap
            if t >= duration:
                return
            yield t


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` split into `parts` integers that differ by at most one (larger ones first)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]
