"""Which queued requests form the next batch: the batcher's selection rule as one function.

The oldest live request plus every queued request of the same shape that still fits in
`max_batch_size`, cut back to the largest preferred batch size reached on the way if there is one
(Triton's rule), for models whose larger batches run slower per image (e.g. a CNN whose
activations outgrow the CPU's caches). Requests passed over keep their queue order.
"""

from __future__ import annotations

from collections import deque


def take_batch(queue: deque, max_batch_size: int, preferred_batch_sizes: tuple[int, ...]) -> tuple[list, list]:
    """Take the next batch off `queue` (in place) -> (batch, taken). Queue entries have `count`
    (images), `key` (what requests must share to be stacked) and `future` (done: cancelled or
    already answered). `taken` is every request that left the queue, the batch plus the dead ones
    found on the way, so the caller can update its counts; the live requests passed over go back
    to the queue's front in order."""
    batch: list = []
    seen: list = []  # every live request taken off the queue, in queue order
    dead: list = []
    total, key, preferred_cut = 0, None, 0
    largest_preferred = max(preferred_batch_sizes, default=0)
    while queue:
        pending = queue.popleft()
        if pending.future.done():
            dead.append(pending)
            continue
        seen.append(pending)
        if key is None:
            key = pending.key
        if pending.key == key and total + pending.count <= max_batch_size:
            batch.append(pending)
            total += pending.count
            if total in preferred_batch_sizes:
                preferred_cut = len(batch)
                if total == largest_preferred:
                    break  # nothing further can make a larger preferred batch
        elif total >= max_batch_size:
            break
    if preferred_cut:
        batch = batch[:preferred_cut]
    chosen = set(batch)
    queue.extendleft(reversed([p for p in seen if p not in chosen]))
    return batch, batch + dead
