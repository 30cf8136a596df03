"""A frame stream that survives server restarts: reopen with backoff, resume with the next frame.

    stream = ReconnectingStream(client, lambda frames: client.stream_detect(frames, "yolo_grid"), camera_frames)
    for frame, result in stream:
        ...
    print(stream.lost, "frames lost in", len(stream.interruptions), "interruptions")

`Connection.stream` never retries, because frames already sent cannot be replayed safely; this wrapper adds what a
camera app wants instead. A frame is *in flight* from the moment gRPC takes it from the request iterator until its
result arrives. When a stream breaks with a status in `ReconnectPolicy.codes` (the server went away or restarted),
its in-flight frames are lost (their results are gone, and resending them would show stale pictures late): they are
counted and reported, never resent. Frames the broken stream had not taken yet go out on the next stream, so a file
source loses nothing else and a live camera just misses what it captured meanwhile.

Before each reopen the server's health is probed, so a stream is only opened to a server that answers; between
probes the wait is an equal-jitter exponential backoff, as in connection.py. After `max_attempts` probes without a
single result in between, the last error is raised.

At most `max_in_flight` frames (default 32; 0: no limit) are handed to gRPC unanswered, which bounds what one break
can lose: without it the HTTP/2 window and socket buffers can hold dozens of frames when the source runs ahead of
the server.

A source item without a frame id gets its position in the source, so ids stay unique and increasing across
reconnects. An exception from the source is raised to the caller at the end.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import grpc

from service.client.errors import RpcFailed
from service.client.frame_feed import FrameFeed, StreamAttempt
from service.client.images import Frame, ImageLike
from service.client.results import FrameResult

RECONNECT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED})


@dataclass(frozen=True)
class ReconnectPolicy:
    """max_attempts: backoff-and-probe rounds without a result before giving up; backoff as RetryPolicy's."""

    max_attempts: int = 20
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 3.0
    probe_timeout_s: float = 2.0
    codes: frozenset = RECONNECT_CODES

    def __post_init__(self):
        if self.max_attempts < 0:
            raise ValueError(f"max_attempts must be >= 0, got {self.max_attempts}")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError(
                f"backoff must satisfy 0 < initial <= max, got ({self.backoff_initial_s}, {self.backoff_max_s})"
            )

    def delay_s(self, retry: int, rng: random.Random) -> float:
        ceiling = min(self.backoff_max_s, self.backoff_initial_s * 2**retry)
        return rng.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class StreamInterruption:
    """One outage: the error that broke the stream, the frames lost in it, how recovery went.

    last_answered_id is the last frame answered before the break (-1: none yet); attempts counts
    the backoff-and-probe rounds until a stream answered again (resumed) or the stream gave up.
    """

    error: RpcFailed
    lost_frame_ids: tuple[int, ...]
    last_answered_id: int
    attempts: int
    downtime_s: float
    resumed: bool


@dataclass(eq=False)
class _Outage:
    error: RpcFailed
    last_answered_id: int
    started: float = field(default_factory=time.monotonic)
    lost: list[int] = field(default_factory=list)
    attempts: int = 0

    def finish(self, resumed: bool) -> StreamInterruption:
        return StreamInterruption(
            self.error, tuple(self.lost), self.last_answered_id, self.attempts, time.monotonic() - self.started, resumed
        )


class ReconnectingStream:
    """Iterate to get (frame, result) pairs in frame order across reconnects; see the module doc."""

    def __init__(
        self,
        client,
        open_stream: Callable[[Iterator[Frame]], Iterator[FrameResult]],
        frames: Iterable[ImageLike | Frame],
        policy: ReconnectPolicy = ReconnectPolicy(),
        on_interruption: Callable[[StreamInterruption], None] | None = None,
        *,
        max_in_flight: int = 32,
        seed: int | None = None,
    ):
        if max_in_flight < 0:
            raise ValueError(f"max_in_flight must be >= 0 (0: no limit), got {max_in_flight}")
        self._client = client
        self._open = open_stream
        self._feed = FrameFeed(frames, max_in_flight)
        self.policy = policy
        self._on_interruption = on_interruption
        self._rng = random.Random(seed)
        self.interruptions: list[StreamInterruption] = []
        self.answered = 0
        self.dropped = 0
        self.unanswered: list[int] = []  # frames the server skipped without an answer (a server bug)
        self._last_id = -1

    @property
    def sent(self) -> int:
        return self._feed.sent

    @property
    def lost(self) -> int:
        return sum(len(i.lost_frame_ids) for i in self.interruptions)

    def __iter__(self) -> Iterator[tuple[Frame, FrameResult]]:
        try:
            yield from self._results()
        finally:
            self._feed.wait_idle(self.policy.probe_timeout_s)

    def _results(self) -> Iterator[tuple[Frame, FrameResult]]:
        outage: _Outage | None = None
        while outage is None or self._feed.has_more:
            if outage is not None:
                self._wait_for_server(outage)
            attempt = StreamAttempt()
            results = self._open(self._feed.frames_for(attempt))
            try:
                for result in results:
                    if outage is not None:
                        self._record(outage.finish(resumed=True))
                        outage = None
                    yield self._accept(result)
                break
            except RpcFailed as error:
                lost = self._feed.close(attempt)
                if error.code not in self.policy.codes:
                    raise
                outage = outage or _Outage(error, self._last_id)
                outage.lost.extend(lost)
                if outage.attempts >= self.policy.max_attempts:
                    self._record(outage.finish(resumed=False))
                    raise
            finally:  # also when the caller stops early: release gRPC's thread if it waits for room
                self._feed.close(attempt)
                getattr(results, "close", lambda: None)()  # a gRPC call iterator has close(); a plain one may not
        else:
            self._record(outage.finish(resumed=False))
        if self._feed.failure is not None:
            raise self._feed.failure  # the source itself failed (read in gRPC's thread)

    def _accept(self, result: FrameResult) -> tuple[Frame, FrameResult]:
        frame, skipped = self._feed.answered(result.frame_id)
        self.unanswered.extend(skipped)
        self.answered += 1
        self.dropped += result.dropped
        self._last_id = result.frame_id
        return frame, result

    def _record(self, interruption: StreamInterruption) -> None:
        self.interruptions.append(interruption)
        if self._on_interruption is not None:
            self._on_interruption(interruption)

    def _wait_for_server(self, outage: _Outage) -> None:
        """Back off, then probe health until the server answers or the attempts run out."""
        while True:
            time.sleep(self.policy.delay_s(outage.attempts, self._rng))
            outage.attempts += 1
            if self._server_answers() or outage.attempts >= self.policy.max_attempts:
                return

    def _server_answers(self) -> bool:
        try:
            return self._client.health(timeout=self.policy.probe_timeout_s) == "SERVING"
        except RpcFailed as error:
            return error.code == grpc.StatusCode.UNIMPLEMENTED  # a server without health: just try
