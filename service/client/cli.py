"""`convserve classify|detect|segment|explain IMAGE... --model NAME`: the vision API from a shell.

Prints a table (or JSON with --json) and, with --out DIR, writes the overlay images the server
draws. Exit codes: 0 success, 1 the RPC failed (the status name and message go to stderr),
2 usage errors (bad flags, unreadable image files).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from service.cli_help import DefaultsHelpFormatter
from service.client.connection import TlsConfig
from service.client.errors import RpcFailed
from service.client.render import result_json, results_table, write_results
from service.client.vision_client import VisionClient

COMMANDS = {
    "classify": "top-k classes of each image",
    "detect": "objects (boxes, labels, scores) in each image",
    "segment": "per-pixel classes of each image",
    "explain": "class activation map of each image",
}


def add_client_parsers(subparsers) -> None:
    for command, summary in COMMANDS.items():
        parser = subparsers.add_parser(
            command,
            help=f"{summary} (vision API client)",
            description=__doc__,
            formatter_class=DefaultsHelpFormatter,
        )
        _add_common_arguments(parser)
        _ADD_OPTIONS[command](parser)
        parser.set_defaults(func=run_client_command, client_command=command)


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files (JPEG, PNG, BMP, WebP)")
    parser.add_argument("--model", required=True, help="model name in the server's repository")
    parser.add_argument("--version", default="", help="model version (default: the model's default version)")
    parser.add_argument(
        "--host",
        default=os.environ.get("CONVSERVE_HOST", "127.0.0.1:8001"),
        help="server address host:port, or a gRPC target such as dns:///name:port [env CONVSERVE_HOST]",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request, retries included")
    parser.add_argument("--retries", type=int, default=3, help="retries of a request that got UNAVAILABLE")
    parser.add_argument("--batch-size", type=int, default=8, help="images per request")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--out",
        type=Path,
        help="folder for each image's result as <image>.<command>.json and the overlay images the server "
        "draws (detect, segment, explain)",
    )
    # read at run time, so that --help never prints a token taken from the environment
    parser.add_argument("--token", help="bearer token (default: the CONVSERVE_TOKEN environment variable)")
    parser.add_argument("--tls-ca", type=Path, help="PEM CA that signed the server certificate (enables TLS)")
    parser.add_argument("--tls-cert", type=Path, help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls-key", type=Path, help="PEM client key (mutual TLS)")
    parser.add_argument("--tls-server-name", help="name to check the server certificate against")


def _classify_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--top-k", type=int, default=0, help="classes per image (0: the model's default)")


def _detect_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--score-threshold", type=float, help="minimum score (default: the model's)")
    parser.add_argument("--iou-threshold", type=float, help="NMS IoU threshold (default: the model's)")
    parser.add_argument("--max-detections", type=int, help="most detections per image (default: the model's)")
    parser.add_argument("--class-filter", type=_int_list, default=(), help="comma-separated class indices to keep")
    parser.add_argument("--class-agnostic", action="store_true", help="NMS across classes")


def _segment_options(parser: argparse.ArgumentParser) -> None:
    pass


def _explain_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--class-index", type=int, help="class to explain (default: each image's top-1)")
    parser.add_argument("--overlay-format", choices=("jpeg", "png"), default="jpeg", help="encoding of the overlay")


_ADD_OPTIONS = {
    "classify": _classify_options,
    "detect": _detect_options,
    "segment": _segment_options,
    "explain": _explain_options,
}


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _call(client: VisionClient, args: argparse.Namespace, images: list[bytes]):
    """One request for a chunk of images, with the subcommand's options."""
    overlay = args.out is not None
    common = dict(version=args.version)
    if args.client_command == "classify":
        return client.classify(images, args.model, top_k=args.top_k, **common)
    if args.client_command == "detect":
        return client.detect(
            images,
            args.model,
            score_threshold=args.score_threshold,
            iou_threshold=args.iou_threshold,
            max_detections=args.max_detections,
            class_filter=args.class_filter,
            class_agnostic=args.class_agnostic,
            draw_overlay=overlay,
            **common,
        )
    if args.client_command == "segment":
        return client.segment(images, args.model, overlay=overlay, **common)
    return client.explain(
        images, args.model, class_index=args.class_index, overlay=overlay, overlay_format=args.overlay_format, **common
    )


def run_client_command(args: argparse.Namespace) -> int:
    prog = f"convserve {args.client_command}"
    try:
        images = [path.read_bytes() for path in args.images]
        token = args.token or os.environ.get("CONVSERVE_TOKEN")
        client = VisionClient(args.host, timeout=args.timeout, retries=args.retries, token=token, tls=_tls(args))
    except (OSError, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    if args.batch_size <= 0:
        print(f"{prog}: --batch-size must be > 0", file=sys.stderr)
        return 2
    names = [str(path) for path in args.images]
    try:
        with client:
            replies = [
                _call(client, args, images[i : i + args.batch_size]) for i in range(0, len(images), args.batch_size)
            ]
    except RpcFailed as exc:
        print(f"{prog}: {exc.code.name}: {exc.details} (request id {exc.request_id})", file=sys.stderr)
        return 1
    results = [result for reply in replies for result in reply.results]
    request_ids = [reply.request_id for reply in replies for _ in reply.results]
    written = write_results(args.out, names, results, args.client_command) if args.out else [[] for _ in results]
    if args.json:
        print(json.dumps(_json_document(replies[0], names, results, request_ids, written), indent=2))
    else:
        print(f"model {replies[0].model_name} version {replies[0].model_version}")
        print(results_table(names, results))
        for path in (p for paths in written for p in paths):
            print(f"wrote {path}")
    return 0


def _json_document(first_reply, names, results, request_ids, written) -> dict:
    return {
        "model_name": first_reply.model_name,
        "model_version": first_reply.model_version,
        "results": [
            {"image": name, "request_id": rid, **result_json(result), "files": [str(p) for p in paths]}
            for name, result, rid, paths in zip(names, results, request_ids, written)
        ],
    }


def _tls(args: argparse.Namespace) -> TlsConfig | None:
    if args.tls_ca is None and args.tls_cert is None and args.tls_server_name is None:
        return None
    return TlsConfig(
        root_ca=args.tls_ca, client_cert=args.tls_cert, client_key=args.tls_key, server_name=args.tls_server_name
    )
