"""The HTTP server: an aiohttp application in the gRPC server's event loop, on its own port.

Why aiohttp (over Starlette on uvicorn): both answered a small JSON request in the same time here
(docs/http.md gives the figures and the command); aiohttp's AppRunner is built to be embedded in a
running loop and leaves signal handling to the host process, where uvicorn's Server installs its
own SIGINT/SIGTERM handlers, which would bypass convserve's graceful shutdown.

The front door (one middleware) does, for every request and in this order: fix the request id
(the client's `x-request-id` or a new one, echoed back), refuse new calls while shutting down
(503), check the bearer token with the same policy as gRPC (service/auth.py), reserve room for the
body in the server's received-bytes budget (service/receive_gate.py), then run the handler and
turn any error into its status from the one table (service/http/status.py) with a JSON
`{"error": ...}` body.
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from service.auth import TokenPolicy, bearer_token
from service.errors import Unavailable, status_of
from service.http.calls import RequestPath
from service.http.routes import CALLS, PATH, REQUEST_ID, add_routes
from service.http.status import error_body, http_status_of
from service.receive_gate import ReceiveGate
from service.servicers.calls import MAX_REQUEST_ID, REQUEST_ID_KEY, CallRunner, new_request_id
from service.servicers.lifecycle import Lifecycle

log = logging.getLogger("convserve.http")
CONSOLE = Path(__file__).resolve().parent / "console"
OPEN_PREFIXES = ("/v2/health/", "/console/")  # probes and the console's static files
ADMIN_SUFFIXES = ("/load", "/unload")
SHUTTING_DOWN = "server is shutting down; retry on another replica"


@dataclass
class HttpServer:
    runner: web.AppRunner
    port: int

    async def stop(self) -> None:
        await self.runner.shutdown()
        await self.runner.cleanup()


def _is_open(path: str) -> bool:
    return path == "/" or path.startswith(OPEN_PREFIXES)


def _is_admin(path: str) -> bool:
    return path.startswith("/v2/repository/models/") and path.endswith(ADMIN_SUFFIXES)


def front_door(lifecycle: Lifecycle, policy: TokenPolicy | None, gate: ReceiveGate):
    @web.middleware
    async def middleware(request: web.Request, handler):
        request_id = (request.headers.get(REQUEST_ID_KEY) or "")[:MAX_REQUEST_ID] or new_request_id()
        request[REQUEST_ID] = request_id
        path = request.path
        try:
            if not lifecycle.accepting and not path.startswith("/v2/health/"):
                raise Unavailable(SHUTTING_DOWN)
            if policy is not None:
                refusal = policy.refusal(
                    bearer_token(request.headers.get("Authorization")),
                    open_call=_is_open(path),
                    admin_call=_is_admin(path),
                )
                if refusal is not None:
                    raise refusal
            if request.body_exists:  # bodies count against --max-received-bytes like gRPC messages
                async with gate.body_reservation(request.content_length):
                    response = await handler(request)
            else:
                response = await handler(request)
        except web.HTTPException as exc:  # aiohttp's own answers (unknown path, wrong method)
            response = web.Response(status=exc.status, body=error_body(exc.reason), content_type="application/json")
        except Exception as exc:
            status, (_, message) = http_status_of(exc), status_of(exc)
            if status == 500:
                log.error(
                    "http request failed unexpectedly",
                    exc_info=exc,
                    extra={"event": "http_error", "path": path[:200], "request_id": request_id},
                )
            response = web.Response(status=status, body=error_body(message), content_type="application/json")
        response.headers[REQUEST_ID_KEY] = request_id
        return response

    return middleware


async def console_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(CONSOLE / "index.html")


def build_app(
    path: RequestPath, calls: CallRunner, lifecycle: Lifecycle, policy: TokenPolicy | None, gate: ReceiveGate
) -> web.Application:
    # client_max_size bounds bodies sent without Content-Length (chunked); read_body checks the header first
    app = web.Application(
        middlewares=[front_door(lifecycle, policy, gate)], client_max_size=calls.limits.max_message_bytes
    )
    app[PATH] = path
    app[CALLS] = calls
    add_routes(app)
    app.router.add_get("/", console_page)
    app.router.add_static("/console/", CONSOLE, follow_symlinks=False)
    return app


def _listening_socket(host: str, port: int) -> socket.socket:
    """Bound and listening on (host, port); port 0 asks the OS for a free one, which is then kept."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.setblocking(False)
    return sock


def _ssl_context(settings) -> ssl.SSLContext | None:
    """HTTPS with the gRPC port's certificate (and client CA, for mutual TLS) when TLS is on."""
    if settings.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_client_ca is not None:
        context.load_verify_locations(settings.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def start_http(
    settings,
    path: RequestPath,
    calls: CallRunner,
    lifecycle: Lifecycle,
    policy: TokenPolicy | None,
    gate: ReceiveGate,
) -> HttpServer:
    """`gate`: the gRPC port's received-bytes budget, which request bodies share."""
    app = build_app(path, calls, lifecycle, policy, gate)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=settings.drain_timeout_s)
    await runner.setup()
    sock = _listening_socket(settings.host, settings.http_port)
    site = web.SockSite(runner, sock, ssl_context=_ssl_context(settings))
    await site.start()
    return HttpServer(runner, sock.getsockname()[1])
