"""`python -m bench.memory_worst_case`: the bundled repository's memory under its worst requests.

Why: docs/security.md claims the default budgets keep `convserve serve` on the bundled model
repository well inside a 2 GiB pod. This serves model_repo with default settings as a child
process and, while sampling its VmRSS from /proc every 10 ms, sends what costs the most memory
within the limits, from `--connections` client connections at once (one connection is held to
its own share of reads, so an attacker uses many): 59 MB tensors of a shape no model takes
(refused once read, so they cost only the reading), many concurrent fcn8s tensors at the
per-request budget (16 MiB), 40-megapixel images to fcn8s (decoded at full size, downscaled
into the budget, masks made at full size), the same with overlays (every decoded original kept
until its answer), tensors and images at once, and the same 59 MB tensors as frames of
`--streams` ModelStreamInfer streams at once (two frames each). Prints the server's peak VmRSS
and its VmRSS after the next memory trim, per phase. `--source DIR` serves from another checkout
(before/after a change).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from bench import hostile_requests as hostile
from bench.server import REPO_ROOT, ServerProcess, served_models
from service.api.convserve.v1 import vision_pb2_grpc as vpb_grpc
from service.api.inference import grpc_service_pb2_grpc as pb_grpc
from service.memory import TRIM_INTERVAL_S


def sample(server: ServerProcess, stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        out.append(server.rss_mb())
        time.sleep(0.01)


def fire(calls, concurrency: int, stubs: list) -> dict[str, int]:
    """Run every (method, request) at `concurrency`, call i on connection i % len(stubs); count the statuses."""
    counts: dict[str, int] = {}

    def one(indexed):
        index, (method, request) = indexed
        try:
            getattr(stubs[index % len(stubs)], method)(request, timeout=120)
            code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name
        counts[code] = counts.get(code, 0) + 1

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, enumerate(calls)))
    return dict(sorted(counts.items()))


def fire_streams(request, streams: int, frames: int, stubs: list) -> dict[str, int]:
    """`streams` ModelStreamInfer streams at once, stream i on connection i % len(stubs), each
    writing `frames` copies of `request` without waiting for answers; counts the frames' outcomes
    (a frame answered with an error_message, as a refused frame is, counts as "error_message")."""
    counts: dict[str, int] = {}

    def one(index: int) -> None:
        try:
            for answer in stubs[index % len(stubs)].ModelStreamInfer(iter([request] * frames), timeout=120):
                code = "error_message" if answer.error_message else "OK"
                counts[code] = counts.get(code, 0) + 1
        except grpc.RpcError as exc:
            counts[exc.code().name] = counts.get(exc.code().name, 0) + 1

    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(one, range(streams)))
    return dict(sorted(counts.items()))


class Stubs:
    """The two services on one client connection of its own."""

    def __init__(self, address: str):
        options = [
            ("grpc.max_send_message_length", 128 * 2**20),
            ("grpc.max_receive_message_length", 128 * 2**20),
            ("grpc.use_local_subchannel_pool", 1),  # its own connection, its own peer address
        ]
        self.channel = grpc.insecure_channel(address, options=options)
        v2, vision = pb_grpc.GRPCInferenceServiceStub(self.channel), vpb_grpc.VisionServiceStub(self.channel)
        self.ModelInfer, self.ModelStreamInfer, self.Segment = v2.ModelInfer, v2.ModelStreamInfer, vision.Segment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=24)
    parser.add_argument("--connections", type=int, default=8, help="client connections the calls are spread over")
    parser.add_argument("--streams", type=int, default=64, help="streams of the streams phase (the default limit)")
    parser.add_argument("--repo", type=Path, default=REPO_ROOT / "model_repo")
    parser.add_argument("--source", type=Path, default=REPO_ROOT, help="serve from this checkout's code")
    parser.add_argument(
        "--phases",
        default="oversized,tensors,images,overlays,both,streams",
        help="comma list of oversized, tensors, images, overlays, both, streams",
    )
    args = parser.parse_args(argv)
    oversized = hostile.oversized_tensor("lenet5")  # 59 MB
    tensor = hostile.v2_tensor("fcn8s", (1, 3, 1152, 1152))  # 15.2 MiB: just inside fcn8s's 16 MiB
    photo = hostile.segment("fcn8s", hostile.encoded_png(6324, 6324))  # 39,992,976 pixels: inside --max-pixels
    with_overlay = hostile.segment("fcn8s", photo.images[0].encoded)
    with_overlay.overlay = True
    server = served_models(args.repo, source=args.source)
    stubs = [Stubs(server.address) for _ in range(args.connections)]
    try:
        print(f"at rest: {server.rss_mb():.0f} MB")

        def unary(calls):
            return lambda: fire(calls, args.concurrency, stubs)

        phases = {  # name -> what sends it, returning the outcomes' counts
            "oversized": unary([("ModelInfer", oversized)] * (3 * args.concurrency)),
            "tensors": unary([("ModelInfer", tensor)] * (3 * args.concurrency)),
            "images": unary([("Segment", photo)] * 8),
            "overlays": unary([("Segment", with_overlay)] * 8),
            "both": unary([("ModelInfer", tensor)] * (2 * args.concurrency) + [("Segment", photo)] * 8),
            "streams": lambda: fire_streams(oversized, args.streams, 2, stubs),
        }
        for name in args.phases.split(","):
            send = phases[name]
            rss: list[float] = []
            stop = threading.Event()
            sampler = threading.Thread(target=sample, args=(server, stop, rss))
            sampler.start()
            started = time.perf_counter()
            counts = send()
            seconds = time.perf_counter() - started
            time.sleep(TRIM_INTERVAL_S + 1)  # the server hands free pages back every TRIM_INTERVAL_S
            stop.set()
            sampler.join()
            print(
                f"{name}: {counts} in {seconds:.1f} s; server VmRSS peak {max(rss):.0f} MB, "
                f"{TRIM_INTERVAL_S + 1:g} s later {server.rss_mb():.0f} MB"
            )
    finally:
        for stub in stubs:
            stub.channel.close()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
