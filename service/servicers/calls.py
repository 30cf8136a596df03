"""One place that turns a request's outcome into a gRPC status, metrics and log lines.

Every servicer method runs its body through `CallRunner.unary` (or records a stream frame with
`finish`), so error mapping, request ids, deadlines, per-stage latency metrics and the access log
behave identically on every RPC.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Awaitable, Callable, TypeVar

import grpc

from service.dataplane import RequestContext
from service.errors import ServiceError, status_of
from service.metrics import STAGES, Metrics
from service.models import ModelRegistry
from service.settings import Limits

log = logging.getLogger("convserve.access")
T = TypeVar("T")
UNKNOWN_MODEL = "_unknown"


def request_id_of(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and value:
            return str(value)[:128]
    return uuid.uuid4().hex


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

    def model_label(self, name: str) -> str:
        """Metric label for a requested model name; unknown names share one label (bounded cardinality)."""
        return name if name in self.registry.entries else UNKNOWN_MODEL

    def new_context(self, method: str, context: grpc.aio.ServicerContext) -> RequestContext:
        ctx = RequestContext(method=method, deadline=deadline_of(context, self.limits), request_id=request_id_of(context))
        context.set_trailing_metadata((("x-request-id", ctx.request_id),))
        return ctx

    async def unary(self, method: str, model_name: str, context: grpc.aio.ServicerContext, body: Callable[[RequestContext], Awaitable[T]]) -> T:
        ctx = self.new_context(method, context)
        ctx.model = model_name
        inflight = self.metrics.inflight.labels(self.model_label(model_name))
        inflight.inc()
        try:
            response = await body(ctx)
        except asyncio.CancelledError:
            self.finish(ctx, grpc.StatusCode.CANCELLED, "cancelled by the client")
            raise
        except Exception as exc:  # mapped to a status in one place
            code, message = status_of(exc)
            self.finish(ctx, code, message, exc if not isinstance(exc, ServiceError) else None)
            await context.abort(code, message)
        else:
            self.finish(ctx, grpc.StatusCode.OK, "")
            return response
        finally:
            inflight.dec()

    def finish(self, ctx: RequestContext, code: grpc.StatusCode, message: str, unexpected: BaseException | None = None) -> None:
        """Record one finished request (or stream frame): counters, stage latencies, logs."""
        model = self.model_label(ctx.model)
        total = time.perf_counter() - ctx.started
        self.metrics.requests.labels(model, ctx.method, code.name).inc()
        if code == grpc.StatusCode.OK and model != UNKNOWN_MODEL:
            for stage in STAGES[:-1]:
                if stage in ctx.stages:
                    self.metrics.observe_stage(model, stage, ctx.stages[stage])
            self.metrics.observe_stage(model, "total", total)
        fields = {"event": "request", "method": ctx.method, "model": ctx.model, "version": ctx.version,
                  "code": code.name, "request_id": ctx.request_id, "images": ctx.images,
                  "duration_ms": round(total * 1000, 3)}
        if unexpected is not None:
            log.error("request failed unexpectedly", exc_info=unexpected, extra=fields)
        elif code != grpc.StatusCode.OK:
            log.warning("request failed", extra={**fields, "error": message})
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("request", extra=fields)
