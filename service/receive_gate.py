"""A server-wide budget on the bytes of request messages the server holds, enforced before reading.

Why: gRPC reads a unary call's whole message before the handler runs, and keeps it (with
protobuf's parsed copy) until the answer is sent. Every limit the handler checks comes after
that, so 72 concurrent 59 MB requests to a digits model, each refused at once as the wrong
shape, took the server to 2.8 GB: nothing bounded how many messages were being received at
the same time. So every unary call (health checks aside) is served as a client-streaming call
that reads its one message itself, and only once it holds a reservation:

* a call first takes one of its connection's `--max-reads-per-peer` read turns, then reserves
  `--max-message-bytes` (the most its message can be) of `--max-received-bytes`; one that finds
  no turn or no room waits, first come first served, up to its deadline (DEADLINE_EXCEEDED).
  While it waits gRPC holds no more of its message than one HTTP/2 stream window (the server
  keeps gRPC's BDP probing off, which would grow every window to megabytes);
* the message must then arrive within `--message-read-timeout-s` (DEADLINE_EXCEEDED otherwise),
  so slow senders cannot keep turns and room for long;
* once it has arrived the turn is given back and the reservation shrinks to the message's real
  size, held until the call has answered: what queued and running requests hold counts too.

Streaming calls (ModelStreamInfer, StreamDetect, StreamClassify) read their frames under the
same budget, one at a time (`GatedFrames`): a frame is read once the budget has room for the
largest message, and is counted at its real size from its arrival until the stream has answered
it. Health checks and reflection are exempt, so that probes and tools answer while the budget is
full; their messages are read as gRPC reads any (at most `--max-message-bytes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping

import grpc

from service.errors import DeadlineExceeded, InvalidArgument, ServiceError, bounded, status_of
from service.inflight import InflightBudget
from service.metrics import RECEIVE_REFUSALS, Metrics

EXEMPT_PREFIXES = ("/grpc.health.", "/grpc.reflection.")


class ReceiveGate:
    """The budget, the per-connection read turns and the read timeout; one per server.

    Why it is written out by hand (no context managers, no timer per call): it runs on every
    unary call. The fast path (a turn free, room in the budget) is a few dict and integer
    operations; the read timeout is enforced by one watcher task that looks at the reads in
    progress a few times per timeout, instead of a timer per read (`asyncio.timeout` alone cost
    a small request about 35 us of server CPU here).
    """

    def __init__(
        self,
        budget_bytes: int,
        max_message_bytes: int,
        reads_per_peer: int,
        read_timeout_s: float,
        max_deadline_s: float,
        metrics: Metrics | None = None,
        stream_idle_timeout_s: float = 60.0,
    ):
        """`metrics`: where the budget in use and the refusals show (convserve_received_*);
        `stream_idle_timeout_s`: how long a stream's next frame may take (`GatedFrames`)."""
        self.budget = InflightBudget(budget_bytes, "--max-received-bytes", "request messages")
        self._refusals = None
        if metrics is not None:
            metrics.received_bytes.set_function(lambda: self.budget.used)
            self._refusals = {reason: metrics.received_refusals.labels(reason) for reason in RECEIVE_REFUSALS}
        self.max_message_bytes = max_message_bytes
        self.reads_per_peer = reads_per_peer
        self.read_timeout_s = read_timeout_s
        self.max_deadline_s = max_deadline_s
        self.stream_idle_timeout_s = stream_idle_timeout_s
        self._reading: dict[str, int] = {}  # peer -> reads in progress
        self._turn_waiters: dict[str, deque[asyncio.Future]] = {}  # peer -> calls waiting for a turn
        self._reads: dict[asyncio.Task, float] = {}  # task reading -> time.monotonic() it must be done by
        self._timed_out: set[asyncio.Task] = set()
        self._watcher: asyncio.Task | None = None

    @classmethod
    def from_limits(cls, limits, metrics: Metrics | None = None) -> "ReceiveGate":
        """The gate the server's settings (service.settings.Limits) describe."""
        return cls(
            limits.max_received_bytes,
            limits.max_message_bytes,
            limits.max_reads_per_peer,
            limits.message_read_timeout_s,
            limits.max_deadline_s,
            metrics,
            limits.stream_idle_timeout_s,
        )

    def refused(self, reason: str) -> None:
        """Count a call the gate ended (one of metrics.RECEIVE_REFUSALS)."""
        if self._refusals is not None:
            self._refusals[reason].inc()

    @contextlib.asynccontextmanager
    async def body_reservation(self, content_length: int | None) -> AsyncIterator[None]:
        """Room for an HTTP request body, reserved before it is read and held while it is handled:
        its Content-Length, or the largest size for a body sent without one. aiohttp buffers
        little of a body nobody reads yet, so waiting here costs no more."""
        nbytes = self.max_message_bytes if content_length is None else min(content_length, self.max_message_bytes)
        await self._room(nbytes, time.monotonic() + self.max_deadline_s)
        try:
            yield
        finally:
            self.budget.release(nbytes)

    def _deadline(self, context) -> float:
        remaining = context.time_remaining()
        cap = self.max_deadline_s if remaining is None else min(remaining, self.max_deadline_s)
        return time.monotonic() + max(0.0, cap)

    async def receive(self, context) -> tuple[bytes, int]:
        """(the call's serialized message, the bytes of the budget it holds). The caller gives
        those back with `release` once the call has answered, however it ends."""
        peer = context.peer()
        deadline = self._deadline(context)
        await self._take_turn(peer, deadline)
        try:
            await self._room(self.max_message_bytes, deadline)
            try:
                data = await self._read(context)
            except BaseException:
                self.budget.release(self.max_message_bytes)
                raise
        finally:
            self._give_turn(peer)
        held = len(data)
        self.budget.release(self.max_message_bytes - held)  # keep only what the message really is
        return data, held

    def release(self, held: int) -> None:
        self.budget.release(held)

    async def room_for_a_frame(self, context) -> None:
        """Until the budget has room for a message of the largest size (in turn with the calls
        waiting to read), up to the call's deadline; DEADLINE_EXCEEDED after it. Takes nothing:
        the frame is `charge`d at its real size once it has arrived (GatedFrames)."""
        await self._room(self.max_message_bytes, self._deadline(context))
        self.budget.release(self.max_message_bytes)

    async def _room(self, nbytes: int, deadline: float) -> None:
        """`nbytes` of the budget, waited for up to `deadline`; a wait that runs out is counted."""
        try:
            await self.budget.acquire(nbytes, deadline)
        except DeadlineExceeded:
            self.refused("no_room")
            raise

    async def _take_turn(self, peer: str, deadline: float) -> None:
        """One of the connection's `reads_per_peer` read turns, waited for up to `deadline`."""
        reading = self._reading.get(peer, 0)
        if reading < self.reads_per_peer and peer not in self._turn_waiters:
            self._reading[peer] = reading + 1
            return
        turn = asyncio.get_running_loop().create_future()
        waiters = self._turn_waiters.setdefault(peer, deque())
        waiters.append(turn)
        try:
            await asyncio.wait_for(asyncio.shield(turn), max(0.0, deadline - time.monotonic()))
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            if turn.done() and not turn.cancelled():
                self._give_turn(peer)  # handed a turn just as the wait ended: pass it on
            else:
                turn.cancel()
                waiters.remove(turn)
                if not waiters:
                    del self._turn_waiters[peer]
            if isinstance(exc, asyncio.TimeoutError):
                self.refused("no_turn")
                raise DeadlineExceeded(
                    f"deadline passed waiting for one of this connection's {self.reads_per_peer} "
                    "message reads (--max-reads-per-peer)"
                ) from None
            raise

    def _give_turn(self, peer: str) -> None:
        """The turn goes to the connection's next waiting call, or back to the count."""
        waiters = self._turn_waiters.get(peer)
        if waiters:
            waiters.popleft().set_result(None)  # the count stays: the turn changes hands
            if not waiters:
                del self._turn_waiters[peer]
            return
        reading = self._reading[peer] - 1
        if reading:
            self._reading[peer] = reading
        else:
            del self._reading[peer]

    async def _read(self, context) -> bytes:
        """The message, or DEADLINE_EXCEEDED when it has not arrived `read_timeout_s` after the
        read started (the watcher cancels the read)."""
        task = asyncio.current_task()
        self._reads[task] = time.monotonic() + self.read_timeout_s
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_reads())
        try:
            data = await context.read()
        except asyncio.CancelledError:
            if task not in self._timed_out:
                raise
            self._timed_out.discard(task)
            task.uncancel()
            self.refused("read_timeout")
            raise DeadlineExceeded(
                f"the request message did not arrive within {self.read_timeout_s:g} s of its "
                "read starting (--message-read-timeout-s)"
            ) from None
        finally:
            self._reads.pop(task, None)
        return b"" if data is grpc.aio.EOF else data  # no message: the handler's empty request decides

    async def _watch_reads(self) -> None:
        """Cancel reads past their time, a few times per `read_timeout_s`; ends when none is left."""
        try:
            while self._reads:
                await asyncio.sleep(min(1.0, self.read_timeout_s / 4))
                now = time.monotonic()
                for task, due in list(self._reads.items()):
                    if due <= now and task not in self._timed_out:
                        self._timed_out.add(task)
                        task.cancel()
        finally:
            self._watcher = None


