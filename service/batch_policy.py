"""What a dynamic batcher is told (BatchPolicy, from the model's `batching` config) and what it
reports (BatchObserver: service/metrics.py implements it), apart from the batcher itself
(service/batching.py) so that configuration and metrics code can name them without the queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class BatchObserver(Protocol):
    """What the batcher reports (service/metrics.py implements it)."""

    def batch_done(
        self, images: int, requests: int, seconds: float, merge_seconds: float, split_seconds: float
    ) -> None: ...
    def rejected(self, reason: str) -> None: ...
    def queue_depth(self, images: int) -> None: ...


class NullObserver:
    """Reports nothing: a batcher built without metrics (tests, benchmarks)."""

    def batch_done(self, images, requests, seconds, merge_seconds, split_seconds):
        pass

    def rejected(self, reason):
        pass

    def queue_depth(self, images):
        pass


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int = 32
    max_queue_delay_s: float = 0.0005
    preferred_batch_sizes: tuple[int, ...] = ()
    instances: int = 1
    max_queue_size: int = 1024  # images
    max_queue_bytes: int = 256 * 2**20  # input bytes of every queued request together
    inline_run_max_s: float = 0.0  # batches expected to run this fast run on the event loop (0: never)
