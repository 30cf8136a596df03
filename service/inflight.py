"""A server-wide budget on the bytes of original-size image data that requests hold at once.

Why: every other limit is per request or per model queue. A 40-megapixel photo is 120 MB
decoded, its segmentation mask is made at its full size, and a request that asks for an overlay
keeps its decoded original until the answer is built; eight such requests at once held gigabytes
between them, all inside their own limits. So each image request reserves, before anything is
decoded, what it will hold at original size (priced from the image headers by
`original_size_bytes`), and keeps the reservation until its pipeline is done. A request that
does not fit waits for room, up to its deadline (then DEADLINE_EXCEEDED); one that could never
fit, alone, is RESOURCE_EXHAUSTED at once.

Waiting and releasing run on the event loop only, so a plain counter and a FIFO of futures do.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import AsyncIterator, Sequence

from service.errors import DeadlineExceeded, ResourceExhausted
from service.image_header import image_size

DECODED_BYTES_PER_PIXEL = 3  # what OpenCV decodes every image to (BGR uint8)


def original_size_bytes(
    encoded: Sequence[bytes], keep_original: bool, mask_bytes_per_pixel: int, max_pixels: int
) -> int:
    """Bytes a request holds at its images' original size, from their headers: the decoded
    originals it keeps (overlays, explanations), or else the largest one being decoded (the
    others wait for a preprocessing thread or are already reduced to the model's input), plus
    a mask of `mask_bytes_per_pixel` for each image (segmentation). An image without a readable
    header, or over `max_pixels`, is priced 0: decoding refuses it (INVALID_ARGUMENT, as ever)."""
    sizes = filter(None, (image_size(data) for data in encoded))
    pixels = [width * height for width, height in sizes if width * height <= max_pixels]
    if not pixels:
        return 0
    decoded = sum(pixels) if keep_original else max(pixels)
    return decoded * DECODED_BYTES_PER_PIXEL + sum(pixels) * mask_bytes_per_pixel


class Reservation:
    """What one holder has of an InflightBudget; `shrink` hands back what it turned out not to need."""

    def __init__(self, budget: "InflightBudget", nbytes: int):
        self.budget = budget
        self.nbytes = nbytes

    def shrink(self, nbytes: int) -> None:
        """Keep only `nbytes` (no more than held); the rest goes to whoever waits."""
        nbytes = max(0, min(nbytes, self.nbytes))
        freed, self.nbytes = self.nbytes - nbytes, nbytes
        if freed:
            self.budget.release(freed)


class InflightBudget:
    """At most `limit` bytes reserved at once; reservations are served first come, first served.

    `setting` (the flag that sets the limit) and `holding` (what the bytes are) name the budget
    in the errors a request gets, so one class serves every server-wide byte budget.
    """

    def __init__(self, limit: int, setting: str = "--max-decoded-bytes", holding: str = "decoded images"):
        self.limit = limit
        self.used = 0
        self.setting = setting
        self.holding = holding
        self._waiting: deque[tuple[int, asyncio.Future]] = deque()

    @contextlib.asynccontextmanager
    async def reserve(self, nbytes: int, deadline: float | None) -> AsyncIterator[Reservation]:
        """Hold `nbytes` for the body of the `async with`; released however the body ends."""
        await self.acquire(nbytes, deadline)
        reservation = Reservation(self, nbytes)
        try:
            yield reservation
        finally:
            reservation.shrink(0)

    async def acquire(self, nbytes: int, deadline: float | None) -> None:
        """Take `nbytes` (waiting for room up to `deadline`, time.monotonic); give them back with
        `release`. For a per-call hot path: `reserve` is the same as an `async with`."""
        if nbytes > self.limit:
            raise ResourceExhausted(
                f"the request needs {nbytes} bytes of {self.holding}, over the server's "
                f"{self.setting} {self.limit}: send fewer or smaller images or tensors per request"
            )
        if not self._waiting and self.used + nbytes <= self.limit:
            self.used += nbytes
            return
        granted = asyncio.get_running_loop().create_future()
        entry = (nbytes, granted)
        self._waiting.append(entry)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(asyncio.shield(granted), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            if granted.done() and not granted.cancelled():
                self.release(nbytes)  # granted just as the wait ended: hand it on
            else:
                granted.cancel()
                self._waiting.remove(entry)
                self._grant()  # a large request leaving the head of the line may let smaller ones in
            if isinstance(exc, asyncio.TimeoutError):
                raise DeadlineExceeded(
                    f"deadline passed waiting for {nbytes} bytes of room for {self.holding} "
                    f"({self.setting} {self.limit} in use by other requests)"
                ) from None
            raise

    def charge(self, nbytes: int) -> None:
        """Count `nbytes` already in memory, whatever the limit (give them back with `release`):
        bytes that could not be reserved before they arrived (a stream's frame:
        service.receive_gate.GatedFrames). While the budget is over its limit, reservations wait."""
        self.used += nbytes

    def release(self, nbytes: int) -> None:
        self.used -= nbytes
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self.used + self._waiting[0][0] <= self.limit:
            nbytes, granted = self._waiting.popleft()
            self.used += nbytes
            granted.set_result(None)
