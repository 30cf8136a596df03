"""The send loops: closed loop (N workers, each waits for its answer) and open loop (on a schedule).

Why it is built this way: the client shares the CPU with the server under test, so per request it
only picks pre-serialised bytes, awaits one grpc.aio call with no (de)serialiser, and appends three
numbers to arrays. With `--streaming` the same requests go over the V2 protocol's bidirectional
ModelStreamInfer instead: each closed-loop sender (or, open loop, each idle "lane") keeps one
stream open and writes its next request when the last answer is read, so the per-call cost of
gRPC (a new HTTP/2 stream, metadata, a call object on both sides) is paid once per stream.
`--processes N` runs N copies in separate processes (spawned, each with its own
channel and event loop) that start at one agreed monotonic instant; CLOCK_MONOTONIC is
system-wide on Linux, so their timestamps merge directly.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from array import array
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace

import grpc

from loadtest.generators import arrival_offsets, split_evenly
from loadtest.payloads import Payloads
from service.api.inference import grpc_service_pb2 as pb

DROPPED = -1  # open loop: the client had max_inflight requests outstanding and skipped this one
STREAM_ERROR = -2  # streaming: the server answered with an in-band error_message (a stream has no per-request status)
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.use_local_subchannel_pool", 1),
]


@dataclass(frozen=True)
class LoadPlan:
    """One process's share of the load."""

    target: str
    concurrency: int = 0  # closed loop when > 0
    rate: float = 0.0  # open loop (requests/s) when > 0
    arrival: str = "poisson"
    duration: float = 10.0
    warmup: float = 2.0
    timeout: float = 10.0
    max_inflight: int = 4096
    channels: int = 1
    seed: int = 0
    phase: float = 0.0
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass
class RawResults:
    """Every measured request: due/send time (seconds after `start`), latency (s), status code value."""

    start: float  # monotonic instant the measured window opened (after warm-up)
    duration: float
    sent: array = field(default_factory=lambda: array("d"))
    latency: array = field(default_factory=lambda: array("d"))
    code: array = field(default_factory=lambda: array("i"))
    warmup_requests: int = 0
    cpu_seconds: float = 0.0

    def add(self, sent: float, latency: float, code: int) -> None:
        offset = sent - self.start
        if offset < 0:
            self.warmup_requests += 1
            return
        self.sent.append(offset)
        self.latency.append(latency)
        self.code.append(code)

    @staticmethod
    def merge(parts: list["RawResults"]) -> "RawResults":
        start = min(p.start for p in parts)
        merged = RawResults(start, max(p.start + p.duration for p in parts) - start)
        for part in parts:
            shift = part.start - start
            merged.sent.extend(s + shift for s in part.sent)
            merged.latency.extend(part.latency)
            merged.code.extend(part.code)
            merged.warmup_requests += part.warmup_requests
            merged.cpu_seconds += part.cpu_seconds
        return merged


async def run_plan(plan: LoadPlan, payloads: Payloads, start_at: float | None = None) -> RawResults:
    """Run one process's load; `start_at` (monotonic) lines several processes up."""
    cpu_started = time.process_time()
    channels = [grpc.aio.insecure_channel(plan.target, options=_CHANNEL_OPTIONS) for _ in range(max(1, plan.channels))]
    try:
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), timeout=30)
        if payloads.streaming:
            calls = [c.stream_stream(payloads.method) for c in channels]
        else:
            calls = [c.unary_unary(payloads.method) for c in channels]
        if start_at is not None:
            await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        began = time.monotonic()
        results = RawResults(began + plan.warmup, plan.duration)
        if plan.concurrency > 0:
            loop = _closed_loop_streaming if payloads.streaming else _closed_loop
            await loop(plan, calls, payloads.requests, results)
        elif plan.rate > 0:
            loop = _open_loop_streaming if payloads.streaming else _open_loop
            await loop(plan, calls, payloads.requests, results, began)
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    results.cpu_seconds = time.process_time() - cpu_started
    return results


async def _closed_loop(plan: LoadPlan, calls, requests: tuple[bytes, ...], results: RawResults) -> None:
    end = results.start + plan.duration
    metadata = plan.metadata or None

    async def worker(index: int) -> None:
        call = calls[index % len(calls)]
        clock, count, k = time.monotonic, len(requests), index
        while True:
            sent = clock()
            if sent >= end:
                return
            try:
                await call(requests[k % count], timeout=plan.timeout, metadata=metadata)
                code = 0
            except grpc.aio.AioRpcError as exc:
                code = exc.code().value[0]
            results.add(sent, clock() - sent, code)
            k += plan.concurrency

    await asyncio.gather(*(worker(i) for i in range(plan.concurrency)))


async def _arrivals(plan: LoadPlan, began: float):
    """(index, due monotonic time) of each open-loop arrival, yielded when it is due."""
    clock = time.monotonic
    offsets = arrival_offsets(plan.rate, plan.arrival, plan.warmup + plan.duration, plan.seed, plan.phase)
    for k, offset in enumerate(offsets):
        due = began + offset
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        elif k % 16 == 0:
            await asyncio.sleep(0)  # behind schedule: still let responses in
        yield k, due


