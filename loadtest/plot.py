"""`--plot FILE.png`: latency over time (every request, with per-second p50/p99) and its histogram.

matplotlib is imported only here, and only when a plot is asked for: the load tool itself needs
nothing beyond the serving dependencies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loadtest.engine import RawResults
from loadtest.report import Summary

_MAX_POINTS = 20_000


def plot_results(raw: RawResults, summary: Summary, path: Path) -> Path:
    """Write a two-panel PNG and return its path."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sent = np.frombuffer(raw.sent, dtype=np.float64) if len(raw.sent) else np.zeros(0)
    latency_ms = (np.frombuffer(raw.latency, dtype=np.float64) if len(raw.latency) else np.zeros(0)) * 1000.0
    codes = np.frombuffer(raw.code, dtype=np.int32) if len(raw.code) else np.zeros(0, np.int32)
    ok = codes == 0
    figure, (over_time, histogram) = plt.subplots(1, 2, figsize=(13, 4.5))
    shown = np.flatnonzero(ok)
    if shown.size > _MAX_POINTS:
        shown = np.random.default_rng(0).choice(shown, _MAX_POINTS, replace=False)
    over_time.scatter(sent[shown], latency_ms[shown], s=2, alpha=0.3, color="tab:blue", label="request")
    if np.any(~ok):
        over_time.scatter(
            sent[~ok],
            np.full(np.count_nonzero(~ok), max(latency_ms.max(initial=1.0), 1.0)),
            s=8,
            marker="x",
            color="tab:red",
            label="error",
        )
    buckets = [b for b in summary.timeline if b["p50_ms"] is not None]
    if buckets:
        step = summary.timeline[1]["t"] - summary.timeline[0]["t"] if len(summary.timeline) > 1 else summary.duration_s
        t = [b["t"] + step / 2 for b in buckets]
        over_time.plot(t, [b["p50_ms"] for b in buckets], color="black", label=f"p50 per {step:g} s")
        over_time.plot(t, [b["p99_ms"] for b in buckets], color="tab:orange", label=f"p99 per {step:g} s")
    over_time.set(xlabel="seconds into the measured window", ylabel="latency (ms)", title="Latency over time")
    over_time.legend(loc="upper right", fontsize=8)
    if shown.size:
        good = latency_ms[ok]
        bins = np.geomspace(max(good.min(), 1e-3), max(good.max(), good.min() * 1.01, 1e-3), 60)
        histogram.hist(good, bins=bins, color="tab:blue")
        histogram.set_xscale("log")
        for name, style in (("p50", "--"), ("p99", ":")):
            histogram.axvline(
                summary.latency_ms[name],
                color="black",
                linestyle=style,
                label=f"{name} {summary.latency_ms[name]:.2f} ms",
            )
        histogram.legend(fontsize=8)
    histogram.set(xlabel="latency (ms, log scale)", ylabel="requests", title="Latency histogram")
    load = (
        f"concurrency {summary.concurrency}"
        if summary.mode == "closed"
        else f"{summary.rate:g} req/s {summary.arrival}"
    )
    figure.suptitle(f"{summary.model}: {summary.request}, {load} — {summary.throughput_rps:,.0f} req/s")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
