"""Stream frames under the received-bytes budget (service.receive_gate.GatedFrames), on a real
grpc.aio server on loopback with the gate's interceptor in front of a stream served by
OrderedStream, as the server's streaming methods are: frames count at their real size from
arrival until answered or dropped, the next frame waits for room, an idle stream is closed, and
whatever a call still holds goes back when it ends."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from service.receive_gate import ReceiveGate, ReceiveGateInterceptor
from service.servicers.streams import OrderedStream, StreamPolicy

FRAME = 100_000
METHOD = "/test.Frames/Answer"
BUDGET = 1_000_000
IDLE_S = 0.4
WAIT_S = 0.4  # the gate's deadline cap: how long a frame waits for room


class FramesServer:
    """One stream-stream method whose frames are answered once `answer` is set (their first byte)."""

    def __init__(self, policy: StreamPolicy):
        self.gate = ReceiveGate(
            budget_bytes=BUDGET,
            max_message_bytes=4 * FRAME,
            reads_per_peer=2,
            read_timeout_s=5.0,
            max_deadline_s=WAIT_S,
            stream_idle_timeout_s=IDLE_S,
        )
        self.answer = asyncio.Event()
        self.dropped = asyncio.Event()
        self.policy = policy
        self.server = grpc.aio.server(interceptors=[ReceiveGateInterceptor(self.gate)])
        handler = grpc.stream_stream_rpc_method_handler(self._frames)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Frames", {"Answer": handler}),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def _frames(self, frames, context):
        async def process(frame: bytes) -> bytes:
            await self.answer.wait()
            return frame[:1]

        def dropped(frame: bytes, count: int) -> bytes:
            self.dropped.set()
            return b"dropped"

        async for result in OrderedStream(frames, process, dropped, lambda _: self.policy).results():
            yield result

    async def __aenter__(self) -> "FramesServer":
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        return self

    async def __aexit__(self, *exc) -> None:
        await self.channel.close()
        await self.server.stop(None)

    def call(self):
        return self.channel.stream_stream(METHOD)(timeout=10)

    async def used_becomes(self, expected: int, within_s: float = 5.0) -> int:
        """The budget in use once it reads `expected`, or what it reads after `within_s`."""
        give_up = time.monotonic() + within_s
        while self.gate.budget.used != expected and time.monotonic() < give_up:
            await asyncio.sleep(0.01)
        return self.gate.budget.used


def frame(tag: int) -> bytes:
    return bytes([tag]) * FRAME


def test_frames_count_from_arrival_until_answered():
    async def main():
        async with FramesServer(StreamPolicy(drop_frames=False, max_pending=4)) as served:
            call = served.call()
            for tag in (1, 2, 3):
                await call.write(frame(tag))
            held = await served.used_becomes(3 * FRAME)
            served.answer.set()
            answers = [await call.read() for _ in range(3)]
            await call.done_writing()
            after = await served.used_becomes(0)
            return held, answers, after

    assert asyncio.run(main()) == (3 * FRAME, [b"\x01", b"\x02", b"\x03"], 0)


def test_a_dropped_frame_gives_its_bytes_back_at_once():
    """One frame processing, one waiting: a third replaces the waiting one, which is answered
    `dropped` and no longer counted."""

    async def main():
        async with FramesServer(StreamPolicy(drop_frames=True, max_pending=1)) as served:
            call = served.call()
            for tag in (1, 2, 3):
                await call.write(frame(tag))
            await asyncio.wait_for(served.dropped.wait(), 5)  # the third frame has replaced the second
            held = served.gate.budget.used
            served.answer.set()
            answers = [await call.read() for _ in range(3)]
            await call.done_writing()
            return held, answers, await served.used_becomes(0)

    assert asyncio.run(main()) == (2 * FRAME, [b"\x01", b"dropped", b"\x03"], 0)


def test_a_frame_is_read_only_when_there_is_room_and_the_stream_ends_when_none_comes():
    """The budget is taken (as unary calls holding their messages would take it) when a stream
    goes to read a frame: the frame is not read; once room comes back in time it is; when none
    comes within the deadline cap the stream ends DEADLINE_EXCEEDED, naming the budget."""

    async def main():
        async with FramesServer(StreamPolicy(drop_frames=False, max_pending=4)) as served:
            served.answer.set()
            budget = served.gate.budget
            await budget.acquire(BUDGET, None)
            call = served.call()
            await call.write(frame(1))
            await asyncio.sleep(WAIT_S / 4)
            unread = budget.used == BUDGET  # nothing of the frame counted: it has not been read
            budget.release(BUDGET)
            first = await call.read()
            await call.done_writing()
            await budget.acquire(BUDGET, None)
            starved = served.call()
            await starved.write(frame(2))
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await starved.read()
            budget.release(BUDGET)
            return unread, first, ended.value.code(), ended.value.details(), await served.used_becomes(0)

    unread, first, code, details, after = asyncio.run(main())
    assert (unread, first, code, after) == (True, b"\x01", grpc.StatusCode.DEADLINE_EXCEEDED, 0)
    assert "--max-received-bytes" in details


def test_an_idle_stream_is_closed_and_a_cancelled_one_gives_everything_back():
    async def main():
        async with FramesServer(StreamPolicy(drop_frames=False, max_pending=4)) as served:
            idle = served.call()
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as closed:
                await idle.read()
            waited = time.monotonic() - started
            held = served.call()
            for tag in (1, 2):
                await held.write(frame(tag))
            counted = await served.used_becomes(2 * FRAME)
            held.cancel()
            return closed.value.code(), closed.value.details(), waited, counted, await served.used_becomes(0)

    code, details, waited, counted, after = asyncio.run(main())
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "--stream-idle-timeout-s" in details, details
    assert IDLE_S * 0.9 <= waited < IDLE_S + 3
    assert (counted, after) == (2 * FRAME, 0)
