"""Client-side errors: one exception per failed call, carrying the gRPC status and request id.

Why not re-raise `grpc.RpcError`: its interface (`code()`, `details()`) exists only on some
subclasses, it says nothing about retries, and the caller would need grpc imported to test for a
status. `RpcFailed` always has `.code`, `.details`, `.request_id` and `.attempts`; a few common
statuses get their own subclass so callers can write `except DeadlineExceeded:`.
"""

from __future__ import annotations

import grpc


class RpcFailed(Exception):
    """A call that ended with a non-OK gRPC status (after any retries)."""

    def __init__(self, code: grpc.StatusCode, details: str, method: str = "", request_id: str = "", attempts: int = 1):
        self.code = code
        self.details = details
        self.method = method
        self.request_id = request_id
        self.attempts = attempts
        where = f"{method}: " if method else ""
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        super().__init__(f"{where}{code.name}: {details}{tries}")


class InvalidArgument(RpcFailed):
    pass


class NotFound(RpcFailed):
    pass


class FailedPrecondition(RpcFailed):
    pass


class Unavailable(RpcFailed):
    pass


class ResourceExhausted(RpcFailed):
    pass


class DeadlineExceeded(RpcFailed):
    pass


class Unauthenticated(RpcFailed):
    pass


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
}


def rpc_failed(error: grpc.RpcError, method: str = "", request_id: str = "", attempts: int = 1) -> RpcFailed:
    """The `RpcFailed` subclass for a grpc error (its status code picks the class)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else str(error)) or ""
    metadata = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    returned = echoed_request_id(metadata, request_id)
    return _BY_CODE.get(code, RpcFailed)(code, details, method, returned, attempts)


def echoed_request_id(metadata, fallback: str) -> str:
    """The x-request-id the server returned in trailing metadata, else `fallback`."""
    for key, value in metadata or ():
        if key == "x-request-id" and value:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return fallback
