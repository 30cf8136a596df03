"""HTTP handlers: the V2 REST endpoints (Triton's paths and shapes) and the vision API as JSON.

Each handler reads the request (body bounded by the front door, service/http/app.py), runs the
call through CallRunner.run (the same metrics, logs and error recording as gRPC, under the same
method names) and writes JSON. Errors are raised, never answered here: the front door maps every
one through the one status table.
"""

from __future__ import annotations

import json
import time

from aiohttp import web

from service.http import vision_json
from service.http.binary import BINARY_CONTENT_TYPE, HEADER_LENGTH
from service.http.calls import RequestPath
from service.http.proto_json import message_to_json
from service.http.status import BodyTooLarge
from service.errors import InvalidArgument
from service.http.v2_json import infer_response, load_json, parse_infer_request
from service.servicers.calls import CallRunner

PATH = web.AppKey("path", RequestPath)
CALLS = web.AppKey("calls", CallRunner)
REQUEST_ID = web.RequestKey("request_id", str)  # set by the front door, read by the handlers


def json_response(document, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(document).encode(), status=status, content_type="application/json")


def empty(ok: bool) -> web.Response:
    """KServe V2 health answers: the status is the answer (200 true, 400 false), the body empty."""
    return web.Response(status=200 if ok else 400)


async def read_body(request: web.Request) -> bytes:
    """The body, refused from Content-Length before reading; aiohttp's client_max_size bounds the rest."""
    limit = request.app[CALLS].limits.max_message_bytes
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(
            f"request body of {request.content_length} bytes is over the limit of {limit} (--max-message-bytes)"
        )
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(f"request body is over the limit of {limit} bytes (--max-message-bytes)") from None


async def run_call(request: web.Request, method: str, model: str, body, timeout_s: float | None = None):
    calls = request.app[CALLS]
    ctx = calls.plain_context(method, request[REQUEST_ID], timeout_s)
    return await calls.run(ctx, model, body)


def _model_ref(request: web.Request) -> tuple[str, str]:
    return request.match_info["name"], request.match_info.get("version", "")


# -- V2: health, metadata, configuration, statistics, repository ---------------------------------


async def live(request: web.Request) -> web.Response:
    return empty(True)


async def ready(request: web.Request) -> web.Response:
    return empty(request.app[PATH].server_ready())


async def server_metadata(request: web.Request) -> web.Response:
    return json_response(request.app[PATH].server_metadata())


async def model_ready(request: web.Request) -> web.Response:
    return empty(request.app[PATH].model_ready(*_model_ref(request)))


async def model_metadata(request: web.Request) -> web.Response:
    name, version = _model_ref(request)
    reply = await run_call(
        request, "ModelMetadata", name, lambda ctx: request.app[PATH].model_metadata(ctx, name, version)
    )
    return json_response(message_to_json(reply))


async def model_config(request: web.Request) -> web.Response:
    """Triton answers the ModelConfig itself, not wrapped in {"config": ...}."""
    name, version = _model_ref(request)
    reply = await run_call(request, "ModelConfig", name, lambda ctx: request.app[PATH].model_config(ctx, name, version))
    return json_response(message_to_json(reply.config))


async def model_statistics(request: web.Request) -> web.Response:
    name, version = request.match_info.get("name", ""), request.match_info.get("version", "")
    reply = await run_call(
        request, "ModelStatistics", name, lambda ctx: request.app[PATH].model_statistics(ctx, name, version)
    )
    return json_response(message_to_json(reply))


async def repository_index(request: web.Request) -> web.Response:
    """POST /v2/repository/index {"ready": bool}: a JSON list of {name, version, state, reason}."""
    body = await read_body(request)
    document = load_json(body, 16, "repository index request") if body.strip() else {}
    ready_only = document.get("ready", False) if isinstance(document, dict) else None
    if not isinstance(ready_only, bool):
        raise InvalidArgument('repository index request must be a JSON object like {"ready": true}')
    index = request.app[PATH].repository_index(ready_only)
    return json_response([message_to_json(model) for model in index.models])


