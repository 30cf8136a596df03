"""Ordered, flow-controlled processing of a bidirectional stream: the one implementation behind
V2 ModelStreamInfer and the vision API's StreamDetect / StreamClassify.

Frames are answered in the order they arrived, each exactly once. At most `max_pending` frames
are being processed at a time. Without drop_frames the reader stops reading when that many are
pending, so HTTP/2 flow control slows the sender. With drop_frames the reader keeps reading and
keeps only the newest waiting frame: an older waiting frame is answered `dropped` at once, so
memory stays bounded however fast the producer is. A waiting frame only exists while every slot
is busy, and each finishing frame hands its slot straight to it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable, Generic, TypeVar

import grpc

from service.errors import ServiceError, status_of
from service.pipelines.request import RequestContext
from service.servicers.calls import CallRunner

F = TypeVar("F")  # a frame message
R = TypeVar("R")  # a frame result message


async def run_frame(
    calls: CallRunner, ctx: RequestContext, model_name: str, work: Callable[[], Awaitable[R]]
) -> tuple[R | None, Exception | None]:
    """Run one frame of a stream and record it like a unary call (counted in flight, finished with
    its status). Returns (result, None), or (None, the failure) for the caller to answer the frame
    with: a frame's failure, expected or not, is that frame's error, not the stream's."""
    try:
        with calls.inflight(model_name):
            result = await work()
    except Exception as exc:
        code, message = status_of(exc)
        calls.finish(ctx, code, message, exc if not isinstance(exc, ServiceError) else None)
        return None, exc
    calls.finish(ctx, grpc.StatusCode.OK, "")
    return result, None


@dataclass(eq=False)
class _Slot(Generic[F]):
    frame: F | None
    future: asyncio.Future
    dropped: bool = field(default=False)


@dataclass(frozen=True)
class StreamPolicy:
    """max_pending: frames processed at once. max_unconsumed: frames read but not yet yielded to the
    client (processing or answered), default 4 * max_pending + 16; V2 answers can be large tensors,
    so ModelStreamInfer holds no more than it processes."""

    drop_frames: bool
    max_pending: int
    max_unconsumed: int | None = None


class OrderedStream(Generic[F, R]):
    """Reads frames, processes up to `max_pending` concurrently, yields results in order.

    on_dropped answers a frame skipped under drop_frames (None for a stream that never drops).
    Frames read through the server's receive gate (service.receive_gate.GatedFrames) stay counted
    in its received-bytes budget until their `release`: called here once each frame has been
    answered or dropped.
    """

    def __init__(
        self,
        frames: AsyncIterator[F],
        process: Callable[[F], Awaitable[R]],
        on_dropped: Callable[[F, int], R] | None,
        policy_of_first: Callable[[F], StreamPolicy],
    ):
        self._frames = frames
        self._release: Callable[[F], None] = getattr(frames, "release", lambda frame: None)
        self._process = process
        self._on_dropped = on_dropped
        self._policy_of_first = policy_of_first
        self._order: asyncio.Queue = asyncio.Queue()
        self._slots: asyncio.Semaphore | None = None
        self._waiting: _Slot | None = None
        self._backlog = asyncio.Semaphore(1)  # replaced once the policy is known
        self._tasks: set[asyncio.Task] = set()
        self.dropped = 0

    async def results(self) -> AsyncIterator[R]:
        reader = asyncio.get_running_loop().create_task(self._read())
        try:
            while True:
                slot = await self._order.get()
                if slot is None:
                    break
                result = await slot.future
                self._backlog.release()
                yield result
            await reader  # re-raises a failure of the stream itself
        finally:
            reader.cancel()
            for task in list(self._tasks):
                task.cancel()

    async def _read(self) -> None:
        try:
            policy = None
            async for frame in self._frames:
                if policy is None:
                    policy = self._policy_of_first(frame)
                    self._slots = asyncio.Semaphore(policy.max_pending)
                    self._backlog = asyncio.Semaphore(policy.max_unconsumed or 4 * policy.max_pending + 16)
                await self._backlog.acquire()  # results not yet consumed by the client: bounded
                slot = _Slot(frame, asyncio.get_running_loop().create_future())
                self._order.put_nowait(slot)
                if not policy.drop_frames:
                    await self._slots.acquire()
                    self._start(slot)
                elif not self._slots.locked():
                    await self._slots.acquire()
                    self._start(slot)
                else:
                    self._replace_waiting(slot)
        finally:
            self._order.put_nowait(None)

    def _replace_waiting(self, slot: _Slot) -> None:
        if self._waiting is not None:
            old = self._waiting
            self.dropped += 1
            old.future.set_result(self._on_dropped(old.frame, self.dropped))
            self._release(old.frame)
            old.frame = None
        self._waiting = slot

    def _start(self, slot: _Slot) -> None:
        frame, slot.frame = slot.frame, None
        task = asyncio.get_running_loop().create_task(self._run(frame, slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, frame, slot: _Slot) -> None:
        try:
            slot.future.set_result(await self._process(frame))
        except Exception as exc:  # process() turns frame errors into results; anything else ends the stream
            slot.future.set_exception(exc)
        finally:
            self._release(frame)
            if self._waiting is not None:  # the slot passes straight to the newest waiting frame
                waiting, self._waiting = self._waiting, None
                self._start(waiting)
            else:
                self._slots.release()
