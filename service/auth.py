"""Bearer-token authentication for gRPC calls (optional; off unless a token file is given).

Tokens come from a file (one per line, e.g. a mounted Kubernetes secret) and are compared in
constant time. Health and reflection can stay open so probes and grpcurl work without a token.
Repository load/unload can require a separate admin token.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import grpc

from service.errors import PermissionDenied, ServiceError, Unauthenticated

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
            return bearer_token(value if isinstance(value, str) else value.decode("utf-8", "replace"))
    return None


def bearer_token(authorization: str | None) -> bytes | None:
    """The token of an `authorization: Bearer <token>` value (gRPC metadata or HTTP header)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
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


class TokenPolicy:
    """Who may call what, for every front end: open calls (health, when `health_open`), admin calls
    (repository load/unload, when admin tokens are configured), and everything else."""

    def __init__(self, tokens: tuple[bytes, ...], admin_tokens: tuple[bytes, ...] | None, health_open: bool = True):
        self.tokens = tokens
        self.admin_tokens = admin_tokens
        self.health_open = health_open

    def refusal(self, token: bytes | None, *, open_call: bool, admin_call: bool) -> ServiceError | None:
        """The error to answer with, or None when the call may go ahead."""
        if self.health_open and open_call:
            return None
        if admin_call and self.admin_tokens is not None:
            if token_matches(token, self.admin_tokens):
                return None
            kind = PermissionDenied if token_matches(token, self.tokens) else Unauthenticated
            return kind("repository load/unload needs an admin token")
        if not token_matches(token, self.tokens):
            if token is None:
                return Unauthenticated("missing bearer token (metadata or header 'authorization: Bearer <token>')")
            return Unauthenticated("invalid bearer token")
        return None


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, policy: TokenPolicy):
        self.policy = policy

    async def intercept_service(self, continuation, details):
        method = details.method
        refusal = self.policy.refusal(
            _bearer(details.invocation_metadata),
            open_call=method.startswith(OPEN_PREFIXES),
            admin_call=method in ADMIN_METHODS,
        )
        if refusal is not None:
            return refusal_handler(refusal.code, refusal.message, method)
        return await continuation(details)


_STREAM_STREAM = ("/ModelStreamInfer", "/StreamDetect", "/StreamClassify", "/ServerReflectionInfo")
_UNARY_STREAM = ("/grpc.health.v1.Health/Watch",)


def refusal_handler(code: grpc.StatusCode, message: str, method: str) -> grpc.RpcMethodHandler:
    """A handler that aborts at once with `code` (used by interceptors), of the method's shape as
    far as the response goes. A unary call is answered as client-streaming so that its request
    message is never read: a refused call costs no more than its headers
    (service/receive_gate.py)."""

    async def unread(request_iterator, context):
        await context.abort(code, message)

    async def streaming(request, context):
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    if method.endswith(_STREAM_STREAM):
        return grpc.stream_stream_rpc_method_handler(streaming)
    if method.endswith(_UNARY_STREAM):
        return grpc.unary_stream_rpc_method_handler(streaming)
    return grpc.stream_unary_rpc_method_handler(unread)


def token_policy(settings) -> TokenPolicy | None:
    """The server's policy from its token files; None when authentication is off."""
    if settings.auth_token_file is None:
        return None
    tokens = read_tokens(settings.auth_token_file)
    admin = read_tokens(settings.admin_token_file) if settings.admin_token_file else None
    return TokenPolicy(tokens, admin, settings.auth_health_open)


def auth_interceptor(policy: TokenPolicy | None) -> TokenAuthInterceptor | None:
    return TokenAuthInterceptor(policy) if policy is not None else None