async def _open_loop(plan: LoadPlan, calls, requests: tuple[bytes, ...], results: RawResults, began: float) -> None:
    metadata = plan.metadata or None
    clock, count = time.monotonic, len(requests)
    pending: set[asyncio.Task] = set()

    async def one(call, request: bytes, due: float) -> None:
        try:
            await call(request, timeout=plan.timeout, metadata=metadata)
            code = 0
        except grpc.aio.AioRpcError as exc:
            code = exc.code().value[0]
        results.add(due, clock() - due, code)

    async for k, due in _arrivals(plan, began):
        if len(pending) >= plan.max_inflight:
            results.add(due, 0.0, DROPPED)
            continue
        task = asyncio.get_running_loop().create_task(one(calls[k % len(calls)], requests[k % count], due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)


async def stream_answer(call, request: bytes) -> pb.ModelStreamInferResponse | grpc.StatusCode:
    """Write one request on a ModelStreamInfer stream and read its answer, or the gRPC status that
    ended the stream instead (call.details() then says why)."""
    try:
        await call.write(request)
        reply = await call.read()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        reply = grpc.aio.EOF
    if reply is grpc.aio.EOF:  # the stream ended: its status says why (OK would be a server that hung up early)
        status = await call.code()
        return status if status != grpc.StatusCode.OK else grpc.StatusCode.UNAVAILABLE
    return pb.ModelStreamInferResponse.FromString(reply)


async def exchange(call, request: bytes) -> int:
    """One request on a stream; the result code (0, STREAM_ERROR, or the status that ended the stream)."""
    answer = await stream_answer(call, request)
    if isinstance(answer, grpc.StatusCode):
        return answer.value[0]
    return STREAM_ERROR if answer.error_message else 0


def _stream_ok(code: int) -> bool:
    """Can the stream carry more requests after this result?"""
    return code in (0, STREAM_ERROR)


async def _closed_loop_streaming(plan: LoadPlan, streams, requests: tuple[bytes, ...], results: RawResults) -> None:
    """Each of `concurrency` senders keeps one stream; a stream that ends is replaced by a new one.

    A stream's deadline is the rest of the run plus --timeout: gRPC deadlines are per call, so a
    single request cannot have its own (a request stuck longer ends its stream at that deadline).
    """
    end = results.start + plan.duration
    metadata = plan.metadata or None

    async def worker(index: int) -> None:
        open_stream = streams[index % len(streams)]
        clock, count, k, call = time.monotonic, len(requests), index, None
        while True:
            sent = clock()
            if sent >= end:
                break
            if call is None:
                call = open_stream(timeout=end - sent + plan.timeout, metadata=metadata)
            code = await exchange(call, requests[k % count])
            results.add(sent, clock() - sent, code)
            if not _stream_ok(code):
                call = None
            k += plan.concurrency
        if call is not None:
            await call.done_writing()

    await asyncio.gather(*(worker(i) for i in range(plan.concurrency)))


async def _open_loop_streaming(
    plan: LoadPlan, streams, requests: tuple[bytes, ...], results: RawResults, began: float
) -> None:
    """Arrivals on a schedule, each written to an idle stream ("lane"); when every lane is busy a
    new one opens, up to --max-inflight lanes (beyond that the arrival is dropped, as unary).
    A lane carries one request at a time, so no request waits behind another in a stream."""
    metadata = plan.metadata or None
    clock, count = time.monotonic, len(requests)
    deadline = plan.warmup + plan.duration + plan.timeout
    idle: list = []
    lanes: list = []
    pending: set[asyncio.Task] = set()

    async def one(call, request: bytes, due: float) -> None:
        code = await exchange(call, request)
        results.add(due, clock() - due, code)
        if _stream_ok(code):
            idle.append(call)
        else:
            lanes.remove(call)

    async for k, due in _arrivals(plan, began):
        if idle:
            call = idle.pop()
        elif len(lanes) < plan.max_inflight:
            call = streams[len(lanes) % len(streams)](timeout=max(1.0, began + deadline - clock()), metadata=metadata)
            lanes.append(call)
        else:
            results.add(due, 0.0, DROPPED)
            continue
        task = asyncio.get_running_loop().create_task(one(call, requests[k % count], due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)
    await asyncio.gather(*(call.done_writing() for call in lanes), return_exceptions=True)


def _child(plan: LoadPlan, payloads: Payloads, start_at: float) -> RawResults:
    return asyncio.run(run_plan(plan, payloads, start_at))


def run_load(plan: LoadPlan, payloads: Payloads, processes: int = 1) -> RawResults:
    """Run the whole load: in this process, or split over `processes` spawned ones."""
    if processes <= 1:
        return asyncio.run(run_plan(plan, payloads))
    if plan.concurrency > 0:
        shares = [
            replace(plan, concurrency=c, seed=plan.seed + i)
            for i, c in enumerate(split_evenly(plan.concurrency, processes))
            if c > 0
        ]
    else:
        shares = [
            replace(plan, rate=plan.rate / processes, seed=plan.seed + i, phase=i / processes) for i in range(processes)
        ]
    start_at = time.monotonic() + 3.0  # time for the children to spawn, import grpc and connect
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(shares), mp_context=context) as pool:
        parts = list(pool.map(_child, shares, [payloads] * len(shares), [start_at] * len(shares)))
    return RawResults.merge(parts)
