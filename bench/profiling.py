"""Where the server's CPU goes under load: py-spy samples plus per-thread CPU from /proc.

py-spy (a dev dependency: `pip install py-spy`) samples the running server from outside, so the
server needs no profiling code. Its collapsed stacks are summarised per thread and, for the event
loop thread, by what the innermost Python frame was doing. Frames of gRPC's Cython core are
invisible to it: their time shows up under the asyncio `Handle._run` that called them.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

_THREAD = re.compile(r"thread \((\w+)\): (.*)")
_CATEGORIES = (  # (category, substring of the innermost frame), first match wins
    ("event loop waiting in epoll", "selectors.py"),
    ("gRPC aio core (Cython, under Handle._run)", "Handle._run (asyncio/events.py"),
    # uvloop runs the loop in C: below asyncio.Runner.run no Python frame separates its epoll wait
    # from gRPC's aio callbacks (Cython), so they are one category on uvloop
    ("uvloop in C (epoll wait and gRPC aio callbacks, not separable)", "asyncio/runners.py"),
    ("asyncio scheduling", "asyncio/"),
    ("metrics (prometheus_client)", "prometheus_client/"),
    ("logging", "logging/"),
    ("ONNX Runtime session.run", "onnxruntime"),
    ("numpy", "numpy/"),
    ("protobuf", "protobuf"),
    ("gRPC Python layer", "grpc/"),
    ("thread pool waiting for work", "concurrent/futures/thread.py"),
    ("threads waiting", "threading.py"),
)


def py_spy_path() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def profile_during(
    pid: int, seconds: float, thread_cpu: Callable[[], dict[int, float]], load: Callable[[], object]
) -> tuple[dict, object]:
    """Sample `pid` for `seconds` while `load()` runs; returns (summary, load's result)."""
    tool = py_spy_path()
    if tool is None:
        return {"available": False, "reason": "py-spy is not installed (pip install py-spy)"}, load()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stacks.txt"
        before = thread_cpu()
        spy = subprocess.Popen(
            [
                tool,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(int(seconds)),
                "--rate",
                "100",
                "--format",
                "raw",
                "--threads",
                "--nonblocking",
                "-o",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        result = load()
        _, errors = spy.communicate(timeout=seconds + 120)
        after = thread_cpu()
        if spy.returncode != 0 or not out.exists():
            return {"available": False, "reason": f"py-spy failed ({spy.returncode}): {errors.strip()[-500:]}"}, result
        cpu = {tid: round(after[tid] - before.get(tid, 0.0), 2) for tid in after}
        return summarise_stacks(out.read_text(), cpu), result


def summarise_stacks(text: str, thread_cpu_s: dict[int, float]) -> dict:
    """Per-thread samples and CPU, the event loop's time by category, and the hottest convserve functions."""
    threads: dict[str, dict] = {}
    categories: collections.Counter = collections.Counter()
    service_inclusive: collections.Counter = collections.Counter()
    main_total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        match = _THREAD.match(frames[0])
        tid, name = (match.group(1), match.group(2)) if match else ("?", frames[0])
        entry = threads.setdefault(name, {"thread": name, "tid": tid, "samples": 0})
        entry["samples"] += int(count)
        if name != "MainThread":
            continue
        main_total += int(count)
        categories[_category(frames[-1])] += int(count)
        for frame in {f for f in frames[1:] if "(service/" in f}:
            service_inclusive[frame] += int(count)
    for entry in threads.values():
        tid = (
            int(entry["tid"], 0)
            if entry["tid"].startswith("0x")
            else int(entry["tid"])
            if entry["tid"].isdigit()
            else -1
        )
        entry["cpu_s"] = thread_cpu_s.get(tid)
    unnamed = {
        tid: s for tid, s in thread_cpu_s.items() if all(str(tid) != e["tid"] for e in threads.values()) and s > 0
    }
    share = lambda n: round(100.0 * n / main_total, 1) if main_total else 0.0  # noqa: E731
    return {
        "available": True,
        "threads": sorted(threads.values(), key=lambda e: -e["samples"]),
        "native_threads_cpu_s": dict(sorted(unnamed.items(), key=lambda kv: -kv[1])),
        "event_loop_samples": main_total,
        "event_loop_by_category_pct": {k: share(v) for k, v in categories.most_common()},
        "convserve_functions_inclusive_pct": {k: share(v) for k, v in service_inclusive.most_common(15)},
    }


def _category(leaf: str) -> str:
    if "(service/" in leaf:
        return "convserve code: " + leaf.split("(service/", 1)[1].split(":", 1)[0]
    for name, pattern in _CATEGORIES:
        if pattern in leaf:
            return name
    return "other: " + leaf.split("(", 1)[-1].split(":", 1)[0]
