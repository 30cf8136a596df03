"""From raw samples to the numbers people read: throughput, latency percentiles, errors by status.

Conventions: throughput counts successful requests that *finished* inside the measured window,
divided by its length; latency percentiles are over successful requests *sent* in the window
(errors are counted by gRPC status, not mixed into the latency). Percentiles are numpy's
linear-interpolation ones.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import grpc
import numpy as np

from loadtest.engine import DROPPED, STREAM_ERROR, RawResults

PERCENTILES = (50, 90, 95, 99)
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_PSEUDO_CODES = {DROPPED: "CLIENT_DROPPED", STREAM_ERROR: "STREAM_ERROR_MESSAGE"}  # results that have no gRPC status


@dataclass(frozen=True)
class Summary:
    """One load test's outcome; `asdict` of it is the --json document."""

    target: str
    model: str
    request: str  # what was sent, e.g. "V2 ModelInfer, tensor x1"
    mode: str  # closed | open
    concurrency: int
    rate: float
    arrival: str
    processes: int
    duration_s: float
    warmup_s: float
    images_per_request: int
    requests_ok: int
    requests_failed: int
    errors: dict[str, int]
    throughput_rps: float
    images_per_s: float
    latency_ms: dict[str, float]
    warmup_requests: int
    client_cpu_s: float
    timeline: list[dict] = field(default_factory=list)

    @property
    def requests_sent_total(self) -> int:
        """Everything sent, warm-up included (what the server's CPU time was spent on)."""
        return self.requests_ok + self.requests_failed + self.warmup_requests

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def summarise(
    raw: RawResults,
    *,
    target: str,
    model: str,
    request: str,
    concurrency: int,
    rate: float,
    arrival: str,
    processes: int,
    warmup: float,
    images_per_request: int,
) -> Summary:
    codes = np.frombuffer(raw.code, dtype=np.int32) if len(raw.code) else np.zeros(0, np.int32)
    sent = np.frombuffer(raw.sent, dtype=np.float64) if len(raw.sent) else np.zeros(0)
    latency = np.frombuffer(raw.latency, dtype=np.float64) if len(raw.latency) else np.zeros(0)
    ok = codes == 0
    in_window = (sent + latency) <= raw.duration
    finished_ok = int(np.count_nonzero(ok & in_window))
    throughput = finished_ok / raw.duration if raw.duration > 0 else 0.0
    errors: dict[str, int] = {}
    for value, count in zip(*np.unique(codes[~ok], return_counts=True)):
        name = _PSEUDO_CODES.get(int(value)) or _CODE_NAMES.get(int(value), str(int(value)))
        errors[name] = int(count)
    return Summary(
        target=target,
        model=model,
        request=request,
        mode="closed" if concurrency > 0 else "open",
        concurrency=concurrency,
        rate=rate,
        arrival=arrival if concurrency <= 0 else "",
        processes=processes,
        duration_s=round(raw.duration, 3),
        warmup_s=warmup,
        images_per_request=images_per_request,
        requests_ok=int(np.count_nonzero(ok)),
        requests_failed=int(np.count_nonzero(~ok)),
        errors=errors,
        throughput_rps=round(throughput, 2),
        images_per_s=round(throughput * images_per_request, 2),
        latency_ms=latency_stats(latency[ok]),
        warmup_requests=raw.warmup_requests,
        client_cpu_s=round(raw.cpu_seconds, 3),
        timeline=timeline(sent, latency, codes, raw.duration, step=1.0 if raw.duration >= 10 else raw.duration / 10),
    )


def latency_stats(seconds: np.ndarray) -> dict[str, float]:
    """p50/p90/p95/p99/max/mean in milliseconds (empty dict when nothing succeeded)."""
    if seconds.size == 0:
        return {}
    ms = seconds * 1000.0
    stats = {f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(ms, PERCENTILES))}
    stats.update(max=float(ms.max()), mean=float(ms.mean()), min=float(ms.min()))
    return {k: round(v, 3) for k, v in stats.items()}


def timeline(
    sent: np.ndarray, latency: np.ndarray, codes: np.ndarray, duration: float, step: float = 1.0
) -> list[dict]:
    """Per-`step` buckets by send time: successful count, errors, p50 and p99 latency (ms)."""
    buckets = []
    for start in np.arange(0.0, max(duration, step), step):
        chosen = (sent >= start) & (sent < start + step)
        good = latency[chosen & (codes == 0)] * 1000.0
        buckets.append(
            {
                "t": round(float(start), 3),
                "ok": int(good.size),
                "errors": int(np.count_nonzero(chosen & (codes != 0))),
                "p50_ms": round(float(np.percentile(good, 50)), 3) if good.size else None,
                "p99_ms": round(float(np.percentile(good, 99)), 3) if good.size else None,
            }
        )
    return buckets


def format_table(summary: Summary) -> str:
    """A short human-readable report."""
    lat = summary.latency_ms
    load = (
        f"closed loop, concurrency {summary.concurrency}"
        if summary.mode == "closed"
        else f"open loop, {summary.rate:g} req/s {summary.arrival}"
    )
    lines = [
        f"target      {summary.target}  model {summary.model}",
        f"request     {summary.request}",
        f"load        {load}, {summary.processes} process(es), {summary.duration_s:g} s measured "
        f"after {summary.warmup_s:g} s warm-up",
        f"throughput  {summary.throughput_rps:,.1f} req/s  ({summary.images_per_s:,.1f} images/s)",
        f"requests    {summary.requests_ok} ok, {summary.requests_failed} failed",
    ]
    if lat:
        header = "  ".join(f"{k:>9}" for k in ("p50", "p90", "p95", "p99", "max", "mean"))
        values = "  ".join(f"{lat[k]:9.2f}" for k in ("p50", "p90", "p95", "p99", "max", "mean"))
        lines += [f"latency ms  {header}", f"            {values}"]
    for name, count in sorted(summary.errors.items(), key=lambda kv: -kv[1]):
        lines.append(f"error       {name}: {count}")
    lines.append(
        f"client CPU  {summary.client_cpu_s:.2f} s "
        f"({1e6 * summary.client_cpu_s / max(1, summary.requests_sent_total):.0f} us/request)"
    )
    return "\n".join(lines)
