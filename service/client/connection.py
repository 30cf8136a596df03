"""One gRPC channel plus the call policy every client method shares: deadline, retries, metadata.

Retries are our own loop rather than gRPC's service-config retry policy, for three reasons: the
policy is invisible (a caller cannot learn how many attempts a call took, which `RpcFailed.attempts`
reports), it cannot honour one overall deadline across attempts *and* the backoff sleeps the way
`timeout` promises here, and its knobs live in a JSON string that is easy to get silently wrong.

Policy: `timeout` is the budget of the whole call, retries and backoff included; each attempt gets
what is left. Only UNAVAILABLE is retried (the server was not reached, or refused the call before
running it, e.g. while shutting down), plus RESOURCE_EXHAUSTED (queue full) when asked for. The
wait before retry n (n = 0, 1, ...) is drawn uniformly from [d/2, d] with
d = min(backoff_max, backoff_initial * 2**n) ("equal jitter": clients that failed together spread
out, yet never retry at once). Streams are never retried: frames already sent cannot be replayed
safely. The channel's own reconnect backoff is set to the same range, so a retry after a refused
connection really dials again instead of failing fast while the channel waits out its default 1 s
(growing to 120 s) reconnect backoff.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import grpc

from service.client.errors import RpcFailed, echoed_request_id, rpc_failed

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
T = TypeVar("T")


@dataclass(frozen=True)
class TlsConfig:
    """TLS to the server: a CA to verify it with, and a client certificate for mutual TLS.

    Each of root_ca, client_cert and client_key is a PEM file path or PEM bytes. root_ca None uses
    the system's trusted roots. server_name overrides the name checked against the server's
    certificate (when connecting by IP address to a certificate issued for a host name).
    """

    root_ca: Path | str | bytes | None = None
    client_cert: Path | str | bytes | None = None
    client_key: Path | str | bytes | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("TlsConfig: client_cert and client_key must be given together")
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.root_ca),
            private_key=_pem(self.client_key),
            certificate_chain=_pem(self.client_cert),
        )


def _pem(value: Path | str | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 2.0
    retry_resource_exhausted: bool = False

    def __post_init__(self):
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError(
                f"backoff must satisfy 0 < initial <= max, got ({self.backoff_initial_s}, {self.backoff_max_s})"
            )

    def retryable(self, code: grpc.StatusCode) -> bool:
        return code == grpc.StatusCode.UNAVAILABLE or (
            self.retry_resource_exhausted and code == grpc.StatusCode.RESOURCE_EXHAUSTED
        )

    def delay_s(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number `retry` (0-based): uniform in [d/2, d]."""
        ceiling = min(self.backoff_max_s, self.backoff_initial_s * 2**retry)
        return rng.uniform(ceiling / 2, ceiling)


def channel_options(
    max_message_bytes: int, policy: RetryPolicy, load_balancing: str | None, server_name: str | None
) -> list[tuple[str, object]]:
    options: list[tuple[str, object]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", int(policy.backoff_initial_s * 1000)),
        ("grpc.min_reconnect_backoff_ms", int(policy.backoff_initial_s * 1000)),
        ("grpc.max_reconnect_backoff_ms", int(policy.backoff_max_s * 1000)),
    ]
    if load_balancing:
        options.append(("grpc.lb_policy_name", load_balancing))
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


class Connection:
    """A channel to one target (or several, with a load-balancing policy) and the call policy."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None,
        policy: RetryPolicy,
        tls: TlsConfig | None,
        token: str | None,
        max_message_bytes: int,
        load_balancing: str | None,
        seed: int | None = None,
    ):
        self.target = target
        self.timeout = timeout
        self.policy = policy
        self.token = token
        options = channel_options(max_message_bytes, policy, load_balancing, tls.server_name if tls else None)
        if tls is not None:
            self.channel = grpc.secure_channel(target, tls.credentials(), options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self._rng = random.Random(seed)

    def metadata(self, request_id: str) -> tuple[tuple[str, str], ...]:
        metadata = [("x-request-id", request_id)]
        if self.token:
            metadata.append(("authorization", f"Bearer {self.token}"))
        return tuple(metadata)

    def unary(
        self,
        method: str,
        rpc: grpc.UnaryUnaryMultiCallable,
        request,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> tuple[object, str]:
        """Call with retries; returns (response, request id the server echoed or ours)."""
        request_id = request_id or uuid.uuid4().hex
        budget = self.timeout if timeout is None else timeout
        deadline = None if budget is None else time.monotonic() + budget
        attempt = 0
        while True:
            attempt += 1
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                response, call = rpc.with_call(request, timeout=remaining, metadata=self.metadata(request_id))
            except grpc.RpcError as error:
                failure = rpc_failed(error, method, request_id, attempt)
                if not self._wait_before_retry(failure, attempt, deadline):
                    raise failure from None
                continue
            return response, echoed_request_id(call.trailing_metadata(), request_id)

    def _wait_before_retry(self, failure: RpcFailed, attempt: int, deadline: float | None) -> bool:
        """Sleep the backoff and return True when another attempt is allowed and has time left."""
        if attempt > self.policy.retries or not self.policy.retryable(failure.code):
            return False
        delay = self.policy.delay_s(attempt - 1, self._rng)
        if deadline is not None and time.monotonic() + delay >= deadline:
            return False
        time.sleep(delay)
        return True

    def stream(
        self,
        method: str,
        rpc: grpc.StreamStreamMultiCallable,
        requests: Iterator,
        convert: Callable[[object], T],
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Iterator[T]:
        """Bidirectional stream without retries; yields convert(response) for each response."""
        request_id = request_id or uuid.uuid4().hex
        call = rpc(requests, timeout=timeout, metadata=self.metadata(request_id))
        try:
            for response in call:
                yield convert(response)
        except grpc.RpcError as error:
            raise rpc_failed(error, method, request_id) from None
        finally:
            call.cancel()  # no-op when the stream finished; stops the call when the caller stops early

    def close(self) -> None:
        self.channel.close()