async def repository_load(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await read_body(request)  # Triton's optional {"parameters": ...}: convserve loads from the repository only
    await run_call(request, "RepositoryModelLoad", name, lambda ctx: request.app[PATH].load(name))
    return web.Response(status=200)


async def repository_unload(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await read_body(request)
    await run_call(request, "RepositoryModelUnload", name, lambda ctx: request.app[PATH].unload(name))
    return web.Response(status=200)


# -- V2 system shared memory (Triton's HTTP shapes; the regions are the ones gRPC registers) -----


async def shm_status(request: web.Request) -> web.Response:
    name = request.match_info.get("region", "")
    regions = await run_call(
        request, "SystemSharedMemoryStatus", "", lambda ctx: _now(request.app[PATH].shared_memory_status(name))
    )
    return json_response(
        [{"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size} for r in regions]
    )


async def shm_register(request: web.Request) -> web.Response:
    """POST /v2/systemsharedmemory/region/{region}/register {"key": str, "offset": int, "byte_size": int}."""
    name = request.match_info["region"]
    document = load_json(await read_body(request), 16, "register request")
    if not isinstance(document, dict):
        raise InvalidArgument('register request must be a JSON object {"key", "offset", "byte_size"}')
    key, offset, size = document.get("key"), document.get("offset", 0), document.get("byte_size")
    if not isinstance(key, str) or not all(isinstance(v, int) and not isinstance(v, bool) for v in (offset, size)):
        raise InvalidArgument("register request needs key (string), byte_size and offset (integers)")
    await run_call(
        request,
        "SystemSharedMemoryRegister",
        "",
        lambda ctx: _now(request.app[PATH].shared_memory_register(name, key, offset, size)),
    )
    return web.Response(status=200)


async def shm_unregister(request: web.Request) -> web.Response:
    name = request.match_info.get("region", "")  # none: every region
    await read_body(request)
    await run_call(
        request, "SystemSharedMemoryUnregister", "", lambda ctx: _now(request.app[PATH].shared_memory_unregister(name))
    )
    return web.Response(status=200)


async def _now(value):
    """A synchronous call's result as the awaitable CallRunner.run takes."""
    return value


# -- V2 inference ---------------------------------------------------------------------------


async def infer(request: web.Request) -> web.Response:
    name, version = _model_ref(request)
    body = await read_body(request)
    limits = request.app[CALLS].limits

    async def call(ctx):  # decoding is part of the request, as over gRPC: its refusals are counted and logged
        parsed = parse_infer_request(
            body, request.headers.get(HEADER_LENGTH), limits.max_json_elements, limits.max_images_per_request
        )
        if parsed.timeout_s is not None:  # the client's timeout, within the server's cap
            ctx.deadline = min(ctx.deadline, time.monotonic() + parsed.timeout_s)
        answer = await request.app[PATH].infer(ctx, name, version, parsed)
        outputs, in_shared_memory = answer.value
        return infer_response(parsed, answer.model_name, answer.model_version, outputs, in_shared_memory)

    content, header_length = await run_call(request, "ModelInfer", name, call)
    if header_length is None:
        return web.Response(body=content, content_type="application/json")
    return web.Response(body=content, content_type=BINARY_CONTENT_TYPE, headers={HEADER_LENGTH: str(header_length)})


# -- the vision API ---------------------------------------------------------------------------


async def _classify(path: RequestPath, ctx, name, version, image, query):
    explain = vision_json.explain_options(query, True) if vision_json.query_bool(query, "explain") else None
    return await path.classify(ctx, name, version, image, vision_json.query_int(query, "top_k") or 0, explain)


async def _detect(path: RequestPath, ctx, name, version, image, query):
    return await path.detect(ctx, name, version, image, vision_json.detect_options(query))


async def _segment(path: RequestPath, ctx, name, version, image, query):
    return await path.segment(ctx, name, version, image, vision_json.query_bool(query, "overlay"))


async def _explain(path: RequestPath, ctx, name, version, image, query):
    return await path.explain(ctx, name, version, image, vision_json.explain_options(query, False))


_VISION = {  # call -> (metrics method name, the call with its options from the query, JSON of the answer)
    "classify": ("Classify", _classify, vision_json.classify_json),
    "detect": ("Detect", _detect, vision_json.detect_json),
    "segment": ("Segment", _segment, vision_json.segment_json),
    "explain": ("Explain", _explain, vision_json.explain_json),
}


def vision_handler(call: str):
    method, run, to_json = _VISION[call]

    async def handler(request: web.Request) -> web.Response:
        name, version = _model_ref(request)
        vision_json.check_query(call, request.query)
        image = await read_body(request)
        answer = await run_call(
            request, method, name, lambda ctx: run(request.app[PATH], ctx, name, version, image, request.query)
        )
        return json_response(to_json(answer))

    handler.__name__ = f"vision_{call}"
    return handler


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/v2/health/live", live)
    router.add_get("/v2/health/ready", ready)
    router.add_get("/v2", server_metadata)
    router.add_get("/v2/models/stats", model_statistics)
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        router.add_get(prefix, model_metadata)
        router.add_get(prefix + "/ready", model_ready)
        router.add_get(prefix + "/config", model_config)
        router.add_get(prefix + "/stats", model_statistics)
        router.add_post(prefix + "/infer", infer)
    router.add_post("/v2/repository/index", repository_index)
    router.add_post("/v2/repository/models/{name}/load", repository_load)
    router.add_post("/v2/repository/models/{name}/unload", repository_unload)
    router.add_get("/v2/systemsharedmemory/status", shm_status)
    router.add_get("/v2/systemsharedmemory/region/{region}/status", shm_status)
    router.add_post("/v2/systemsharedmemory/region/{region}/register", shm_register)
    router.add_post("/v2/systemsharedmemory/region/{region}/unregister", shm_unregister)
    router.add_post("/v2/systemsharedmemory/unregister", shm_unregister)
    for prefix in ("/v1/models/{name}", "/v1/models/{name}/versions/{version}"):
        for call in _VISION:
            router.add_post(f"{prefix}/{call}", vision_handler(call))
