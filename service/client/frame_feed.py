"""The frames of one camera source, handed to successive streams of a ReconnectingStream.

It remembers which frames are in flight (handed to gRPC, not answered yet), so that when a stream
breaks those are counted as lost and the frames not yet taken go out on the next stream.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Iterable, Iterator

from service.client.images import Frame, ImageLike


@dataclass(eq=False)
class StreamAttempt:
    """One opened stream; `closed` once it ended, so its late pulls from the feed stop."""

    closed: bool = False


class FrameFeed:
    """Hands one source's frames to successive streams and remembers which are in flight.

    gRPC pulls the request iterator from its own thread and, after a call ends, may still pull one frame it then
    discards: such a frame counts as in flight (handed over, never answered). One lock serialises reading the source
    (so two streams' threads never read it at once and frames keep their order); a condition guards the bookkeeping,
    so recording a result never waits for a camera read. With `max_in_flight`, a frame is handed over only while
    fewer are unanswered: the transport's buffers can hold many frames, and a broken connection loses all of them.
    """

    def __init__(self, frames: Iterable[ImageLike | Frame], max_in_flight: int):
        self._source = enumerate(frames)
        self._reading = threading.Lock()
        self._state = threading.Condition()
        self._unsent: deque[Frame] = deque()
        self._in_flight: OrderedDict[int, Frame] = OrderedDict()
        self._max_in_flight = max_in_flight
        self._threads: set[threading.Thread] = set()
        self.exhausted = False
        self.failure: Exception | None = None
        self.sent = 0

    def frames_for(self, attempt: StreamAttempt) -> Iterator[Frame]:
        with self._state:
            self._threads.add(threading.current_thread())  # gRPC's request thread for this stream
        while True:
            with self._state:
                while not attempt.closed and 0 < self._max_in_flight <= len(self._in_flight):
                    self._state.wait()
            with self._reading:
                frame = self._next(attempt)
            if frame is None:
                return
            yield frame

    def _next(self, attempt: StreamAttempt) -> Frame | None:
        """The next frame for `attempt`, recorded in flight; None once it is closed or the source ends."""
        with self._state:
            if attempt.closed:
                return None
            frame = self._unsent.popleft() if self._unsent else None
        if frame is None:
            frame = self._pull()
            if frame is None:
                return None
        with self._state:
            if attempt.closed:  # the stream ended while the source was read: keep it for the next
                self._unsent.appendleft(frame)
                return None
            self._in_flight[frame.frame_id] = frame
            self.sent += 1
        return frame

    def _pull(self) -> Frame | None:
        """The source's next frame, or None at its end or when it raised (kept in `failure`)."""
        try:
            position, item = next(self._source)
        except StopIteration:
            self.exhausted = True
            return None
        except Exception as exc:  # raised in gRPC's thread: hand it to the caller's thread instead
            self.failure, self.exhausted = exc, True
            return None
        frame = item if isinstance(item, Frame) else Frame(item)
        return Frame(
            frame.image,
            position if frame.frame_id is None else frame.frame_id,
            time.time_ns() // 1000 if frame.capture_timestamp_us is None else frame.capture_timestamp_us,
        )

    def answered(self, frame_id: int) -> tuple[Frame | None, list[int]]:
        """The frame a result answers, and ids before it that were never answered (should be none)."""
        with self._state:
            skipped = []
            try:
                while self._in_flight:
                    first_id, frame = self._in_flight.popitem(last=False)
                    if first_id == frame_id:
                        return frame, skipped
                    skipped.append(first_id)
                return None, skipped
            finally:
                self._state.notify_all()

    def close(self, attempt: StreamAttempt) -> list[int]:
        """End an attempt; returns the ids of its frames still in flight (now lost)."""
        with self._state:
            attempt.closed = True
            lost = list(self._in_flight)
            self._in_flight.clear()
            self._state.notify_all()
            return lost

    def wait_idle(self, timeout: float) -> None:
        """Wait (up to `timeout`) for gRPC's request threads of the closed streams to finish.

        Why: such a daemon thread may still be inside native code (a camera read, gRPC's send) for a moment after
        its call ended; a program that exits right then is torn down under it and aborts ("terminate called without
        an active exception"). Every attempt is closed by now, so the threads only have to notice and return.
        """
        give_up = time.monotonic() + timeout
        with self._state:
            threads = [t for t in self._threads if t is not threading.current_thread()]
        for thread in threads:
            thread.join(max(0.0, give_up - time.monotonic()))

    @property
    def has_more(self) -> bool:
        with self._state:
            return bool(self._unsent) or not self.exhausted
