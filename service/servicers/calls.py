"""One place that turns a request's outcome into a gRPC status, metrics and log lines.

Every servicer method runs its body through `CallRunner.unary` (or records a stream frame with
`finish`), so error mapping, request ids, deadlines, per-stage latency metrics and the access log
behave identically on every RPC.

Request ids: the client's `x-request-id` metadata, or a generated one, is fixed once per call and
sent back in the trailing metadata; every frame of a stream logs the id of its call, so one grep
finds a client's whole stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from typing import Awaitable, Callable, TypeVar

import grpc

from service.pipelines.request import RequestContext
from service.models import LoadedVersion
from service.errors import ServiceError, status_of
from service.metrics import STAGES, Metrics
from service.models import ModelRegistry
from service.settings import Limits

log = logging.getLogger("convserve.access")
T = TypeVar("T")
UNKNOWN_MODEL = "_unknown"
REQUEST_ID_KEY = "x-request-id"
MAX_REQUEST_ID = 128
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """32 hex characters, unique in this process: a random per-process prefix and a counter.

    Why not uuid4: it reads os.urandom and builds a UUID object on every call, a measurable
    share of the per-request cost at thousands of requests per second.
    """
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


class LabelledChildren:
    """`metric.labels(*values)`, memoised per (metric, values).

    Why: prometheus_client's labels() validates, joins and locks on every call (~2 us), and a
    request needs it half a dozen times. Label values here are bounded (known models, versions,
    methods, status codes, stages), so the memo stays small.
    """

    def __init__(self):
        self._children: dict[tuple, object] = {}

    def get(self, metric, *values: str):
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child


def request_id_of(context: grpc.aio.ServicerContext) -> str:
    """The call's request id: the one already fixed for this call, the client's, or a new one.

    Why look at the trailing metadata first: a stream makes one RequestContext per frame, and all
    of them must share the id that the client will read back from the trailers.
    """
    for metadata in (context.trailing_metadata(), context.invocation_metadata()):
        for key, value in metadata or ():
            if key == REQUEST_ID_KEY and value:
                return str(value)[:MAX_REQUEST_ID]
    return new_request_id()


def deadline_of(context: grpc.aio.ServicerContext, limits: Limits) -> float:
    """Absolute monotonic deadline: the client's, capped by the server's max_deadline_s."""
    remaining = context.time_remaining()
    budget = limits.max_deadline_s if remaining is None else min(remaining, limits.max_deadline_s)
    return time.monotonic() + budget


class CallRunner:
    def __init__(self, metrics: Metrics, registry: ModelRegistry, limits: Limits):
        self.metrics = metrics
        self.registry = registry
        self.limits = limits
        self._children = LabelledChildren()
        self._open_streams = 0  # streaming calls of every API, against limits.max_concurrent_streams
        self._peer_streams: dict[str, int] = {}  # the same per client connection, against max_streams_per_peer
        self._active_calls = 0  # unary calls admitted and not finished: what a shutdown drains first

    async def wait_for_calls(self, timeout_s: float) -> None:
        """Return once every admitted unary call has finished, or after `timeout_s` (shutdown's drain).

        Why: a call admitted just before the server stopped accepting may still be decoding its
        images when the batchers close; closing them first answered it UNAVAILABLE instead of running it.
        """
        give_up = time.monotonic() + timeout_s
        while self._active_calls and time.monotonic() < give_up:
            await asyncio.sleep(0.01)

    def model_label(self, name: str) -> str:
        """Metric label for a requested model name; unknown names share one label (bounded cardinality)."""
        return name if name in self.registry.entries else UNKNOWN_MODEL

    def new_context(self, method: str, context: grpc.aio.ServicerContext) -> RequestContext:
        ctx = RequestContext(
            method=method, deadline=deadline_of(context, self.limits), request_id=request_id_of(context)
        )
        context.set_trailing_metadata(((REQUEST_ID_KEY, ctx.request_id),))
        return ctx

    def frame_context(self, method: str, context: grpc.aio.ServicerContext, model: LoadedVersion) -> RequestContext:
        """Context for one frame of a long-lived stream: the call's request id, a per-frame deadline.

        The call's own deadline bounds the whole stream, so each frame gets the server's cap instead.
        """
        ctx = RequestContext(
            method=method, deadline=time.monotonic() + self.limits.max_deadline_s, request_id=request_id_of(context)
        )
        context.set_trailing_metadata(((REQUEST_ID_KEY, ctx.request_id),))
        ctx.model, ctx.version = model.name, str(model.version)
        return ctx

    @contextlib.asynccontextmanager
    async def stream_slot(self, context: grpc.aio.ServicerContext):
        """Hold one of `max_concurrent_streams`, and one of its connection's `max_streams_per_peer`,
        while a streaming call runs; refuse the call with RESOURCE_EXHAUSTED when either is taken.

        One count for every streaming method of either API, because each open stream holds server
        memory and a reader task whichever API it speaks. The per-peer cap (gRPC's peer address: one
        client connection) keeps a single client from holding every slot; a stream that stays
        idle is closed where its frames are read (service.receive_gate.GatedFrames: the other half
        of fairness).
        """
        limits = self.limits
        peer = context.peer() or ""
        if self._open_streams >= limits.max_concurrent_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many concurrent streams (limit {limits.max_concurrent_streams})",
            )
        if self._peer_streams.get(peer, 0) >= limits.max_streams_per_peer:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many concurrent streams on this connection (limit {limits.max_streams_per_peer} "
                "per client connection, --max-streams-per-peer)",
            )
        self._open_streams += 1
        self._peer_streams[peer] = self._peer_streams.get(peer, 0) + 1
        try:
            yield
        finally:
            self._open_streams -= 1
            self._peer_streams[peer] -= 1
            if not self._peer_streams[peer]:
                del self._peer_streams[peer]

    @contextlib.contextmanager
    def inflight(self, model_name: str):
        """Counts a request (or stream frame) in convserve_inflight_requests while the block runs."""
        gauge = self._children.get(self.metrics.inflight, self.model_label(model_name))
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    async def unary(
        self,
        method: str,
        model_name: str,
        context: grpc.aio.ServicerContext,
        body: Callable[[RequestContext], Awaitable[T]],
    ) -> T:
        ctx = self.new_context(method, context)
        try:
            return await self.run(ctx, model_name, body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # already recorded by run(); the same mapping gives the client its status
            failure = status_of(exc)
        # The status is set, not raised with context.abort: gRPC keeps an abort's exception on the
        # call, and its traceback holds this frame and the ones below (the request's bytes, its
        # tensors) in a reference cycle only the garbage collector frees. With a non-OK status set,
        # gRPC sends no response message, so returning None is what aborting did, minus the cycle.
        context.set_code(failure[0])
        context.set_details(failure[1])
        return None  # type: ignore[return-value]

    def plain_context(self, method: str, request_id: str | None, timeout_s: float | None) -> RequestContext:
        """A request context for a front end without gRPC metadata (HTTP): the client's request id
        (bounded) or a new one, and its timeout capped by max_deadline_s as gRPC deadlines are."""
        budget = self.limits.max_deadline_s if timeout_s is None else min(timeout_s, self.limits.max_deadline_s)
        return RequestContext(
            method=method,
            deadline=time.monotonic() + budget,
            request_id=request_id[:MAX_REQUEST_ID] if request_id else new_request_id(),
        )

    async def run(self, ctx: RequestContext, model_name: str, body: Callable[[RequestContext], Awaitable[T]]) -> T:
        """Run one request's body, counted in flight and as an active call (what a shutdown drains),
        and record its outcome (metrics, logs); an error is recorded with its status and raised again
        for the front end (gRPC or HTTP) to report."""
        ctx.model = model_name
        inflight = self._children.get(self.metrics.inflight, self.model_label(model_name))
        inflight.inc()  # inline rather than `with self.inflight(...)`: this runs on every call
        self._active_calls += 1
        try:
            response = await body(ctx)
        except asyncio.CancelledError:
            self.finish(ctx, grpc.StatusCode.CANCELLED, "cancelled by the client")
            raise
        except Exception as exc:  # mapped to a status in one place
            self.finish(ctx, *status_of(exc), exc if not isinstance(exc, ServiceError) else None)
            raise
        else:
            self.finish(ctx, grpc.StatusCode.OK, "")
            return response
        finally:
            inflight.dec()
            self._active_calls -= 1

    def finish(
        self, ctx: RequestContext, code: grpc.StatusCode, message: str, unexpected: BaseException | None = None
    ) -> None:
        """Record one finished request (or stream frame): counters, stage latencies, logs.

        Stage latencies are observed only for successful requests that ran the model, so the
        histograms describe inference (ModelConfig or ModelMetadata calls would skew `total`).
        """
        model = self.model_label(ctx.model)
        version = ctx.version if model != UNKNOWN_MODEL else ""
        total = time.perf_counter() - ctx.started
        ok = code == grpc.StatusCode.OK
        self._children.get(self.metrics.requests, model, version, ctx.method, code.name).inc()
        if ok and model != UNKNOWN_MODEL and "inference" in ctx.stages:
            latency, stages = self.metrics.latency, ctx.stages  # memoised label children
            for stage in STAGES[:-1]:
                if stage in stages:
                    self._children.get(latency, model, version, stage).observe(stages[stage])
            self._children.get(latency, model, version, "total").observe(total)
        if ok and unexpected is None and not log.isEnabledFor(logging.DEBUG):
            return  # the common case: no access-log line, so no fields to build
        fields = {
            "event": "request",
            "method": ctx.method,
            "model": ctx.model,
            "version": ctx.version,
            "code": code.name,
            "request_id": ctx.request_id,
            "images": ctx.images,
            "duration_ms": round(total * 1000, 3),
        }
        if unexpected is not None:
            log.error("request failed unexpectedly", exc_info=unexpected, extra=fields)
        elif code != grpc.StatusCode.OK:
            log.warning("request failed", extra={**fields, "error": message})
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("request", extra=fields)
