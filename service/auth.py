"""Bearer-token authentication for gRPC calls (optional; off unless a token file is given).

Tokens come from a file (one per line, e.g. a mounted Kubernetes secret) and are compared in
constant time. Health and reflection can stay open so probes and grpcurl work without a token.
Repository load/unload can require a separate admin token.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import grpc

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
ADMIN_METHODS = (
    "/inference.GRPCInferenceService/RepositoryModelLoad",
    "/inference.GRPCInferenceService/RepositoryModelUnload",
)


def read_tokens(path: Path) -> tuple[bytes, ...]:
    """Non-empty, stripped lines of a token file; an empty file is an error (it would lock everyone out)."""
    tokens = tuple(line.strip().encode() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if not tokens:
        raise ValueError(f"{path}: token file has no tokens")
    return tokens


def _bearer(metadata) -> bytes | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value if isinstance(value, str) else value.decode("utf-8", "replace")
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip().encode()
    return None


def token_matches(token: bytes | None, accepted: tuple[bytes, ...]) -> bool:
    """Constant-time comparison against every accepted token (no early exit on a match)."""
    if token is None:
        return False
    matched = False
    for candidate in accepted:
        matched |= hmac.compare_digest(token, candidate)
    return matched


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: tuple[bytes, ...], admin_tokens: tuple[bytes, ...] | None, health_open: bool = True):
        self.tokens = tokens
        self.admin_tokens = admin_tokens
        self.health_open = health_open

    async def intercept_service(self, continuation, details):
        method = details.method
        if self.health_open and method.startswith(OPEN_PREFIXES):
            return await continuation(details)
        token = _bearer(details.invocation_metadata)
        if method in ADMIN_METHODS and self.admin_tokens is not None:
            if not token_matches(token, self.admin_tokens):
                code = grpc.StatusCode.PERMISSION_DENIED if token_matches(token, self.tokens) else grpc.StatusCode.UNAUTHENTICATED
                return refusal_handler(code, "repository load/unload needs an admin token", method)
            return await continuation(details)
        if not token_matches(token, self.tokens):
            reason = "missing bearer token (metadata 'authorization: Bearer <token>')" if token is None else "invalid bearer token"
            return refusal_handler(grpc.StatusCode.UNAUTHENTICATED, reason, method)
        return await continuation(details)


_STREAM_STREAM = ("/ModelStreamInfer", "/StreamDetect", "/StreamClassify", "/ServerReflectionInfo")
_UNARY_STREAM = ("/grpc.health.v1.Health/Watch",)


def refusal_handler(code: grpc.StatusCode, message: str, method: str) -> grpc.RpcMethodHandler:
    """A handler of the method's streaming shape that aborts at once with `code` (used by interceptors)."""
    async def unary(request, context):
        await context.abort(code, message)

    async def streaming(request, context):
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    if method.endswith(_STREAM_STREAM):
        return grpc.stream_stream_rpc_method_handler(streaming)
    if method.endswith(_UNARY_STREAM):
        return grpc.unary_stream_rpc_method_handler(streaming)
    return grpc.unary_unary_rpc_method_handler(unary)


def auth_interceptor(settings) -> TokenAuthInterceptor | None:
    if settings.auth_token_file is None:
        return None
    tokens = read_tokens(settings.auth_token_file)
    admin = read_tokens(settings.admin_token_file) if settings.admin_token_file else None
    return TokenAuthInterceptor(tokens, admin, settings.auth_health_open)
