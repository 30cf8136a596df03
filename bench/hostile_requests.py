"""Hostile requests, crafted bytes and a background monitor: tests/integration/test_hostile.py
and the hostile phase of `python -m bench.soak`.

Each request is what an attacker sent against a clean checkout (docs/security.md lists the
limits that now answer it); each builder returns plain protobuf messages, so any client can send them.
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np

from service.api.convserve.v1 import vision_pb2 as vpb
from service.api.inference import grpc_service_pb2 as pb
from service.servicers.v2_tensors import append_input


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming width x height, and a scrap of data: nothing decodable."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 64


def _sof(width: int, height: int) -> bytes:
    components = b"".join(bytes([index, 0x11, 0]) for index in (1, 2, 3))
    return b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + components


def lying_jpeg(real: int = 30000, fake: int = 10) -> bytes:
    """A ~340-byte JPEG whose real frame (SOF, real x real) hides behind a stuffed FF 00 pair.

    A reader that takes FF 00 for a marker with a length skips the real SOF and finds the fake
    (fake x fake) one; libjpeg discards FF 00 and reads the real frame.
    """
    real_sof = _sof(real, real)
    hidden = b"\xff\x00" + struct.pack(">H", 2 + len(real_sof)) + real_sof
    sos = b"\xff\xda" + struct.pack(">HB", 12, 3) + b"\x01\x00\x02\x11\x03\x11" + b"\x00\x3f\x00"
    body = b"\xff\xd8" + hidden + _sof(fake, fake) + sos + b"\x00" * 256
    return body + b"\xff\xd9"


def lying_tiff(real: int = 30000, fake: int = 10) -> bytes:
    """A little-endian TIFF with ImageWidth/ImageLength each given twice: first as SLONG real, then
    as SHORT fake. libtiff takes the first; a reader that skips SLONG took the second."""
    entries = [
        (256, 9, 1, real),
        (256, 3, 1, fake),
        (257, 9, 1, real),
        (257, 3, 1, fake),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8 + 2 + 12 * 11 + 4),
        (277, 3, 1, 1),
        (278, 4, 1, real),
        (279, 4, 1, 64),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        fmt = {3: "<Hxx", 4: "<I", 9: "<i"}[kind]
        packed = struct.pack(fmt, value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\x00" * 64


def billion_laughs_yaml() -> str:
    """The classic alias bomb (under 1 KB), as a model config.yaml."""
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for previous, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    return "\n".join(["name: laughs", "task: classification", *lines, "description: *i", ""])


def encoded_png(width: int, height: int) -> bytes:
    """A real, decodable PNG of width x height (flat grey: a few KB for many megapixels)."""
    return cv2.imencode(".png", np.full((height, width, 3), 127, np.uint8))[1].tobytes()


def v2_tensor(model: str, shape: tuple[int, ...], name: str = "input") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    append_input(request, name, np.zeros(shape, np.float32))
    return request


def oversized_tensor(model: str, width: int = 1_850_000) -> pb.ModelInferRequest:
    """A [1, 1, 8, width] FP32 tensor, 59 MB at the default width (inside --max-message-bytes), of a
    shape no bundled model takes: refused as soon as it is read, so what it costs is the reading."""
    return v2_tensor(model, (1, 1, 8, width))


def empty_bytes_elements(model: str, count: int = 16_000_000) -> pb.ModelInferRequest:
    """A BYTES input of `count` empty elements (4 zero bytes each): 61 MiB for 16 million."""
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="BYTES", shape=[count])
    request.raw_input_contents.append(bytes(4 * count))
    return request


def segment(model: str, encoded: bytes) -> vpb.SegmentRequest:
    return vpb.SegmentRequest(model=vpb.ModelRef(name=model), images=[vpb.Image(encoded=encoded)])


def classify(model: str, encoded: bytes) -> vpb.ClassifyRequest:
    return vpb.ClassifyRequest(model=vpb.ModelRef(name=model), images=[vpb.Image(encoded=encoded)])


def detect_with_class_filter(model: str, encoded: bytes, entries: int = 1_000_000) -> vpb.DetectRequest:
    params = vpb.DetectParams()
    params.class_filter.extend([0] * entries)
    return vpb.DetectRequest(model=vpb.ModelRef(name=model), images=[vpb.Image(encoded=encoded)], params=params)


# Run as `python -c MONITOR <address> <server pid> <interval s>`: until its stdin closes, alternately
# a health check and a good ModelInfer on model "tiny", each timed (and kept with its wall-clock
# time in "timeline"), and the server's VmRSS from /proc sampled; then one JSON line on stdout.
# A separate process, so the clients' own work in the
# test process (building 64 MB messages) does not hold this client's GIL and skew its latencies.
MONITOR = r"""
import json, sys, threading, time
import grpc, numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service.api.inference import grpc_service_pb2 as pb, grpc_service_pb2_grpc as pb_grpc
from service.servicers.v2_tensors import append_input

address, pid, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()

def rss_mib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0

request = pb.ModelInferRequest(model_name="tiny")
append_input(request, "input", np.zeros((1, 1, 8, 8), np.float32))
out = {"health_ms": [], "infer_ms": [], "failures": [], "rss_mib": [], "timeline": []}
with grpc.insecure_channel(address) as channel:
    health, v2 = health_pb2_grpc.HealthStub(channel), pb_grpc.GRPCInferenceServiceStub(channel)
    while not stop.is_set():
        for key, call in (("health_ms", lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5)),
                          ("infer_ms", lambda: v2.ModelInfer(request, timeout=5))):
            started = time.perf_counter()
            try:
                call()
            except grpc.RpcError as exc:
                out["failures"].append(f"{key}: {exc.code().name}: {exc.details()}")
            out[key].append((time.perf_counter() - started) * 1000)
            out["timeline"].append((key, time.time(), out[key][-1]))
        out["rss_mib"].append(rss_mib())
        time.sleep(interval)
print(json.dumps(out))
"""


def plain_huge_jpeg(side: int = 30000) -> bytes:
    """A well-formed JPEG header (SOI, SOF, SOS) claiming side x side, and almost no data."""
    sos = b"\xff\xda" + struct.pack(">HB", 12, 3) + b"\x01\x00\x02\x11\x03\x11" + b"\x00\x3f\x00"
    return b"\xff\xd8" + _sof(side, side) + sos + b"\x00" * 256 + b"\xff\xd9"
