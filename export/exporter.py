"""PyTorch → ONNX: export a model with a dynamic batch axis and verify the graph.

We use torch's TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`): the
torch.export-based exporter, torch's default since 2.9, needs the `onnxscript` package, which the
export extra does not install, and the TorchScript exporter covers every architecture in the zoo.
Its deprecation warning is silenced here, inside the export call only.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import onnx
import torch
from torch import nn

from export.adaptive_pool import exportable_adaptive_pools

OPSET = 17
INPUT_NAME = "input"
BATCH_AXIS = "batch"


class ExportError(RuntimeError):
    """The model could not be exported, or the exported graph is not what the server needs."""


@dataclass(frozen=True)
class OnnxGraph:
    """A serialized ONNX model plus the facts the config and model card need.

    `input_shape` and each of `output_shapes` exclude the (dynamic) batch axis.
    """

    onnx_bytes: bytes
    opset: int
    input_name: str
    input_shape: tuple[int, ...]
    output_names: tuple[str, ...]
    output_shapes: tuple[tuple[int, ...], ...]
    matmul_pools: tuple[str, ...]  # adaptive pools exported as matrix products (see adaptive_pool.py)


def example_input(input_shape: tuple[int, ...], batch: int, seed: int) -> torch.Tensor:
    """Seeded standard-normal input [batch, *input_shape] with no exact zeros.

    Zeros would hide errors that only scale values (a wrong weight times 0 is still 0).
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *input_shape, generator=generator)
    return torch.where(x == 0, torch.full_like(x, 0.5), x)


def _as_tuple(outputs) -> tuple[torch.Tensor, ...]:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def probe_output_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Per-sample output shapes of the eval-mode model; a clear error if the input size cannot work."""
    model.eval()
    try:
        with torch.no_grad():
            outputs = _as_tuple(model(example_input(input_shape, 1, seed=0)))
    except RuntimeError as exc:
        raise ExportError(f"{type(model).__name__} does not accept input {list(input_shape)}: {exc}") from None
    return tuple(tuple(o.shape[1:]) for o in outputs)


def export_onnx(
    model: nn.Module, input_shape: tuple[int, ...], output_names: tuple[str, ...] = ("logits",), opset: int = OPSET
) -> OnnxGraph:
    """Export the eval-mode `model` for inputs [batch, *input_shape]; the batch axis is dynamic."""
    output_shapes = probe_output_shapes(model, input_shape)
    if len(output_shapes) != len(output_names):
        raise ExportError(f"model returns {len(output_shapes)} outputs but {len(output_names)} names were given")
    # Trace with batch 2 so that nothing specific to batch 1 (a squeeze, a broadcast) is baked in.
    example = example_input(input_shape, 2, seed=0)
    dynamic_axes = {name: {0: BATCH_AXIS} for name in (INPUT_NAME, *output_names)}
    buffer = io.BytesIO()
    with exportable_adaptive_pools(model, example) as swapped, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        try:
            torch.onnx.export(
                model,
                (example,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        except Exception as exc:  # the exporter raises many unrelated types; report them all alike
            raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {exc}") from exc
    return OnnxGraph(
        onnx_bytes=buffer.getvalue(),
        opset=opset,
        input_name=INPUT_NAME,
        input_shape=tuple(input_shape),
        output_names=tuple(output_names),
        output_shapes=output_shapes,
        matmul_pools=tuple(swapped),
    )


def _batch_axis_is_dynamic(value_info: onnx.ValueInfoProto) -> bool:
    dims = value_info.type.tensor_type.shape.dim
    return bool(dims) and dims[0].dim_param != "" and not dims[0].HasField("dim_value")


def graph_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset the graph declares (0 when it declares none)."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def verify_onnx(onnx_bytes: bytes, min_opset: int = OPSET, dynamic_batch: bool = True) -> onnx.ModelProto:
    """Full ONNX checker (with shape inference), opset ≥ `min_opset`, dynamic batch on every
    graph input and output (unless `dynamic_batch` is False: a graph from elsewhere whose batch
    axis is fixed, served with max_batch_size 1). Returns the parsed model."""
    try:
        # Checking the serialized bytes lets the C++ checker parse them itself: ~3× faster than
        # handing it a ModelProto for VGG-16's 550 MB, which it would re-serialize first.
        onnx.checker.check_model(onnx_bytes, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"exported graph fails onnx.checker: {exc}") from None
    model = onnx.load_from_string(onnx_bytes)
    opset = graph_opset(model)
    if opset < min_opset:
        raise ExportError(f"exported graph has opset {opset}; at least {min_opset} is required")
    static = [v.name for v in (*model.graph.input, *model.graph.output) if not _batch_axis_is_dynamic(v)]
    if static and dynamic_batch:
        raise ExportError(f"batch axis is not dynamic for: {', '.join(static)}")
    return model


def with_metadata(onnx_bytes: bytes, properties: dict[str, str]) -> bytes:
    """Return the model with `properties` set in metadata_props (existing keys replaced)."""
    model = onnx.load_from_string(onnx_bytes)
    kept = [p for p in model.metadata_props if p.key not in properties]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in properties.items():
        model.metadata_props.add(key=key, value=str(value))
    return model.SerializeToString()
