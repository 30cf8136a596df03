"""The one table of tensor element types: each type's name in model configs and numpy, its Open
Inference Protocol (V2) datatype and typed-contents field, its ONNX Runtime type string, and which
APIs accept it.

Everything that maps one of these names onto another (config validation, the V2 codec, V2 model
metadata and ModelConfig, the runtime's warm-up inputs, the vision API's tensors) reads it here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TensorType:
    name: str  # numpy's name, also the model config's `dtype`
    v2: str  # Open Inference Protocol datatype
    numpy: np.dtype  # little-endian, as on the wire
    onnx: str  # ONNX Runtime's type string
    in_config: bool  # a model config may declare it
    in_vision: bool  # a vision API Tensor may carry it
    v2_contents: str | None  # the V2 InferTensorContents field carrying it (None: raw contents only)


TYPES: tuple[TensorType, ...] = (
    TensorType("bool", "BOOL", np.dtype(np.bool_), "tensor(bool)", True, True, "bool_contents"),
    TensorType("uint8", "UINT8", np.dtype("<u1"), "tensor(uint8)", True, True, "uint_contents"),
    TensorType("uint16", "UINT16", np.dtype("<u2"), "tensor(uint16)", False, False, "uint_contents"),
    TensorType("uint32", "UINT32", np.dtype("<u4"), "tensor(uint32)", False, False, "uint_contents"),
    TensorType("uint64", "UINT64", np.dtype("<u8"), "tensor(uint64)", False, False, "uint64_contents"),
    TensorType("int8", "INT8", np.dtype("<i1"), "tensor(int8)", True, False, "int_contents"),
    TensorType("int16", "INT16", np.dtype("<i2"), "tensor(int16)", True, False, "int_contents"),
    TensorType("int32", "INT32", np.dtype("<i4"), "tensor(int32)", True, True, "int_contents"),
    TensorType("int64", "INT64", np.dtype("<i8"), "tensor(int64)", True, True, "int64_contents"),
    TensorType("float16", "FP16", np.dtype("<f2"), "tensor(float16)", True, True, None),
    TensorType("float32", "FP32", np.dtype("<f4"), "tensor(float)", True, True, "fp32_contents"),
    TensorType("float64", "FP64", np.dtype("<f8"), "tensor(double)", True, True, "fp64_contents"),
    TensorType("bytes", "BYTES", np.dtype(object), "tensor(string)", True, False, "bytes_contents"),
)
_BY_NAME = {t.name: t for t in TYPES}

CONFIG_DTYPES: tuple[str, ...] = tuple(t.name for t in TYPES if t.in_config)
VISION_DTYPES: tuple[str, ...] = tuple(t.name for t in TYPES if t.in_vision)
NUMPY_OF_V2: dict[str, np.dtype] = {t.v2: t.numpy for t in TYPES}
V2_CONTENTS: dict[str, str] = {t.v2: t.v2_contents for t in TYPES if t.v2_contents}
# ONNX Runtime type -> numpy, for the fixed-size types (a string input has no zero-filled warm-up value).
NUMPY_OF_ONNX: dict[str, np.dtype] = {t.onnx: t.numpy for t in TYPES if t.name != "bytes"}


def numpy_of_config(name: str) -> np.dtype:
    """The numpy dtype of a config `dtype` (already validated against CONFIG_DTYPES at load)."""
    return _BY_NAME[name].numpy


def v2_of_config(name: str) -> str:
    """The V2 datatype of a config `dtype`."""
    return _BY_NAME[name].v2


def config_of_onnx(onnx_type: str) -> str | None:
    """The config `dtype` name of an ONNX Runtime type string ("tensor(float)" -> "float32"); None if unknown."""
    return next((t.name for t in TYPES if t.onnx == onnx_type), None)


def v2_of_numpy(dtype: np.dtype) -> str:
    """The V2 datatype of a numpy dtype for messages; numpy's own name when V2 has none."""
    known = _BY_NAME.get(np.dtype(dtype).name)
    return known.v2 if known else np.dtype(dtype).name


def aligned(array: np.ndarray) -> np.ndarray:
    """`array`, or an aligned copy of it when its elements are not aligned to their size.

    Why: contents left inside the received message (service/servicers/infer_wire.py) or at a
    client's shared-memory offset can start at any byte, and ONNX Runtime's kernels give other last
    digits on unaligned elements. The copy is made only for inputs that passed the model's checks
    (service/pipelines/infer.py), so a request refused for its shape costs no copy of its tensor.
    """
    return array if array.flags.aligned else array.copy()
