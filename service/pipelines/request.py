"""Plain request types that servicers build from protobuf and every pipeline stage reads."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from service.preprocess import ResizeInfo


@dataclass(frozen=True)
class ModelRef:
    """A model as a request names it; version "" or None means the serving (latest) version."""

    name: str
    version: str | int | None = None


@dataclass(frozen=True)
class ImageInput:
    """One image of a request: encoded bytes (server-side preprocessing) or a ready CHW tensor."""

    encoded: bytes | None = None
    tensor: np.ndarray | None = None


@dataclass
class RequestContext:
    """Per-request facts that every stage reads or adds to (deadline, id, stage timings)."""

    method: str
    deadline: float | None = None  # absolute time.monotonic() seconds
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    model: str = ""
    version: str = ""
    images: int = 0
    holds_originals: bool = False  # has its reservation of the server's --max-decoded-bytes (service/inflight.py)
    stages: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def add_stage(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds


@dataclass(frozen=True)
class PreparedImage:
    """A model-ready tensor [C, H, W], how it was resized, and (when asked) the decoded original pixels."""

    tensor: np.ndarray
    info: ResizeInfo
    original: np.ndarray | None
