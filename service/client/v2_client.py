"""A small client for the Open Inference Protocol (KServe V2) side of the server.

For users who want tensors in and tensors out without installing tritonclient; it shares the
vision client's channel policy (deadline, retries, request id, token, TLS). Tensors travel in
raw_input_contents, as tritonclient sends them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc
from service.client.connection import DEFAULT_MAX_MESSAGE_BYTES, Connection, RetryPolicy, TlsConfig
from service.servicers.v2_parameters import parameter_from_python
from service.servicers.v2_tensors import append_input, response_outputs


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]


@dataclass(frozen=True, eq=False)
class InferResult:
    model_name: str
    model_version: str
    request_id: str
    outputs: dict[str, np.ndarray]


class InferenceClient:
    def __init__(
        self,
        host: str,
        *,
        timeout: float | None = 10.0,
        retries: int = 3,
        backoff: tuple[float, float] = (0.1, 2.0),
        tls: TlsConfig | None = None,
        token: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        load_balancing: str | None = None,
    ):
        policy = RetryPolicy(retries, backoff[0], backoff[1])
        self.connection = Connection(
            host,
            timeout=timeout,
            policy=policy,
            tls=tls,
            token=token,
            max_message_bytes=max_message_bytes,
            load_balancing=load_balancing,
        )
        self._stub = pb_grpc.GRPCInferenceServiceStub(self.connection.channel)

    def __enter__(self) -> "InferenceClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.connection.close()

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, int] | None = None,
        version: str = "",
        *,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> InferResult:
        """Run `inputs` ({name: array with the batch axis}) through `model`.

        `outputs` maps output names to a classification top-k (0 = the raw tensor); None returns
        every output as a tensor. A numpy object array of bytes is sent as BYTES (e.g. encoded
        images, which the server preprocesses).
        """
        request = pb.ModelInferRequest(model_name=model, model_version=version)
        for name, array in inputs.items():
            append_input(request, name, np.asarray(array))
        for name, classes in (outputs or {}).items():
            output = request.outputs.add(name=name)
            if classes:
                output.parameters["classification"].CopyFrom(parameter_from_python(int(classes)))
        response, rid = self.connection.unary("ModelInfer", self._stub.ModelInfer, request, timeout, request_id)
        return InferResult(response.model_name, response.model_version, rid, response_outputs(response))

    def model_metadata(self, model: str, version: str = "", *, timeout: float | None = None) -> ModelMetadata:
        request = pb.ModelMetadataRequest(name=model, version=version)
        response, _ = self.connection.unary("ModelMetadata", self._stub.ModelMetadata, request, timeout)

        def tensors(items) -> tuple[TensorMetadata, ...]:
            return tuple(TensorMetadata(t.name, t.datatype, tuple(t.shape)) for t in items)

        return ModelMetadata(
            response.name,
            tuple(response.versions),
            response.platform,
            tensors(response.inputs),
            tensors(response.outputs),
        )

    def server_ready(self, *, timeout: float | None = None) -> bool:
        response, _ = self.connection.unary("ServerReady", self._stub.ServerReady, pb.ServerReadyRequest(), timeout)
        return response.ready

    def model_ready(self, model: str, version: str = "", *, timeout: float | None = None) -> bool:
        request = pb.ModelReadyRequest(name=model, version=version)
        response, _ = self.connection.unary("ModelReady", self._stub.ModelReady, request, timeout)
        return response.ready
