"""The one tensor type table (service/dtypes.py) agrees with every protocol that reads it."""

from __future__ import annotations

import numpy as np
import pytest

from service import dtypes
from service.api.inference import model_config_pb2 as mc
from service.config import TensorSpec
from service.servicers.v2_model_info import config_type
from service.servicers.v2_tensors import numpy_dtype, v2_datatype


@pytest.mark.parametrize("name", dtypes.CONFIG_DTYPES)
def test_every_config_dtype_has_a_v2_datatype_and_a_triton_config_type(name):
    v2 = dtypes.v2_of_config(name)
    assert numpy_dtype(v2) == dtypes.numpy_of_config(name)
    expected = mc.TYPE_STRING if name == "bytes" else getattr(mc, f"TYPE_{v2}")
    assert config_type(name) == expected
    assert TensorSpec(name="x", dtype=name, dims=(-1, 3)).dtype == name


@pytest.mark.parametrize("kind", [t for t in dtypes.TYPES if t.name != "bytes"], ids=lambda t: t.name)
def test_fixed_size_types_round_trip_between_numpy_v2_and_onnx(kind):
    assert v2_datatype(kind.numpy) == kind.v2
    assert dtypes.NUMPY_OF_ONNX[kind.onnx] == kind.numpy
    assert dtypes.v2_of_numpy(np.dtype(kind.name)) == kind.v2


def test_vision_tensors_and_configs_take_what_they_took_before():
    assert set(dtypes.VISION_DTYPES) == {"float32", "float16", "float64", "uint8", "int32", "int64", "bool"}
    assert set(dtypes.CONFIG_DTYPES) == {
        "float32",
        "float16",
        "float64",
        "int8",
        "uint8",
        "int16",
        "int32",
        "int64",
        "bool",
        "bytes",
    }
    assert dtypes.v2_of_numpy(np.dtype(np.complex64)) == "complex64"  # named as numpy does when V2 has no name