class GatedFrames:
    """A streaming call's frames, read one at a time under the gate's budget, parsed.

    Why not a reservation per read, as a unary call has: a stream waits for its next frame most
    of its life, and a reservation taken before that wait would hold `--max-message-bytes` all
    the while (four idle streams would fill the default budget, and every unary call would wait
    behind them). So the next frame is read once the budget has room for a message of the largest
    size (in turn with the unary calls waiting), is counted at its real size as soon as it has
    arrived, and stays counted until the stream is done with it: `release(frame)`, which
    service.servicers.streams.OrderedStream calls once the frame is answered or dropped, or the
    end of the call. So the frames streams hold (waiting, queued, running) are bounded by
    `--max-received-bytes` with everything else; what the budget cannot see is a frame while gRPC
    is receiving it, at most one per open stream (docs/security.md).

    The stream's idle limit is here too: DEADLINE_EXCEEDED when no frame has come
    `stream_idle_timeout_s` after the read started (the wait for room does not count: that is
    the server's wait, not the client's silence).
    """

    def __init__(self, gate: ReceiveGate, context, deserialize):
        self._gate = gate
        self._context = context
        self._deserialize = deserialize
        self._held: dict[int, int] = {}  # id(frame) -> bytes it is counted for

    def __aiter__(self) -> "GatedFrames":
        return self

    async def __anext__(self):
        gate, context = self._gate, self._context
        try:
            await gate.room_for_a_frame(context)
        except ServiceError as exc:
            await abort_with(context, exc)
        try:
            data = await asyncio.wait_for(context.read(), gate.stream_idle_timeout_s)
        except asyncio.TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"stream sent no frame for {gate.stream_idle_timeout_s:g} s: closed to free its slot "
                "(--stream-idle-timeout-s)",
            )
        if data is grpc.aio.EOF:
            raise StopAsyncIteration
        nbytes = len(data)
        gate.budget.charge(nbytes)
        try:
            frame = parse(data, self._deserialize, gate)
        except ServiceError as exc:
            gate.budget.release(nbytes)
            await abort_with(context, exc)
        del data  # only the parsed frame is held from here
        self._held[id(frame)] = nbytes
        return frame

    def release(self, frame) -> None:
        """The stream is done with `frame`: its bytes go back to the budget (once)."""
        nbytes = self._held.pop(id(frame), 0)
        if nbytes:
            self._gate.budget.release(nbytes)

    def close(self) -> None:
        """The call has ended: every frame still counted goes back."""
        held, self._held = sum(self._held.values()), {}
        if held:
            self._gate.budget.release(held)


