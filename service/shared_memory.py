"""Registered shared-memory regions: Triton's system shared-memory extension, server side.

Why: a client on the same host (a camera sidecar, perf_analyzer) writes its tensors into a POSIX
shared-memory object once and names the region in each request, so the bytes never travel
through gRPC. The server maps the object (os.open of /dev/shm/<key> + mmap, no copy) and reads
inputs as numpy views over the mapping; outputs are written straight into a region.

Every region is checked at registration (name, key, offset and size against the object's real
size) and again at each use (the object may have been truncated since), so a bad or stale region
is INVALID_ARGUMENT, never a read past the end of a mapping (SIGBUS). Names are one namespace
for every region kind, as in Triton; `SharedMemoryRegistry` holds regions by name and a CUDA
region type can be added beside `SystemRegion` with the same read/write/close methods.

Unmapping is safe while a request still holds a view: `mmap.close()` refuses (BufferError) while
buffers are exported, and then the mapping lives until the last view is released.
"""

from __future__ import annotations

import mmap
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from service.errors import AlreadyExists, InvalidArgument, ResourceExhausted

SHM_DIR = Path("/dev/shm")  # where Linux keeps POSIX shared-memory objects (what shm_open opens)
MAX_REGIONS = 256  # each region holds one file descriptor and one mapping
MAX_NAME_CHARS = 256
MAX_KEY_BYTES = 255  # NAME_MAX


@dataclass(frozen=True)
class RegionStatus:
    """What SystemSharedMemoryStatus reports for one region."""

    name: str
    key: str
    offset: int
    byte_size: int


class SharedMemoryMetrics:
    """Shared-memory series on the server's injected registry (docs/metrics.md)."""

    def __init__(self, registry: CollectorRegistry):
        self.regions = Gauge(
            "convserve_shared_memory_regions", "Shared-memory regions registered now.", ["kind"], registry=registry
        )
        self.mapped_bytes = Gauge(
            "convserve_shared_memory_mapped_bytes",
            "Bytes of the registered shared-memory regions (mapped, not copied).",
            ["kind"],
            registry=registry,
        )
        self.requests = Counter(
            "convserve_shared_memory_requests",
            "V2 inference requests that read an input from or wrote an output to shared memory.",
            ["model"],
            registry=registry,
        )


def check_region_name(name: str) -> None:
    if not name:
        raise InvalidArgument("shared-memory region name is empty")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidArgument(f"shared-memory region name is {len(name)} characters; at most {MAX_NAME_CHARS}")


