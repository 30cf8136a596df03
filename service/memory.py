"""Give freed memory back to the system, so one large request does not leave the server large.

Why: glibc's malloc raises its mmap threshold (up to 32 MiB) each time a large block is freed, so
after a few big decodes, tensors or messages the next ones come from the heap, and a heap only
shrinks from its top: a test server that handled a 61 MiB message and a 10-megapixel image kept
435 MiB more than it started with. Fixing the threshold at 1 MiB (which also turns off that
adjustment) puts every large block in its own mapping, unmapped when freed. Smaller blocks stay in
malloc's arenas, and a large message arrives as many of them (gRPC's read slices): 24 concurrent
15 MB requests left 300 MB of free but fragmented arena pages, which only `malloc_trim` returns,
so the server calls it every few seconds from a worker thread. `python -m bench.memory_worst_case`
and tests/integration/test_hostile.py show the effect. No-op where the C library is not glibc.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging

log = logging.getLogger("convserve.server")

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc malloc.h)
MMAP_THRESHOLD = 1 << 20
TRIM_THRESHOLD = 4 << 20


TRIM_INTERVAL_S = 5.0


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):  # glibc only
            return None
    except OSError:
        return None
    return libc


def return_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds; True when they were set."""
    libc = _libc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        log.warning("mallopt refused the memory thresholds", extra={"event": "mallopt_failed"})
    return ok


async def trim_periodically(interval_s: float = TRIM_INTERVAL_S) -> None:
    """Hand free arena pages back every `interval_s` (in a worker thread: it walks every arena)."""
    libc = _libc()
    if libc is None:
        return
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval_s)
        await loop.run_in_executor(None, libc.malloc_trim, 0)
