"""`convserve loadtest` (or `python -m loadtest`): flags, then discover → build → probe → run → report."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import grpc

from loadtest.engine import LoadPlan, run_load, stream_answer
from loadtest.generators import ARRIVALS
from loadtest.payloads import PayloadSpec, Payloads, SetupError, build_payloads, describe_model
from loadtest.report import format_table, summarise
from service.cli_help import DefaultsHelpFormatter
from service.settings import Limits


def add_loadtest_parser(subparsers) -> None:
    """Register `loadtest` on the `convserve` command."""
    parser = subparsers.add_parser(
        "loadtest",
        help="load-test a V2 (or convserve vision API) server: throughput, latency percentiles, errors",
        formatter_class=DefaultsHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run_loadtest)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1:8001", help="server address HOST:PORT")
    parser.add_argument("--model", required=True, help="model name")
    parser.add_argument("--model-version", default="", help="model version ('' = the server's default)")
    load = parser.add_mutually_exclusive_group()
    load.add_argument(
        "--concurrency",
        type=int,
        default=0,
        help="closed loop: N requests outstanding at all times (default 1 when --rate is not given)",
    )
    load.add_argument("--rate", type=float, default=0.0, help="open loop: R requests per second on a schedule")
    parser.add_argument("--arrival", choices=ARRIVALS, default="poisson", help="open-loop arrival process")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds (after the warm-up)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring (not reported)")
    parser.add_argument(
        "--api",
        choices=("v2", "vision"),
        default="v2",
        help="V2 ModelInfer, or convserve's vision API (Classify/Detect)",
    )
    parser.add_argument(
        "--payload",
        choices=("tensor", "jpeg"),
        default="tensor",
        help="random tensors shaped from ModelMetadata, or JPEG images (server-side preprocessing)",
    )
    parser.add_argument("--batch", type=int, default=1, help="images (batch items) per request")
    parser.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="INPUT:D1,D2,...",
        help="non-batch dims of an input with free (-1) dims",
    )
    parser.add_argument(
        "--image", action="append", default=[], type=Path, help="image file(s) for --payload jpeg (default: synthetic)"
    )
    parser.add_argument(
        "--image-size", default="", metavar="HxW", help="synthetic JPEG size (default: the model's input size)"
    )
    parser.add_argument(
        "--vision-method",
        choices=("Classify", "Detect"),
        default="",
        help="vision API method (default: from the model's task)",
    )
    parser.add_argument(
        "--streaming",
        action="store_true",
        help="V2 only: send over bidirectional ModelStreamInfer streams "
        "(one per closed-loop sender; open loop: one per request in flight) instead of a ModelInfer call each; "
        "--timeout then bounds each stream past the end of the run, not each request",
    )
    parser.add_argument("--distinct", type=int, default=4, help="different request messages to rotate through")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request deadline, seconds")
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=4096,
        help="open loop: most outstanding requests before the client drops arrivals",
    )
    parser.add_argument("--processes", type=int, default=1, help="client processes (the load is split between them)")
    parser.add_argument(
        "--channels",
        type=int,
        default=0,
        help="gRPC connections per process (default: 1; closed-loop --streaming: one per "
        f"{Limits.max_streams_per_peer} streams, the server's default --max-streams-per-peer)",
    )
    parser.add_argument("--token", default="", help="bearer token sent as 'authorization: Bearer TOKEN'")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random tensors and the arrival schedule")
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help="write the summary as JSON (to stdout without FILE)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="FILE.png",
        help="latency-over-time and histogram plot (needs matplotlib)",
    )
    parser.add_argument("--no-probe", action="store_true", help="skip the single checked request before the run")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="convserve loadtest",
        description="Load-test a KServe V2 / convserve gRPC server.",
        formatter_class=DefaultsHelpFormatter,
    )
    add_arguments(parser)
    return run_loadtest(parser.parse_args(argv))


def run_loadtest(args: argparse.Namespace) -> int:
    try:
        plan, spec = _plan_and_spec(args)
        payloads = asyncio.run(_prepare(args, spec, plan.metadata))
    except SetupError as exc:
        print(f"convserve loadtest: {exc}", file=sys.stderr)
        return 2
    raw = run_load(plan, payloads, max(1, args.processes))
    summary = summarise(
        raw,
        target=args.host,
        model=args.model,
        request=payloads.description,
        concurrency=plan.concurrency,
        rate=plan.rate,
        arrival=plan.arrival,
        processes=max(1, args.processes),
        warmup=plan.warmup,
        images_per_request=payloads.images_per_request,
    )
    if args.json == "-":
        print(summary.to_json())
    else:
        print(format_table(summary))
        if args.json:
            Path(args.json).write_text(summary.to_json() + "\n")
    if args.plot:
        from loadtest.plot import plot_results

        plot_results(raw, summary, args.plot)
    return 0 if summary.requests_ok else 1


def _default_channels(streaming: bool, concurrency: int) -> int:
    """Connections a run needs by default: a server refuses streams past its per-connection cap
    (RESOURCE_EXHAUSTED), so closed-loop streams are spread over enough connections for its default."""
    if streaming and concurrency > 0:
        return -(-concurrency // Limits.max_streams_per_peer)
    return 1


def _plan_and_spec(args: argparse.Namespace) -> tuple[LoadPlan, PayloadSpec]:
    if args.duration <= 0 or args.warmup < 0 or args.timeout <= 0:
        raise SetupError("--duration and --timeout must be > 0, --warmup >= 0")
    if args.concurrency < 0 or args.rate < 0 or args.processes < 1 or args.channels < 0:
        raise SetupError("--concurrency, --rate, --channels must be >= 0; --processes >= 1")
    concurrency = args.concurrency or (0 if args.rate > 0 else 1)
    channels = args.channels or _default_channels(args.streaming, concurrency)
    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else ()
    plan = LoadPlan(
        target=args.host,
        concurrency=concurrency,
        rate=args.rate,
        arrival=args.arrival,
        duration=args.duration,
        warmup=args.warmup,
        timeout=args.timeout,
        max_inflight=args.max_inflight,
        channels=channels,
        seed=args.seed,
        metadata=metadata,
    )
    spec = PayloadSpec(
        api=args.api,
        payload=args.payload,
        batch=args.batch,
        distinct=args.distinct,
        shapes=tuple(_parse_shape(s) for s in args.shape),
        images=tuple(args.image),
        image_hw=_parse_hw(args.image_size),
        vision_method=args.vision_method,
        streaming=args.streaming,
        seed=args.seed,
    )
    return plan, spec


async def _prepare(args: argparse.Namespace, spec: PayloadSpec, metadata: tuple) -> Payloads:
    """Describe the model, build the requests, and (unless --no-probe) check one goes through."""
    async with grpc.aio.insecure_channel(
        args.host, options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    ) as channel:
        model = await describe_model(channel, args.model, args.model_version, metadata or None, args.timeout)
        payloads = build_payloads(model, spec)
        if not args.no_probe:
            await _probe(channel, payloads, args.timeout, metadata or None)
    return payloads


async def _probe(channel: grpc.aio.Channel, payloads: Payloads, timeout: float, metadata) -> None:
    """One request, checked, before the run: a wrong model or shape is reported once, not as N errors."""
    if payloads.streaming:
        call = channel.stream_stream(payloads.method)(timeout=timeout, metadata=metadata)
        answer = await stream_answer(call, payloads.requests[0])
        if isinstance(answer, grpc.StatusCode):
            raise SetupError(f"probe request ({payloads.description}) failed: {answer.name}: {await call.details()}")
        await call.done_writing()
        if answer.error_message:
            raise SetupError(f"probe request ({payloads.description}) failed: {answer.error_message}")
        return
    call = channel.unary_unary(payloads.method)
    try:
        await call(payloads.requests[0], timeout=timeout, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        raise SetupError(f"probe request ({payloads.description}) failed: {exc.code().name}: {exc.details()}") from None


def _parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, _, dims = text.rpartition(":")
    try:
        values = tuple(int(d) for d in dims.split(","))
    except ValueError:
        raise SetupError(f"--shape {text!r}: expected INPUT:D1,D2,... with integer dims") from None
    if not name or any(v <= 0 for v in values):
        raise SetupError(f"--shape {text!r}: expected INPUT:D1,D2,... with positive dims")
    return name, values


def _parse_hw(text: str) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SetupError(f"--image-size {text!r}: expected HxW, e.g. 480x640") from None
    if h <= 0 or w <= 0:
        raise SetupError(f"--image-size {text!r}: sizes must be positive")
    return h, w