class ReceiveGateInterceptor(grpc.aio.ServerInterceptor):
    """Serves every unary-unary and stream-stream method (health and reflection aside) through the
    gate; other shapes pass."""

    def __init__(self, gate: ReceiveGate, deserializers: Mapping[str, Callable[[bytes], object]] | None = None):
        """`deserializers` replace a method's registered request deserializer (ModelInfer's keeps
        tensor bytes as views of the message)."""
        self.gate = gate
        self.deserializers = dict(deserializers or {})
        self._gated: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        if handler.unary_unary is None and handler.stream_stream is None:
            return handler
        cached = self._gated.get(method)
        if cached is None or cached[0] is not handler:
            deserialize = self.deserializers.get(method, handler.request_deserializer)
            gated = self._gate(handler, deserialize) if handler.unary_unary else self._gate_stream(handler, deserialize)
            cached = self._gated[method] = (handler, gated)
        return cached[1]

    def _gate_stream(self, handler: grpc.RpcMethodHandler, deserialize) -> grpc.RpcMethodHandler:
        behavior, gate = handler.stream_stream, self.gate

        async def gated(request_iterator, context):
            frames = GatedFrames(gate, context, deserialize)
            try:
                async for response in behavior(frames, context):
                    yield response
            finally:
                frames.close()

        return grpc.stream_stream_rpc_method_handler(
            gated, request_deserializer=None, response_serializer=handler.response_serializer
        )

    def _gate(self, handler: grpc.RpcMethodHandler, deserialize) -> grpc.RpcMethodHandler:
        behavior, gate = handler.unary_unary, self.gate

        async def gated(request_iterator, context):
            try:
                data, held = await gate.receive(context)
            except ServiceError as exc:
                await abort_with(context, exc)
            try:
                request = parse(data, deserialize, gate)
                del data  # only the parsed request is held from here (ModelInfer's views keep it alive)
                return await behavior(request, context)
            except ServiceError as exc:
                await abort_with(context, exc)
            finally:
                gate.release(held)

        return grpc.stream_unary_rpc_method_handler(
            gated, request_deserializer=None, response_serializer=handler.response_serializer
        )


async def abort_with(context, error: ServiceError) -> None:
    """End the call with `error`'s status and its (bounded) message."""
    code, message = status_of(error)
    await context.abort(code, bounded(message))


def parse(data: bytes, deserialize, gate: ReceiveGate) -> object:
    """The request from its bytes; INVALID_ARGUMENT (not gRPC's INTERNAL) when they are not one.
    Only the parsed request outlives this call, so the serialized bytes are freed with it."""
    if deserialize is None:
        return data
    try:
        return deserialize(data)
    except InvalidArgument:
        gate.refused("unparseable")
        raise
    except ServiceError:
        raise
    except Exception as exc:  # protobuf's DecodeError and the like: the client's bytes
        gate.refused("unparseable")
        raise InvalidArgument(f"request message could not be parsed: {bounded(str(exc), 200)}") from None