def shm_path(key: str) -> Path:
    """/dev/shm/<name> for a POSIX shared-memory key ('/name' or 'name'); anything that could name
    another file (a '/' after the leading one, '.', '..', NUL) is refused."""
    name = key[1:] if key.startswith("/") else key
    if not name:
        raise InvalidArgument(f"shared-memory key {key!r} is empty")
    if "/" in name or "\0" in name or ".." in name or name == ".":
        raise InvalidArgument(
            f"shared-memory key {key!r} is not a plain POSIX shared-memory name "
            "(one optional leading '/', then no '/', '..' or NUL)"
        )
    if len(name.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
        raise InvalidArgument(f"shared-memory key {key!r} is longer than {MAX_KEY_BYTES} bytes")
    return SHM_DIR / name


class SystemRegion:
    """One mapped window [offset, offset + byte_size) of a POSIX shared-memory object."""

    kind = "system"

    def __init__(self, name: str, key: str, offset: int, byte_size: int):
        if byte_size <= 0:
            raise InvalidArgument(f"shared-memory region '{name}': byte_size must be > 0, got {byte_size}")
        path = shm_path(key)
        try:  # O_NOFOLLOW: a symlink planted in /dev/shm must not lead the server to another file
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise InvalidArgument(f"shared-memory region '{name}': no shared-memory object {key!r} ({path})") from None
        except OSError as exc:
            raise InvalidArgument(
                f"shared-memory region '{name}': cannot open {key!r} ({path}): {exc.strerror}"
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidArgument(f"shared-memory region '{name}': {path} is not a shared-memory object")
            if offset + byte_size > info.st_size:
                raise InvalidArgument(
                    f"shared-memory region '{name}': offset {offset} + byte_size {byte_size} "
                    f"is past the end of {key!r}, which holds {info.st_size} bytes"
                )
            start = offset - offset % mmap.ALLOCATIONGRANULARITY  # mmap offsets must be page-aligned
            self._map = mmap.mmap(fd, offset + byte_size - start, offset=start)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._base = offset - start
        self.status = RegionStatus(name, key, offset, byte_size)
        self.closed = False

    def _window(self, offset: int, byte_size: int, what: str) -> int:
        """Start of [offset, offset + byte_size) within the mapping, after every bounds check."""
        if self.closed:
            raise InvalidArgument(f"{what}: shared-memory region '{self.status.name}' was unregistered")
        if offset < 0 or byte_size < 0 or offset + byte_size > self.status.byte_size:
            raise InvalidArgument(
                f"{what}: shared_memory_offset {offset} + shared_memory_byte_size {byte_size} is "
                f"past the end of region '{self.status.name}' ({self.status.byte_size} bytes)"
            )
        needed = self.status.offset + self.status.byte_size
        size = os.fstat(self._fd).st_size
        if size < needed:  # truncated since registration: touching the mapping past the end is SIGBUS
            raise InvalidArgument(
                f"{what}: shared-memory object {self.status.key!r} shrank to {size} bytes; "
                f"region '{self.status.name}' needs {needed}"
            )
        return self._base + offset

    def read(self, offset: int, byte_size: int, what: str) -> memoryview:
        """A read-only view of the window (no copy); it keeps the mapping alive while it exists."""
        start = self._window(offset, byte_size, what)
        return memoryview(self._map).toreadonly()[start : start + byte_size]

    def write(self, offset: int, array: np.ndarray, what: str) -> None:
        """Copy a C-contiguous little-endian array (or bytes) into the window; the caller sized it."""
        data = memoryview(np.ascontiguousarray(array)).cast("B") if isinstance(array, np.ndarray) else memoryview(array)
        start = self._window(offset, data.nbytes, what)
        self._map[start : start + data.nbytes] = data

    def close(self) -> None:
        """Unmap (or leave the mapping to the last view still held) and close the descriptor."""
        if self.closed:
            return
        self.closed = True
        try:
            self._map.close()
        except BufferError:
            pass  # a request still reads a view; the mapping goes when that view does
        os.close(self._fd)


class SharedMemoryRegistry:
    """Regions by name, shared by every client of this server (as in Triton), bounded in count."""

    def __init__(self, metrics: SharedMemoryMetrics):
        self._regions: dict[str, SystemRegion] = {}
        self._metrics = metrics
        self._served: dict[str, Counter] = {}  # memoised requests.labels(model): on the request path

    def __bool__(self) -> bool:
        return bool(self._regions)

    def register_system(self, name: str, key: str, offset: int, byte_size: int) -> None:
        check_region_name(name)
        if name in self._regions:
            raise AlreadyExists(f"shared-memory region '{name}' is already registered; unregister it first")
        if len(self._regions) >= MAX_REGIONS:
            raise ResourceExhausted(
                f"{MAX_REGIONS} shared-memory regions are registered, the most this server keeps; unregister some first"
            )
        region = SystemRegion(name, key, offset, byte_size)
        self._regions[name] = region
        self._count(region, +1)

    def get(self, name: str, what: str) -> SystemRegion:
        region = self._regions.get(name)
        if region is None:
            raise InvalidArgument(
                f"{what}: no shared-memory region '{name}' is registered "
                "(register it with SystemSharedMemoryRegister first)"
            )
        return region

    def status(self, name: str, kind: str = "system") -> list[RegionStatus]:
        """Every region of `kind`, or the one named (INVALID_ARGUMENT if it is not registered)."""
        if name:
            region = self._regions.get(name)
            if region is None or region.kind != kind:
                raise InvalidArgument(f"no {kind} shared-memory region '{name}' is registered")
            return [region.status]
        return [r.status for r in self._regions.values() if r.kind == kind]

    def unregister(self, name: str, kind: str = "system") -> None:
        """Unregister one region of `kind`, or all of them when `name` is empty; an unknown name is
        not an error (Triton's behaviour: unregistering is idempotent)."""
        names = [name] if name else [n for n, r in self._regions.items() if r.kind == kind]
        for each in names:
            region = self._regions.get(each)
            if region is not None and region.kind == kind:
                del self._regions[each]
                region.close()
                self._count(region, -1)

    def served(self, model: str) -> None:
        """Count one request of `model` that used shared memory."""
        counter = self._served.get(model)
        if counter is None:
            counter = self._served[model] = self._metrics.requests.labels(model)
        counter.inc()

    def close(self) -> None:
        """At server shutdown: unregister every region of every kind."""
        for kind in {r.kind for r in self._regions.values()}:
            self.unregister("", kind)

    def _count(self, region: SystemRegion, sign: int) -> None:
        self._metrics.regions.labels(region.kind).inc(sign)
        self._metrics.mapped_bytes.labels(region.kind).inc(sign * region.status.byte_size)
