"""Server settings: command-line flags, each also readable from a CONVSERVE_* environment variable.

Why both: on a laptop flags are natural, on Kubernetes the Deployment sets environment variables.
A flag given on the command line wins over the environment; the environment wins over defaults.
Values are validated here so a bad setting stops the server at start with the setting named.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path


HTTP2_MIN_FRAME, HTTP2_MAX_FRAME = 2**14, 2**24 - 1  # SETTINGS_MAX_FRAME_SIZE bounds
EVENT_LOOPS = ("auto", "uvloop", "asyncio")  # service/event_loop.py runs the server on one of them


@dataclass(frozen=True)
class Limits:
    """Safe defaults against hostile or broken clients; all configurable."""

    max_message_bytes: int = 64 * 1024 * 1024
    max_images_per_request: int = 64
    max_pixels: int = 40_000_000
    max_decoded_bytes: int = 320 * 1024 * 1024  # original-size image data all requests hold at once (2 of 40 MP)
    max_received_bytes: int = 256 * 1024 * 1024  # request messages being read or held (service/receive_gate.py)
    max_reads_per_peer: int = 2  # messages one client connection may be sending at once
    message_read_timeout_s: float = 30.0  # a message must arrive within this long of its read starting
    max_concurrent_streams: int = 64
    max_streams_per_peer: int = 16  # one client connection may hold at most this many of them
    stream_idle_timeout_s: float = 60.0  # a stream that sends no frame for this long is closed
    max_deadline_s: float = 300.0
    stream_max_pending: int = 8
    v2_reject_non_finite: bool = False
    max_json_elements: int = 4_194_304


@dataclass(frozen=True)
class ServerSettings:
    model_repo: Path = Path("model_repo")
    host: str = "0.0.0.0"
    port: int = 8001
    metrics_port: int = 8002
    http_port: int = 8000
    providers: tuple[str, ...] = ("cuda", "cpu")
    require_gpu: bool = False
    log_format: str = "json"
    log_level: str = "info"
    event_loop: str = "auto"
    drain_timeout_s: float = 25.0
    shutdown_grace_s: float = 2.0
    max_connection_age_s: float = 300.0
    http2_max_frame_bytes: int = 0
    http2_lookahead_bytes: int = 0
    preprocess_threads: int = 0
    poll_interval_s: float = 0.0
    auth_token_file: Path | None = None
    admin_token_file: Path | None = None
    auth_health_open: bool = True
    repository_api: bool = True
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    limits: Limits = Limits()


_HELP = {
    "model_repo": "model repository directory",
    "host": "address to bind the gRPC port on",
    "port": "gRPC port (0 picks a free one; the chosen port is logged)",
    "metrics_port": "Prometheus /metrics HTTP port (0 picks a free one, -1 disables)",
    "http_port": "Open Inference Protocol REST, vision JSON API and browser console port "
    "(0 picks a free one, -1 disables)",
    "providers": "ordered execution providers, comma separated: cuda,cpu",
    "require_gpu": "fail a model's load when CUDA was asked for but its session does not run on CUDA",
    "log_format": "json or kv (key=value)",
    "log_level": "debug, info, warning or error (debug adds one access-log line per request)",
    "event_loop": "auto, uvloop or asyncio: the event loop gRPC and HTTP run on (auto: uvloop where it is "
    "installed, about 5 percent less server CPU per small request; asyncio: the standard library's)",
    "drain_timeout_s": "after SIGTERM, seconds that queued and in-flight requests get to finish",
    "shutdown_grace_s": "after SIGTERM, seconds health reports NOT_SERVING before new calls are refused",
    "max_connection_age_s": "close client connections after this age so clients re-balance across replicas (0: never)",
    "http2_max_frame_bytes": "largest HTTP/2 frame the server accepts, 16384..16777215 "
    "(0: gRPC's default, 16384); larger frames cut per-frame work for big tensor requests",
    "http2_lookahead_bytes": "per-stream receive window gRPC starts from (0: gRPC's default); "
    "larger lets a big request arrive without waiting for window updates, but each call waiting "
    "to be read may then hold that much of its message",
    "preprocess_threads": "decode/preprocess threads (0: the machine's cores)",
    "poll_interval_s": "re-scan the model repository every N seconds and swap in new versions (0: off)",
    "auth_token_file": "file of accepted bearer tokens, one per line (unset: no authentication)",
    "admin_token_file": "file of tokens for repository load/unload (unset: the normal tokens)",
    "auth_health_open": "keep health and reflection open without a token, for probes (true/false)",
    "repository_api": "enable RepositoryModelLoad/Unload (true/false)",
    "tls_cert": "PEM server certificate chain (enables TLS)",
    "tls_key": "PEM private key of tls_cert",
    "tls_client_ca": "PEM CA bundle: require client certificates signed by it (mutual TLS)",
    "max_message_bytes": "largest gRPC message or HTTP request body accepted (or gRPC message sent)",
    "max_json_elements": "most values (numbers, strings) one HTTP JSON body may hold, checked before parsing; "
    "larger tensors go as binary data (Inference-Header-Content-Length)",
    "max_images_per_request": "most images in one request",
    "max_pixels": "largest image, in pixels, checked from the header before decoding",
    "max_decoded_bytes": "most bytes of original-size image data (decoded originals kept, masks, a decode in progress) "
    "all requests hold at once; a request waits for room, or alone over it is RESOURCE_EXHAUSTED",
    "max_received_bytes": "most bytes of request messages the server reads and holds at once; each unary read "
    "first reserves max_message_bytes (so this / max_message_bytes messages are read at once), then keeps its real "
    "size until the call answers; stream frames count from arrival until answered; a call (or a stream's next "
    "frame) waits for room up to its deadline",
    "max_reads_per_peer": "most request messages one client connection may be sending to the server at once "
    "(the others wait), so one client cannot hold every read",
    "message_read_timeout_s": "a unary request's message must have arrived this long after its read started, "
    "else DEADLINE_EXCEEDED (slow senders cannot keep a read)",
    "max_concurrent_streams": "most concurrent streaming calls",
    "max_streams_per_peer": "most concurrent streaming calls of one client connection (peer address), so one client "
    "cannot hold every slot",
    "stream_idle_timeout_s": "close a streaming call (DEADLINE_EXCEEDED) when its client sends no frame for this long",
    "max_deadline_s": "cap on a request's deadline (also the deadline of requests without one)",
    "v2_reject_non_finite": "refuse V2 float inputs holding NaN or Inf with INVALID_ARGUMENT "
    "(off: like Triton, the tensor goes to the model as sent; perf_analyzer's default random data holds such values)",
    "stream_max_pending": "frames a stream may have waiting before flow control or dropping "
    "(default and ceiling of StreamOptions.max_pending); requests of one ModelStreamInfer stream in progress at once",
}


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _parse_providers(text: str) -> tuple[str, ...]:
    providers = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    bad = [p for p in providers if p not in ("cuda", "cpu")]
    if bad or not providers:
        raise argparse.ArgumentTypeError(f"providers must be a comma list of cuda, cpu; got {text!r}")
    return providers


def _parser_type(default):
    if isinstance(default, bool):
        return _parse_bool
    if isinstance(default, tuple):
        return _parse_providers
    if isinstance(default, (int, float)):
        return type(default)
    return lambda text: Path(text) if text else None


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, each defaulting to CONVSERVE_<NAME> from the environment."""
    defaults = {
        **{f.name: f.default for f in fields(ServerSettings) if f.name != "limits"},
        **{f.name: f.default for f in fields(Limits)},
    }
    for name, default in defaults.items():
        kind = _parser_type(default)
        if name in ("host", "log_format", "log_level", "event_loop"):
            kind = str
        env_name = f"CONVSERVE_{name.upper()}"
        env_value = os.environ.get(env_name)
        try:
            value = kind(env_value) if env_value is not None else default
        except (ValueError, argparse.ArgumentTypeError) as exc:
            parser.error(f"{env_name}={env_value!r}: {exc}")
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=kind,
            default=value,
            help=f"{_HELP.get(name, name)} [env {env_name}, default {default}]",
        )


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    values = vars(args)
    limits = Limits(**{f.name: values[f.name] for f in fields(Limits)})
    settings = ServerSettings(
        **{f.name: values[f.name] for f in fields(ServerSettings) if f.name != "limits"}, limits=limits
    )
    validate(settings)
    return settings


