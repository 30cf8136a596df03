"""Open Inference Protocol (KServe V2) parameter maps <-> plain Python values (pure, no server state)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from service.api.inference import grpc_service_pb2 as pb
from service.errors import InvalidArgument

Scalar = bool | int | float | str | bytes


def parameters_to_python(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Scalar]:
    """A V2 parameter map (InferParameter or ModelRepositoryParameter) as plain values.

    Keys come out sorted, so the result does not depend on protobuf map order.
    """
    values: dict[str, Scalar] = {}
    for key in sorted(parameters):
        choice = parameters[key].WhichOneof("parameter_choice")
        if choice is None:
            raise InvalidArgument(f"parameter '{key}' has no value")
        values[key] = getattr(parameters[key], choice)
    return values


def parameter_from_python(value: Scalar | np.generic) -> pb.InferParameter:
    """An InferParameter holding `value` (bool, int, float or str; numpy scalars too).

    Integers use int64_param, or uint64_param when they only fit unsigned.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        if -(2**63) <= value < 2**63:
            return pb.InferParameter(int64_param=value)
        if 0 <= value < 2**64:
            return pb.InferParameter(uint64_param=value)
        raise InvalidArgument(f"parameter value {value} does not fit in 64 bits")
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    if isinstance(value, str):
        return pb.InferParameter(string_param=value)
    raise InvalidArgument(f"parameter value of type {type(value).__name__} is not bool, int, float or str")
