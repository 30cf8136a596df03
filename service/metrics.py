"""Prometheus metrics for every stage of a request, through an injected registry.

Why injected: tests start several servers in one process, each with its own registry, and
nothing global needs cleaning up. The V2 ModelStatistics RPC reads its counts and cumulative
durations back from this same registry (`model_statistics`), so the scrape and the RPC can never
disagree. Every metric is documented in docs/metrics.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

STAGES = ("queue", "preprocess", "inference", "postprocess", "total")
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# RPCs that run a model: V2 ModelStatistics counts only these (not ModelConfig, ModelMetadata...).
INFERENCE_METHODS = frozenset(
    {"ModelInfer", "ModelStreamInfer", "Classify", "Detect", "Segment", "Explain", "StreamClassify", "StreamDetect"}
)


RECEIVE_REFUSALS = ("no_room", "no_turn", "read_timeout", "unparseable")  # service/receive_gate.py


class Metrics:
    """All convserve metrics, registered on `registry` (a fresh one per server)."""

    def __init__(self, registry: CollectorRegistry | None = None, process_metrics: bool = True):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        if process_metrics:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.requests = Counter(
            "convserve_requests",
            "RPCs (and stream frames) handled, by method and final gRPC status code.",
            ["model", "version", "method", "code"],
            registry=r,
        )
        self.images = Counter("convserve_images", "Images (batch items) run through a model.", ["model"], registry=r)
        self.latency = Histogram(
            "convserve_request_duration_seconds",
            "Latency of successful inference requests by stage: "
            "queue wait, decode+preprocess, inference, postprocess, total.",
            ["model", "version", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "convserve_batch_size",
            "Images per model execution (batching efficiency).",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "convserve_batch_requests",
            "Requests merged into one model execution (inferences per batch).",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.executions = Counter(
            "convserve_model_executions", "Model executions (batches run).", ["model"], registry=r
        )
        self.execution_seconds = Counter(
            "convserve_model_execution_seconds",
            "Wall time of model executions, timed in the worker thread that runs them.",
            ["model"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "convserve_queue_depth", "Images waiting in the model's batching queue.", ["model"], registry=r
        )
        self.inflight = Gauge("convserve_inflight_requests", "Requests being handled now.", ["model"], registry=r)
        self.rejected = Counter(
            "convserve_rejected_requests",
            "Requests refused by backpressure (queue_full) or dropped at their deadline (deadline).",
            ["model", "reason"],
            registry=r,
        )
        self.model_ready = Gauge(
            "convserve_model_ready",
            "1 when the model version is loaded, warmed up and serving.",
            ["model", "version"],
            registry=r,
        )
        self.model_provider = Gauge(
            "convserve_model_provider_info",
            "Execution provider the model's sessions really use (value 1).",
            ["model", "version", "provider"],
            registry=r,
        )
        self.model_load_seconds = Gauge(
            "convserve_model_load_seconds",
            "Seconds to load the model version (sessions created).",
            ["model", "version"],
            registry=r,
        )
        self.model_warmup_seconds = Gauge(
            "convserve_model_warmup_seconds", "Seconds the warm-up run took.", ["model", "version"], registry=r
        )
        # per (model, version), per batch size: [executions, merge s, run s, split s] (V2 batch_stats)
        self.batch_stats: dict[tuple[str, str], dict[int, list[float]]] = {}
        self.received_bytes = Gauge(
            "convserve_received_bytes",
            "Bytes of the --max-received-bytes budget held: request messages being read or held by their calls.",
            registry=r,
        )
        self.received_refusals = Counter(
            "convserve_received_refusals",
            "Unary calls and HTTP bodies ended by the received-bytes gate before their handler, by reason.",
            ["reason"],
            registry=r,
        )
        for reason in RECEIVE_REFUSALS:
            self.received_refusals.labels(reason)
        self.stream_frames_dropped = Counter(
            "convserve_stream_frames_dropped",
            "Stream frames skipped under the client's drop_frames policy.",
            ["model"],
            registry=r,
        )

    def batch_observer(self, model: str, version: str) -> "BatchMetrics":
        return BatchMetrics(self, model, version)

    def model_statistics(self, model: str, version: str) -> "ModelStats":
        """Counts and cumulative durations of one model version for V2 ModelStatistics, read from
        this registry (request series by their version label) and from the version's own batch
        tallies (the batcher-side series are per model, summed over its versions): executions and
        images run are what its batches add up to.

        Why it reads the metric objects it needs, each once: it runs on the event loop, and
        perf_analyzer asks for it around every measurement window; walking the whole registry once
        per stage and per value (the process collectors and every histogram bucket of every model)
        kept every other request waiting several times longer (bench/experiments/statistics_cost.py).
        """
        stages: dict[str, list[float]] = {}
        for sample in _version_samples(self.latency, model, version):
            if sample.name.endswith(("_count", "_sum")):
                pair = stages.setdefault(sample.labels.get("stage", ""), [0.0, 0.0])
                pair[0 if sample.name.endswith("_count") else 1] += sample.value
        ok = failed = 0.0
        for sample in _version_samples(self.requests, model, version):
            if sample.name.endswith("_total") and sample.labels.get("method") in INFERENCE_METHODS:
                if sample.labels["code"] == "OK":
                    ok += sample.value
                else:
                    failed += sample.value

        def stage(name: str) -> tuple[int, float]:
            count, total = stages.get(name, (0.0, 0.0))
            return int(count), total

        by_size = self.batch_stats.get((model, version), {})
        return ModelStats(
            success_count=int(ok),
            fail_count=int(failed),
            total=stage("total"),
            queue=stage("queue"),
            compute_input=stage("preprocess"),
            compute_infer=stage("inference"),
            compute_output=stage("postprocess"),
            inference_count=int(sum(size * totals[0] for size, totals in by_size.items())),
            execution_count=int(sum(totals[0] for totals in by_size.values())),
            batch_stats=tuple(
                (size, int(count), merge, run, split) for size, (count, merge, run, split) in sorted(by_size.items())
            ),
        )


def _version_samples(metric, model: str, version: str):
    """The samples of one metric (all its other label values) that belong to one model version."""
    for family in metric.collect():
        yield from (s for s in family.samples if s.labels.get("model") == model and s.labels.get("version") == version)


@dataclass(frozen=True)
class ModelStats:
    """(count, cumulative seconds) pairs per stage, plus request/image/execution counts."""

    success_count: int
    fail_count: int
    total: tuple[int, float]
    queue: tuple[int, float]
    compute_input: tuple[int, float]
    compute_infer: tuple[int, float]
    compute_output: tuple[int, float]
    inference_count: int
    execution_count: int
    batch_stats: tuple[
        tuple[int, int, float, float, float], ...
    ] = ()  # (batch size, executions, merge s, run s, split s)


class BatchMetrics:
    """The batcher's observer for one model version (one batcher).

    Why queue depth moves by deltas: every loaded version of a model has its own batcher, and the
    gauge is per model, so each batcher adds its change instead of overwriting the others' share.
    The per-batch-size tallies are the version's own (ModelStatistics reports versions apart).
    """

    def __init__(self, metrics: Metrics, model: str, version: str):
        self._batch_size = metrics.batch_size.labels(model)
        self._batch_requests = metrics.batch_requests.labels(model)
        self._executions = metrics.executions.labels(model)
        self._execution_seconds = metrics.execution_seconds.labels(model)
        self._queue_depth = metrics.queue_depth.labels(model)
        self._rejected = {reason: metrics.rejected.labels(model, reason) for reason in ("queue_full", "deadline")}
        self._queued = 0
        self._by_size = metrics.batch_stats.setdefault((model, version), {})

    def batch_done(
        self, images: int, requests: int, seconds: float, merge_seconds: float, split_seconds: float
    ) -> None:
        self._batch_size.observe(images)
        self._batch_requests.observe(requests)
        self._executions.inc()
        self._execution_seconds.inc(seconds)
        totals = self._by_size.setdefault(images, [0, 0.0, 0.0, 0.0])
        totals[0] += 1
        totals[1] += merge_seconds
        totals[2] += seconds
        totals[3] += split_seconds

    def rejected(self, reason: str) -> None:
        self._rejected[reason].inc()

    def queue_depth(self, images: int) -> None:
        self._queue_depth.inc(images - self._queued)
        self._queued = images
