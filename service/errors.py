"""One exception hierarchy for the whole server.

Every failure a client can see is a `ServiceError` subclass carrying its gRPC status code, so the
servicers map errors to statuses in exactly one place (`status_of`) and nothing below the servicer
layer needs to know about gRPC.
"""

from __future__ import annotations

import grpc

MAX_MESSAGE_CHARS = 1000  # an error text or log field never grows past this, whatever the input


def bounded(text: object, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`str(text)` cut to `limit` characters, saying how much was cut.

    Why one helper: messages echo client input (a class filter, a model name, a YAML value), and an
    unbounded echo became a 351 MB log line, a gRPC status over the metadata limit and a frozen
    event loop. Every error text and log field that may hold client or config input goes through here.
    Only the first `limit` characters of a string are looked at, so the cost is fixed too.
    """
    if not isinstance(text, str):
        text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"


class ServiceError(Exception):
    """Root of every error that is reported to a client as a gRPC status (message bounded)."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        message = bounded(message)
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Unimplemented(ServiceError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class InternalError(ServiceError):
    code = grpc.StatusCode.INTERNAL


class ConfigError(Exception):
    """A model configuration or repository layout problem, naming the file and the field.

    Raised at load time, never on the request path; the repository turns it into an
    `Unavailable` model whose reason is this message.
    """

    def __init__(self, path: str, field: str, problem: str):
        self.path = str(path)
        self.field = field
        self.problem = bounded(problem)
        where = f"{self.path}: {field}" if field else self.path
        super().__init__(bounded(f"{where}: {self.problem}"))


class RuntimeMissing(RuntimeError):
    """Neither onnxruntime nor onnxruntime-gpu is installed."""


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and message a client receives for `error`."""
    if isinstance(error, ServiceError):
        return error.code, error.message
    return grpc.StatusCode.INTERNAL, bounded(f"internal error: {type(error).__name__}: {error}")
