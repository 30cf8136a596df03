"""Learn a model's inputs from the server, then build and serialise the requests once.

Why discovery: the tool must work against any Open Inference Protocol server (convserve, Triton,
others), so tensor shapes and datatypes come from ModelMetadata, and whether the first axis is a
batch axis comes from ModelConfig (Triton's `max_batch_size > 0`); servers without ModelConfig
fall back to "a leading -1 is the batch axis". Requests are serialised up front: the hot loop only
hands bytes to gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from service.api.convserve.v1 import vision_pb2 as vpb
from service.api.inference import grpc_service_pb2 as pb

V2_PREFIX = "/inference.GRPCInferenceService/"
VISION_PREFIX = "/convserve.v1.VisionService/"
_NUMPY = {
    "FP32": np.float32,
    "FP16": np.float16,
    "FP64": np.float64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "BOOL": np.bool_,
}


class SetupError(Exception):
    """The load test cannot start: the message says what to change."""


@dataclass(frozen=True)
class TensorDesc:
    name: str
    datatype: str
    shape: tuple[int, ...]  # as the server reports it, -1 for free axes


@dataclass(frozen=True)
class ModelDescription:
    """What a V2 server says about a model, enough to build requests."""

    name: str
    version: str
    inputs: tuple[TensorDesc, ...]
    outputs: tuple[TensorDesc, ...]
    batched: bool  # the first axis of every input is the batch axis
    task: str  # from convserve's ModelConfig parameters; "" when the server does not say


@dataclass(frozen=True)
class PayloadSpec:
    api: str = "v2"  # v2 | vision
    payload: str = "tensor"  # tensor | jpeg
    batch: int = 1  # images (batch items) per request
    distinct: int = 4  # different request messages, sent in turn
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()  # per-input non-batch dims for free axes
    images: tuple[Path, ...] = ()  # JPEG/PNG files for jpeg payloads (default: synthetic images)
    image_hw: tuple[int, int] | None = None  # synthetic image size (default: the model's input size)
    vision_method: str = ""  # Classify | Detect ("" : from the model's task)
    streaming: bool = False  # V2 only: over ModelStreamInfer instead of one ModelInfer call each
    seed: int = 0


@dataclass(frozen=True)
class Payloads:
    """Serialised requests for one gRPC method, cycled through by the senders."""

    method: str
    requests: tuple[bytes, ...]
    images_per_request: int
    description: str
    streaming: bool = False  # `method` is a bidirectional stream (ModelStreamInfer)


async def describe_model(
    channel: grpc.aio.Channel, model: str, version: str = "", metadata=None, timeout: float = 10.0
) -> ModelDescription:
    """ModelMetadata (required) and ModelConfig (optional) of `model` over the V2 API."""
    ask = channel.unary_unary(
        V2_PREFIX + "ModelMetadata",
        request_serializer=pb.ModelMetadataRequest.SerializeToString,
        response_deserializer=pb.ModelMetadataResponse.FromString,
    )
    try:
        meta = await ask(pb.ModelMetadataRequest(name=model, version=version), timeout=timeout, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        raise SetupError(f"ModelMetadata for '{model}' failed: {exc.code().name}: {exc.details()}") from None
    batched, task = None, ""
    ask_config = channel.unary_unary(
        V2_PREFIX + "ModelConfig",
        request_serializer=pb.ModelConfigRequest.SerializeToString,
        response_deserializer=pb.ModelConfigResponse.FromString,
    )
    try:
        config = (
            await ask_config(pb.ModelConfigRequest(name=model, version=version), timeout=timeout, metadata=metadata)
        ).config
        batched = config.max_batch_size > 0
        if "task" in config.parameters:
            task = config.parameters["task"].string_value
    except grpc.aio.AioRpcError:
        pass  # not every V2 server implements ModelConfig
    inputs = tuple(TensorDesc(t.name, t.datatype, tuple(t.shape)) for t in meta.inputs)
    outputs = tuple(TensorDesc(t.name, t.datatype, tuple(t.shape)) for t in meta.outputs)
    if not inputs:
        raise SetupError(f"model '{model}' reports no inputs")
    if batched is None:
        batched = all(t.shape[:1] == (-1,) for t in inputs)
    return ModelDescription(meta.name or model, version, inputs, outputs, batched, task)


def build_payloads(model: ModelDescription, spec: PayloadSpec) -> Payloads:
    """Every request the run will send, serialised; `distinct` of them with different data."""
    if spec.batch < 1 or spec.distinct < 1:
        raise SetupError("--batch and --distinct must be >= 1")
    if spec.batch > 1 and not model.batched:
        raise SetupError(f"model '{model.name}' has no batch axis; use --batch 1")
    if spec.streaming and spec.api != "v2":
        raise SetupError("--streaming needs --api v2 (the V2 protocol's ModelStreamInfer)")
    rng = np.random.default_rng(spec.seed)
    if spec.api == "vision":
        method = spec.vision_method or ("Detect" if model.task == "detection" else "Classify")
        requests = tuple(_vision_request(model, spec, method, rng, i).SerializeToString() for i in range(spec.distinct))
        return Payloads(VISION_PREFIX + method, requests, spec.batch, f"vision {method}, {spec.payload} x{spec.batch}")
    if spec.api != "v2":
        raise SetupError(f"unknown api {spec.api!r} (v2 or vision)")
    requests = tuple(_v2_request(model, spec, rng, i).SerializeToString() for i in range(spec.distinct))
    method = "ModelStreamInfer" if spec.streaming else "ModelInfer"  # the stream carries the same ModelInferRequest
    return Payloads(
        V2_PREFIX + method, requests, spec.batch, f"V2 {method}, {spec.payload} x{spec.batch}", spec.streaming
    )


def input_shape(model: ModelDescription, tensor: TensorDesc, spec: PayloadSpec) -> tuple[int, ...]:
    """The request shape of one input: batch axis = --batch, free axes from --shape."""
    dims = tensor.shape[1:] if model.batched else tensor.shape
    override = dict(spec.shapes).get(tensor.name)
    if override is not None:
        if len(override) != len(dims):
            raise SetupError(
                f"--shape {tensor.name}: gave {len(override)} dims, the input has {len(dims)} (without the batch axis)"
            )
        dims = override
    if any(d < 0 for d in dims):
        raise SetupError(
            f"input '{tensor.name}' has free dims {list(tensor.shape)}; give them with --shape {tensor.name}:D1,D2,..."
        )
    return ((spec.batch,) if model.batched else ()) + tuple(dims)


def random_tensor(datatype: str, shape: tuple[int, ...], rng: np.random.Generator, what: str) -> np.ndarray:
    """Seeded data of the right dtype: N(0,1) floats, small non-negative integers, random booleans."""
    dtype = _NUMPY.get(datatype)
    if dtype is None:
        raise SetupError(
            f"{what}: cannot make random {datatype} data for a tensor payload (use --payload jpeg for image inputs)"
        )
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype is np.bool_:
        return rng.random(shape) < 0.5
    high = 256 if dtype is np.uint8 else 10
    return rng.integers(0, high, shape).astype(dtype)


def _v2_request(
    model: ModelDescription, spec: PayloadSpec, rng: np.random.Generator, index: int
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model.name, model_version=model.version)
    if spec.payload == "jpeg":
        encoded = _jpeg_batch(model, spec, rng, index)
        request.inputs.add(name=model.inputs[0].name, datatype="BYTES", shape=[len(encoded)])
        request.raw_input_contents.append(b"".join(len(item).to_bytes(4, "little") + item for item in encoded))
        return request
    if spec.payload != "tensor":
        raise SetupError(f"unknown payload {spec.payload!r} (tensor or jpeg)")
    for desc in model.inputs:
        shape = input_shape(model, desc, spec)
        array = random_tensor(desc.datatype, shape, rng, f"input '{desc.name}'")
        request.inputs.add(name=desc.name, datatype=desc.datatype, shape=list(shape))
        request.raw_input_contents.append(
            np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        )
    return request


def _vision_request(model: ModelDescription, spec: PayloadSpec, method: str, rng: np.random.Generator, index: int):
    ref = vpb.ModelRef(name=model.name, version=model.version)
    if spec.payload == "jpeg":
        images = [vpb.Image(encoded=data) for data in _jpeg_batch(model, spec, rng, index)]
    elif spec.payload == "tensor":
        desc = model.inputs[0]
        chw = input_shape(model, desc, PayloadSpec(shapes=spec.shapes, batch=1))[1 if model.batched else 0 :]
        images = []
        for _ in range(spec.batch):
            array = random_tensor(desc.datatype, chw, rng, f"input '{desc.name}'")
            images.append(vpb.Image(tensor=vpb.Tensor(shape=list(chw), dtype=array.dtype.name, data=array.tobytes())))
    else:
        raise SetupError(f"unknown payload {spec.payload!r} (tensor or jpeg)")
    if method == "Classify":
        return vpb.ClassifyRequest(model=ref, images=images, top_k=1)
    if method == "Detect":
        return vpb.DetectRequest(model=ref, images=images)
    raise SetupError(f"--vision-method must be Classify or Detect, got {method!r}")


def _jpeg_batch(model: ModelDescription, spec: PayloadSpec, rng: np.random.Generator, index: int) -> list[bytes]:
    import cv2

    if spec.images:
        files = [spec.images[(index * spec.batch + i) % len(spec.images)] for i in range(spec.batch)]
        return [Path(f).read_bytes() for f in files]
    shape = model.inputs[0].shape
    gray = len(shape) == 4 and shape[1] == 1
    hw = spec.image_hw or (tuple(shape[2:4]) if len(shape) == 4 and min(shape[2:4]) > 0 else (224, 224))
    encoded = []
    for _ in range(spec.batch):
        ok, data = cv2.imencode(".jpg", synthetic_image(hw, gray, rng), [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise SetupError("OpenCV could not encode the synthetic JPEG")
        encoded.append(data.tobytes())
    return encoded


def synthetic_image(hw: tuple[int, int], gray: bool, rng: np.random.Generator) -> np.ndarray:
    """A photo-like test image [H, W] or [H, W, 3] uint8: smooth gradients, blobs and mild noise.

    Why not noise alone: JPEG sizes and decode times of pure noise are far from a camera frame's.
    """
    h, w = hw
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    channels = []
    for _ in range(1 if gray else 3):
        fy, fx, phase = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 2 * np.pi)
        base = 0.5 + 0.35 * np.sin(2 * np.pi * (fy * y / h + fx * x / w) + phase)
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.1, 0.3) * max(h, w)
        base += 0.3 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
        channels.append(base + rng.normal(0, 0.03, (h, w)))
    image = np.clip(np.stack(channels, axis=-1) * 255, 0, 255).astype(np.uint8)
    return image[..., 0] if gray else image
