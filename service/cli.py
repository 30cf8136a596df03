"""`convserve serve` and `convserve health`: the server's own command line."""

from __future__ import annotations

import argparse
import logging
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.cli_help import DefaultsHelpFormatter
from service.decoder_limits import set_decoder_pixel_limit
from service.errors import RuntimeMissing
from service.event_loop import EventLoopUnavailable, chosen_loop, run_on
from service.logs import configure_logging
from service.settings import add_server_arguments, settings_from_args


def add_serve_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model repository over gRPC (KServe V2 + vision API)",
        formatter_class=DefaultsHelpFormatter,
    )
    add_server_arguments(parser)
    parser.set_defaults(func=run_serve)
    health = subparsers.add_parser(
        "health",
        help="exit 0 if the server at --host reports SERVING (for probes)",
        formatter_class=DefaultsHelpFormatter,
    )
    health.add_argument("--host", default="127.0.0.1:8001", help="server address HOST:PORT")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds before the check counts as failed")
    health.add_argument("--service", default="", help="health service name ('' = the whole server)")
    health.set_defaults(func=run_health)


def run_serve(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"convserve serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    if not set_decoder_pixel_limit(settings.limits.max_pixels):  # before service.server imports cv2
        logging.getLogger("convserve.server").warning(
            "OpenCV was loaded before the server set its pixel limit; only the header check applies",
            extra={"event": "decoder_limit_not_set"},
        )
    try:
        loop_name = chosen_loop(settings.event_loop)
    except EventLoopUnavailable as exc:
        print(f"convserve serve: {exc}", file=sys.stderr)
        return 2
    from service.server import serve_forever  # after logging is configured

    try:
        return run_on(loop_name, serve_forever(settings))
    except RuntimeMissing as exc:
        print(f"convserve serve: {exc}", file=sys.stderr)
        return 2


def run_health(args: argparse.Namespace) -> int:
    try:
        with grpc.insecure_channel(args.host) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
    except grpc.RpcError as exc:
        print(f"unhealthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
