"""The one table from a ServiceError to an HTTP status, and the JSON error body Triton clients read.

Each error class maps to exactly one status; the gRPC front end reports the same error with the
class's gRPC code, so a refusal means the same thing over either protocol. tritonclient.http reads
`{"error": "<message>"}` from any non-200 answer.
"""

from __future__ import annotations

import json

from service import errors

BODY_TOO_LARGE = 413


class BodyTooLarge(errors.ResourceExhausted):
    """An HTTP request body over the size limit (RESOURCE_EXHAUSTED, as gRPC reports an oversized message)."""


HTTP_STATUS: dict[type[errors.ServiceError], int] = {
    BodyTooLarge: BODY_TOO_LARGE,
    errors.InvalidArgument: 400,
    errors.FailedPrecondition: 400,
    errors.Unauthenticated: 401,
    errors.PermissionDenied: 403,
    errors.NotFound: 404,
    errors.AlreadyExists: 409,
    errors.ResourceExhausted: 429,
    errors.Unimplemented: 501,
    errors.InternalError: 500,
    errors.Unavailable: 503,
    errors.DeadlineExceeded: 504,
}


def http_status_of(error: BaseException) -> int:
    """The HTTP status for `error`: its class's (or nearest base class's) entry; 500 for anything else."""
    for cls in type(error).__mro__:
        status = HTTP_STATUS.get(cls)
        if status is not None:
            return status
    return 500


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