def _token_file_problems(settings: ServerSettings) -> list[str]:
    """A token file that is missing, unreadable or empty stops the server at start, like any bad setting."""
    from service.auth import read_tokens

    problems = []
    for name in ("auth_token_file", "admin_token_file"):
        path = getattr(settings, name)
        if path is None:
            continue
        try:
            read_tokens(path)
        except OSError as exc:
            problems.append(f"{name} {str(path)!r}: cannot read: {exc.strerror}")
        except (ValueError, UnicodeDecodeError) as exc:
            problems.append(f"{name} {str(path)!r}: {exc}")
    if settings.admin_token_file is not None and settings.auth_token_file is None:
        problems.append("admin_token_file needs auth_token_file")
    return problems


def validate(settings: ServerSettings) -> None:
    problems = []
    if settings.log_format not in ("json", "kv"):
        problems.append(f"log_format must be json or kv, got {settings.log_format!r}")
    if settings.event_loop not in EVENT_LOOPS:
        problems.append(f"event_loop must be one of {', '.join(EVENT_LOOPS)}, got {settings.event_loop!r}")
    if settings.log_level.lower() not in ("debug", "info", "warning", "error"):
        problems.append(f"log_level must be debug/info/warning/error, got {settings.log_level!r}")
    if (settings.tls_cert is None) != (settings.tls_key is None):
        problems.append("tls_cert and tls_key must be given together")
    if settings.tls_client_ca is not None and settings.tls_cert is None:
        problems.append("tls_client_ca needs tls_cert and tls_key")
    for name in ("drain_timeout_s", "shutdown_grace_s", "max_connection_age_s", "poll_interval_s"):
        if getattr(settings, name) < 0:
            problems.append(f"{name} must be >= 0")
    if settings.http2_max_frame_bytes and not HTTP2_MIN_FRAME <= settings.http2_max_frame_bytes <= HTTP2_MAX_FRAME:
        problems.append(
            f"http2_max_frame_bytes must be 0 or {HTTP2_MIN_FRAME}..{HTTP2_MAX_FRAME} (RFC 9113), "
            f"got {settings.http2_max_frame_bytes}"
        )
    if settings.http2_lookahead_bytes < 0:
        problems.append("http2_lookahead_bytes must be >= 0")
    for name in (
        "max_message_bytes",
        "max_images_per_request",
        "max_pixels",
        "max_concurrent_streams",
        "stream_max_pending",
        "max_streams_per_peer",
        "stream_idle_timeout_s",
        "max_json_elements",
        "max_reads_per_peer",
        "message_read_timeout_s",
    ):
        if getattr(settings.limits, name) <= 0:
            problems.append(f"{name} must be > 0")
    if settings.limits.max_decoded_bytes < 4 * settings.limits.max_pixels:
        problems.append(
            "max_decoded_bytes must be >= 4 x max_pixels (one image at the pixel limit, decoded, and its mask)"
        )
    if settings.limits.max_received_bytes < settings.limits.max_message_bytes:
        problems.append(
            "max_received_bytes must be >= max_message_bytes (room to read one message of the largest size)"
        )
    if settings.limits.max_streams_per_peer > settings.limits.max_concurrent_streams:
        problems.append("max_streams_per_peer must be <= max_concurrent_streams")
    problems += _token_file_problems(settings)
    if problems:
        raise ValueError("invalid server settings: " + "; ".join(problems))
