"""Assemble and run the gRPC server: servicers, health, reflection, metrics, shutdown.

Shutdown sequence on SIGTERM/SIGINT (what Kubernetes relies on): health turns NOT_SERVING at
once so load balancers stop sending; after `shutdown_grace_s` new calls are refused with
UNAVAILABLE; calls admitted before that (some still decoding their images) and queued requests get
up to `drain_timeout_s` to finish, the batchers closing only once the admitted calls are done; then
the process exits 0. Nothing that was accepted is dropped silently.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from prometheus_client import start_http_server

from service.api import DESCRIPTOR_POOL
from service.auth import auth_interceptor, refusal_handler, token_policy
from service.api.convserve.v1 import vision_pb2, vision_pb2_grpc
from service.api.inference import grpc_service_pb2, grpc_service_pb2_grpc
from service.http.app import HttpServer, start_http
from service.http.calls import RequestPath
from service.memory import return_freed_memory, trim_periodically
from service.pipelines.core import Stages
from service.metrics import Metrics
from service.models import LoadOptions, ModelRegistry
from service.runtime import cpu_count, import_onnxruntime
from service.servicers.calls import CallRunner
from service.servicers.inference import InferenceServicer
from service.servicers.lifecycle import Lifecycle
from service.servicers.vision import VisionServicer
from service.receive_gate import ReceiveGate, ReceiveGateInterceptor
from service.servicers.infer_wire import split_infer_request
from service.settings import ServerSettings
from service.shared_memory import SharedMemoryMetrics, SharedMemoryRegistry

log = logging.getLogger("convserve.server")

SERVICE_NAMES = (
    grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
    vision_pb2.DESCRIPTOR.services_by_name["VisionService"].full_name,
)
MODEL_INFER_METHOD = f"/{SERVICE_NAMES[0]}/ModelInfer"


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    """Refuses new calls with UNAVAILABLE once shutdown has passed its grace period."""

    def __init__(self, lifecycle: Lifecycle):
        self.lifecycle = lifecycle

    async def intercept_service(self, continuation, handler_call_details):
        if not self.lifecycle.accepting and not handler_call_details.method.startswith("/grpc.health"):
            return refusal_handler(
                grpc.StatusCode.UNAVAILABLE,
                "server is shutting down; retry on another replica",
                handler_call_details.method,
            )
        return await continuation(handler_call_details)


@dataclass
class RunningServer:
    """Handles to a started server, for the CLI and for tests."""

    server: grpc.aio.Server
    port: int
    metrics_port: int | None
    registry: ModelRegistry
    metrics: Metrics
    lifecycle: Lifecycle
    health: object  # grpc_health aio HealthServicer
    stages: Stages
    settings: ServerSettings
    shared_memory: SharedMemoryRegistry
    calls: CallRunner
    memory_trimmer: asyncio.Task | None = None
    http: HttpServer | None = None

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http else None

    async def stop(self) -> None:
        await shutdown(self)


def _grpc_options(settings: ServerSettings) -> list[tuple[str, int]]:
    size = settings.limits.max_message_bytes
    options = [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        ("grpc.so_reuseport", 0),
        # BDP probing grows every stream's receive window to megabytes, so gRPC would take in that
        # much of each call's message before the call has room to read it (service/receive_gate.py)
        ("grpc.http2.bdp_probe", 0),
    ]
    if settings.http2_max_frame_bytes:
        options.append(("grpc.http2.max_frame_size", settings.http2_max_frame_bytes))
    if settings.http2_lookahead_bytes:
        options.append(("grpc.http2.lookahead_bytes", settings.http2_lookahead_bytes))
    if settings.max_connection_age_s > 0:
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(max(settings.drain_timeout_s, 5) * 1000)),
        ]
    return options


def _server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None:
        return None
    chain = settings.tls_cert.read_bytes()
    key = settings.tls_key.read_bytes()
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def start_server(settings: ServerSettings, interceptors: list | None = None) -> RunningServer:
    """Start serving: health NOT_SERVING while models load and warm up, SERVING after."""
    import_onnxruntime()  # refuse to start, clearly, without an ONNX Runtime build
    return_freed_memory()
    metrics = Metrics()
    lifecycle = Lifecycle()
    registry = ModelRegistry(
        settings.model_repo, metrics, LoadOptions(settings.providers, settings.require_gpu, settings.drain_timeout_s)
    )
    stages = Stages(registry, metrics, settings.limits, settings.preprocess_threads or cpu_count())
    calls = CallRunner(metrics, registry, settings.limits)
    shared_memory = SharedMemoryRegistry(SharedMemoryMetrics(metrics.registry))
    policy = token_policy(settings)
    # every unary call reads its message under the server's received-bytes budget (HTTP bodies too);
    # ModelInfer's tensor bytes stay views of the message they arrived in
    gate = ReceiveGate.from_limits(settings.limits, metrics)
    reads = ReceiveGateInterceptor(gate, {MODEL_INFER_METHOD: split_infer_request})
    chain = [reads, AdmissionInterceptor(lifecycle), auth_interceptor(policy), *(interceptors or [])]
    server = grpc.aio.server(
        interceptors=[i for i in chain if i is not None],
        options=_grpc_options(settings),
        maximum_concurrent_rpcs=None,
    )
    v2 = InferenceServicer(stages, calls, lifecycle, settings.repository_api, shared_memory=shared_memory)
    add_generic(grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server, v2, server)
    add_generic(vision_pb2_grpc.add_VisionServiceServicer_to_server, VisionServicer(stages, calls), server)
    health_servicer = health.aio.HealthServicer()
    add_generic(health_pb2_grpc.add_HealthServicer_to_server, health_servicer, server)
    _enable_reflection(server)
    await _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
    address = f"{settings.host}:{settings.port}"
    credentials = _server_credentials(settings)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind the gRPC port {address}")
    metrics_port = None
    if settings.metrics_port >= 0:
        http_server, _ = start_http_server(settings.metrics_port, addr=settings.host, registry=metrics.registry)
        metrics_port = http_server.server_port
    await server.start()
    http = None
    if settings.http_port >= 0:
        path = RequestPath(stages, v2, shared_memory, lifecycle)
        http = await start_http(settings, path, calls, lifecycle, policy, gate)
    log.info(
        "server started",
        extra={
            "event": "server_started",
            "port": port,
            "metrics_port": metrics_port,
            "http_port": http.port if http else None,
            "providers": ",".join(settings.providers),
            "model_repo": str(settings.model_repo),
            "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],  # uvloop or asyncio
        },
    )
    trimmer = asyncio.get_running_loop().create_task(trim_periodically())
    running = RunningServer(
        server,
        port,
        metrics_port,
        registry,
        metrics,
        lifecycle,
        health_servicer,
        stages,
        settings,
        shared_memory,
        calls,
        trimmer,
        http,
    )
    started = time.perf_counter()
    _warn_cuda_once(settings)
    await registry.load_all()
    lifecycle.serving = True
    await _set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "server ready",
        extra={
            "event": "server_ready",
            "load_s": round(time.perf_counter() - started, 3),
            "models": {n: e.state for n, e in registry.entries.items()},
        },
    )
    return running


class _GenericHandlers:
    """Stands in for the server while a generated `add_*Servicer_to_server` runs: keeps the generic
    handler it registers and drops its registered-method handlers."""

    def __init__(self):
        self.handlers: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers) -> None:
        self.handlers.extend(handlers)

    def add_registered_method_handlers(self, service_name, method_handlers) -> None:
        pass


def add_generic(add_to_server, servicer, server: grpc.aio.Server) -> None:
    """Add a service's methods as generic handlers only, not as gRPC "registered methods".

    Why: grpc.aio keeps one pending request per registered method and, for every call it accepts,
    waits on all of them at once (asyncio.wait): with the 28 methods of the V2, vision, health and
    reflection services that wait cost the event loop more per call than the lookup of a generic
    handler (one dict lookup per service). docs/load-testing.md, "Registered methods".
    """
    generic = _GenericHandlers()
    add_to_server(servicer, generic)
    if not generic.handlers:
        raise RuntimeError(f"{add_to_server.__qualname__} registered no generic handler")
    server.add_generic_rpc_handlers(tuple(generic.handlers))


def _enable_reflection(server: grpc.aio.Server) -> None:
    """Reflection over our private descriptor pool (tritonclient owns the default pool's `inference.*`)."""
    try:
        DESCRIPTOR_POOL.FindFileByName(health_pb2.DESCRIPTOR.name)
    except KeyError:
        DESCRIPTOR_POOL.AddSerializedFile(health_pb2.DESCRIPTOR.serialized_pb)
    names = (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)
    # what reflection.enable_server_reflection does for an aio server, added as generic handlers
    servicer = reflection.aio.ReflectionServicer(names, pool=DESCRIPTOR_POOL)
    add_generic(reflection_pb2_grpc.add_ServerReflectionServicer_to_server, servicer, server)


def _warn_cuda_once(settings: ServerSettings) -> None:
    ort = import_onnxruntime()
    if "cuda" in settings.providers and "CUDAExecutionProvider" not in ort.get_available_providers():
        log.warning(
            "CUDA was requested but this ONNX Runtime build has no CUDA provider; every model runs on the CPU",
            extra={"event": "cuda_unavailable", "available": ort.get_available_providers()},
        )


async def _set_health(servicer, status) -> None:
    for name in ("", *SERVICE_NAMES):
        await servicer.set(name, status)


async def shutdown(running: RunningServer) -> None:
    settings = running.settings
    log.info(
        "shutting down",
        extra={"event": "shutdown_started", "grace_s": settings.shutdown_grace_s, "drain_s": settings.drain_timeout_s},
    )
    running.lifecycle.serving = False
    await _set_health(running.health, health_pb2.HealthCheckResponse.NOT_SERVING)
    await asyncio.sleep(settings.shutdown_grace_s)
    running.lifecycle.accepting = False
    # Calls admitted before this point are drained, not refused: first let them reach their batcher
    # (they may still be decoding), then drain the batchers with what is left of the drain timeout.
    drain_until = time.monotonic() + settings.drain_timeout_s
    await running.calls.wait_for_calls(settings.drain_timeout_s)
    await running.registry.close(max(0.0, drain_until - time.monotonic()))
    # Keep answering UNAVAILABLE a moment after the drain, so clients still sending learn it from a
    # status rather than from a transport closing under a request in flight.
    await asyncio.sleep(min(1.0, settings.shutdown_grace_s))
    if running.http is not None:
        await running.http.stop()
    await running.server.stop(grace=settings.drain_timeout_s)
    running.stages.close()
    running.shared_memory.close()  # every region unmapped; clients keep (and unlink) their objects
    if running.memory_trimmer is not None:
        running.memory_trimmer.cancel()
    log.info("stopped", extra={"event": "shutdown_done"})


async def serve_forever(settings: ServerSettings) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully; returns the exit code."""
    running = await start_server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    poller = loop.create_task(_poll_repository(running)) if settings.poll_interval_s > 0 else None
    await stop.wait()
    if poller:
        poller.cancel()
    await shutdown(running)
    return 0


async def _poll_repository(running: RunningServer) -> None:
    """Poll mode: load new models and swap in changed version sets after their warm-up."""
    from service.repository import list_versions, model_directories

    while True:
        await asyncio.sleep(running.settings.poll_interval_s)
        try:
            for directory in model_directories(running.registry.repo):
                entry = running.registry.entries.get(directory.name)
                try:
                    versions = set(list_versions(directory))
                except Exception:
                    continue
                if entry is None or (entry.state == "READY" and versions != set(entry.versions)):
                    await running.registry.load(directory.name)
        except Exception:
            log.exception("repository poll failed", extra={"event": "poll_failed"})
