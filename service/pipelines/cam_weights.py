"""Where a model's class activation maps come from: its `postprocessing.cam` config and, for
method "cam", the classifier weights W [C, K] read once from the ONNX initializer it names."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from service.config import CamConfig
from service.errors import FailedPrecondition
from service.models import LoadedVersion


def cam_config(model: LoadedVersion) -> CamConfig:
    """The model's CAM source, or FAILED_PRECONDITION saying what the config lacks."""
    cam = model.config.postprocessing.cam
    if cam is None or cam.features_output is None:
        raise FailedPrecondition(
            f"model '{model.name}' has no class activation maps: its config needs postprocessing.cam with a "
            "features_output (see docs/cam.md)"
        )
    if cam.method == "cam" and cam.weights_initializer is None:
        raise FailedPrecondition(f"model '{model.name}': postprocessing.cam method 'cam' needs weights_initializer")
    return cam


@lru_cache(maxsize=16)
def _weights_from_file(path: str, name: str, _mtime_ns: int, _size: int) -> np.ndarray:
    model = onnx.load(path)  # external data, if any, is read from beside the file
    for initializer in model.graph.initializer:
        if initializer.name == name:
            return np.ascontiguousarray(numpy_helper.to_array(initializer), dtype=np.float32)
    raise FailedPrecondition(f"{path}: no initializer named '{name}' (postprocessing.cam.weights_initializer)")


def read_class_weights(path: str | Path, name: str) -> np.ndarray:
    """The classifier weights [C, K] stored as initializer `name` in an ONNX file.

    Cached per (file, modification time, size): read once per model version, re-read if replaced.
    """
    stat = Path(path).stat()
    return _weights_from_file(str(path), name, stat.st_mtime_ns, stat.st_size)


def checked_weights(model: LoadedVersion, cam: CamConfig, num_classes: int, channels: int) -> np.ndarray:
    """The model's weights [C, K], FAILED_PRECONDITION unless they match its classes and feature maps."""
    weights = read_class_weights(model.source.model_path(model.version), cam.weights_initializer)
    if weights.shape != (num_classes, channels):
        raise FailedPrecondition(
            f"model '{model.name}': initializer '{cam.weights_initializer}' has shape {list(weights.shape)}, "
            f"CAM needs [classes, feature maps] = [{num_classes}, {channels}]"
        )
    return weights
