"""Give freed memory back to the system, so one large request does not leave the server large.

Why: glibc's malloc raises its mmap threshold (up to 32 MiB) each time a large block is freed, so
after a few big decodes, tensors or messages the next ones come from the heap, and a heap only
shrinks from its top: a test server that handled a 61 MiB message and a 10-megapixel image kept
435 MiB more than it started with. Fixing the threshold at 1 MiB (which also turns off that
adjustment) puts every large block in its own mapping, unmapped when freed; smaller ones stay on
the heap, trimmed above `M_TRIM_THRESHOLD`. `python -m bench.ort_memory` and
tests/integration/test_hostile.py show the effect. No-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("convserve.server")

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc malloc.h)
MMAP_THRESHOLD = 1 << 20
TRIM_THRESHOLD = 4 << 20


def return_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds; True when they were set."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        log.warning("mallopt refused the memory thresholds", extra={"event": "mallopt_failed"})
    return ok
