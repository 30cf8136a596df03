"""`convserve optimize --expose-features`: give a classifier nobody here trained the output CAM needs.

Class activation maps read a late convolutional feature map [N, K, h, w] (docs/cam.md). Models
exported by `export.cam_export` carry it as a second output; an ONNX classifier from elsewhere
does not, and adding it by hand is graph surgery. This module finds that tensor in the graph,
adds it as an output (through an Identity node named `features`; nothing else in the graph
changes), and writes the result as a new model beside the source with `postprocessing.cam` set:

- a global average pooling (GlobalAveragePool, or ReduceMean over both spatial axes) on the way to
  the answer output: its input is the feature map. When the pooling feeds the answer through one
  linear layer (Gemm, MatMul or a 1x1 Conv, plus an optional bias Add and reshapes), the method is
  `cam` and the classifier weights [C, K] come from that layer (the initializer itself, or an
  exact copy named `cam_class_weights` when the layer stores them transposed or scaled);
  otherwise `score_cam`;
- no such pooling: the output of the last convolution whose map still has a spatial extent
  (h * w > 1), followed through the element-wise layers right after it (its activation,
  BatchNorm, LeNet-5's scaled tanh), with method `score_cam` (forward passes only, any CNN).

A tensor named on the command line (`--expose-features TENSOR`) overrides the search; it must be a
4-D float tensor the answer output depends on. The new graph's answer is checked against the
source's on the same inputs (the parity gate of every exporter), then the version is written by
the one writer (export/writer.py) and loaded the way the server loads it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.exporter import ExportError, graph_opset
from export.optimize_version import check_serves, find_source, sample_inputs
from export.parity import ParityReport, cpu_session
from export.writer import VersionFiles, write_model_version
from service.config import CamConfig, TensorSpec

FEATURES_OUTPUT = "features"
ADDED_WEIGHTS = "cam_class_weights"
PARITY_TOLERANCE = 1e-5  # the graph is the source's plus one output: ONNX Runtime may pick other kernels
AUTO = "auto"

# Layers after a convolution that keep its map's layout and meaning (one tensor in, the rest constant).
ELEMENTWISE = frozenset(
    {
        "Relu",
        "LeakyRelu",
        "PRelu",
        "Elu",
        "Selu",
        "Celu",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Tanh",
        "Softplus",
        "Mish",
        "Gelu",
        "Clip",
        "Mul",
        "Add",
        "Sub",
        "Div",
        "BatchNormalization",
        "Identity",
    }
)
RESHAPES = frozenset({"Flatten", "Reshape", "Squeeze", "Identity"})


@dataclass(frozen=True)
class FeatureChoice:
    """The tensor to expose and how the server turns it into a map."""

    tensor: str
    channels: int
    spatial: tuple[int, int]  # (h, w); -1 where the graph leaves the axis free
    method: str  # "cam" | "score_cam"
    reason: str  # why this tensor, in words (printed and kept in the model card)
    weights: np.ndarray | None = None  # method cam: [C, K]
    weights_initializer: str | None = None  # an existing initializer holding exactly `weights`

    @property
    def dims(self) -> tuple[int, ...]:
        """The output's config dims: [-1 (batch), K, h, w]."""
        return (-1, self.channels, *self.spatial)


class _Graph:
    """Index of one shape-inferred graph: producers, consumers, constants and static shapes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        inferred = onnx.shape_inference.infer_shapes(model)
        graph = inferred.graph
        self.nodes = list(graph.node)
        self.initializers = {i.name: i for i in graph.initializer}
        self.constants = set(self.initializers) | {o for n in self.nodes if n.op_type == "Constant" for o in n.output}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.types = {}
        for info in (*graph.input, *graph.value_info, *graph.output):
            tensor = info.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
            self.types[info.name] = (tensor.elem_type, dims if tensor.HasField("shape") else None)
        self.outputs = [o.name for o in graph.output]

    def dims(self, name: str) -> tuple[int, ...] | None:
        return self.types.get(name, (None, None))[1]

    def ancestors(self, name: str) -> list[onnx.NodeProto]:
        """Nodes `name` depends on, in graph (topological) order."""
        wanted, stack = set(), [name]
        while stack:
            node = self.producer.get(stack.pop())
            if node is not None and id(node) not in wanted:
                wanted.add(id(node))
                stack.extend(i for i in node.input if i and i not in self.constants)
        return [n for n in self.nodes if id(n) in wanted]

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        consumers = self.consumers.get(name, [])
        return consumers[0] if len(consumers) == 1 and name not in self.outputs else None

    def constant_value(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(next(a.t for a in node.attribute if a.name == "value"))
        return None


def find_features(model: onnx.ModelProto, answer: str, requested: str = AUTO) -> FeatureChoice:
    """The feature map CAM should read in `model` (answer output `answer`); ExportError if none."""
    graph = _Graph(model)
    if answer not in graph.outputs:
        raise ExportError(f"the graph has no output '{answer}' (outputs: {', '.join(graph.outputs)})")
    upstream = graph.ancestors(answer)
    if requested != AUTO:
        return _requested(graph, upstream, answer, requested)
    pools = [n for n in upstream if _is_global_pool(graph, n)]
    if pools:
        pool = pools[-1]
        return _choice(graph, pool.input[0], f"input of the global pooling '{pool.name or pool.output[0]}'", pool)
    convs = [n for n in upstream if n.op_type == "Conv" and _has_extent(graph.dims(n.output[0]))]
    if not convs:
        raise ExportError(
            f"no convolution with a spatial output feeds '{answer}' and no global pooling either: "
            "name the feature map to expose (--expose-features TENSOR)"
        )
    tensor, after = convs[-1].output[0], []
    while (node := graph.only_consumer(tensor)) is not None and _elementwise_on(graph, node, tensor):
        tensor = node.output[0]
        after.append(node.op_type)
    conv = convs[-1].name or convs[-1].output[0]
    reason = f"output of the last convolution with a spatial map, '{conv}'" + (
        f", after {' + '.join(after)}" if after else ""
    )
    return _choice(graph, tensor, reason, None)


def _requested(graph: _Graph, upstream: list, answer: str, requested: str) -> FeatureChoice:
    produced = {o for n in upstream for o in n.output}
    if requested not in produced:
        candidates = [o for n in reversed(upstream) for o in n.output if len(graph.dims(o) or ()) == 4][:8]
        raise ExportError(
            f"'{requested}' is not a tensor that '{answer}' depends on; 4-D candidates, last first: "
            + (", ".join(candidates) or "none")
        )
    pool = next((n for n in graph.consumers.get(requested, []) if _is_global_pool(graph, n)), None)
    return _choice(graph, requested, "named on the command line", pool)


def _choice(graph: _Graph, tensor: str, reason: str, pool: onnx.NodeProto | None) -> FeatureChoice:
    elem, dims = graph.types.get(tensor, (None, None))
    if dims is None or len(dims) != 4:
        raise ExportError(f"'{tensor}' is not a 4-D [N, K, h, w] map (shape {list(dims) if dims else 'unknown'})")
    if elem != TensorProto.FLOAT:
        raise ExportError(f"'{tensor}' is {TensorProto.DataType.Name(elem or 0)}; CAM reads float32 feature maps")
    if dims[1] < 1:
        raise ExportError(f"'{tensor}' has no fixed channel count (shape {list(dims)})")
    spatial = (dims[2], dims[3])
    weights = _linear_head(graph, pool, dims[1]) if pool is not None else None
    if weights is None:
        return FeatureChoice(tensor, dims[1], spatial, "score_cam", reason)
    matrix, name = weights
    return FeatureChoice(tensor, dims[1], spatial, "cam", reason + ", then one linear layer", matrix, name)


def _has_extent(dims: tuple[int, ...] | None) -> bool:
    return dims is not None and len(dims) == 4 and (dims[2] * dims[3] > 1 or -1 in dims[2:])


def _is_global_pool(graph: _Graph, node: onnx.NodeProto) -> bool:
    if node.op_type == "GlobalAveragePool":
        return True
    if node.op_type != "ReduceMean":
        return False
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1:
        value = graph.constant_value(node.input[1])
        axes = None if value is None else [int(a) for a in np.ravel(value)]
    return axes is not None and {a % 4 for a in axes} == {2, 3}


def _elementwise_on(graph: _Graph, node: onnx.NodeProto, tensor: str) -> bool:
    """`node` maps `tensor` element-wise (its other inputs constant) to a map of the same shape."""
    others = [i for i in node.input if i and i != tensor]
    same = graph.dims(node.output[0]) == graph.dims(tensor)
    return node.op_type in ELEMENTWISE and all(i in graph.constants for i in others) and same


def _linear_head(graph: _Graph, pool: onnx.NodeProto, channels: int) -> tuple[np.ndarray, str | None] | None:
    """(weights [C, K], initializer name or None) when the pooling reaches an output through one
    linear layer (and reshapes, an optional bias); None otherwise."""
    tensor = pool.output[0]
    while (node := graph.only_consumer(tensor)) is not None and node.op_type in RESHAPES:
        tensor = node.output[0]
    node = graph.only_consumer(tensor)
    if node is None or len(node.input) < 2 or node.input[0] != tensor:
        return None
    value = graph.constant_value(node.input[1])
    if value is None:
        return None
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm" and value.ndim == 2:
        if attributes.get("transA", 0):
            return None
        weights = (value if attributes.get("transB", 0) else value.T) * attributes.get("alpha", 1.0)
        exact = attributes.get("transB", 0) and attributes.get("alpha", 1.0) == 1.0
    elif node.op_type == "MatMul" and value.ndim == 2:
        weights, exact = value.T, False
    elif node.op_type == "Conv" and value.ndim == 4 and value.shape[2:] == (1, 1):
        weights, exact = value.reshape(value.shape[:2]), False
    else:
        return None
    end = node.output[0]
    while (follower := graph.only_consumer(end)) is not None and (
        follower.op_type in RESHAPES
        or (follower.op_type == "Add" and all(i == end or i in graph.constants for i in follower.input))
    ):
        end = follower.output[0]
    if end not in graph.outputs or weights.shape[1] != channels:
        return None
    name = node.input[1] if exact and node.input[1] in graph.initializers else None
    return np.ascontiguousarray(weights, dtype=np.float32), name


def with_features(model: onnx.ModelProto, choice: FeatureChoice) -> tuple[onnx.ModelProto, str, str | None]:
    """A copy of `model` with `choice.tensor` as output `features` (and the CAM weights where they
    need a copy); returns (model, output name, weights initializer name or None)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    graph = exposed.graph
    taken = {o.name for o in graph.output} | {i.name for i in graph.input} | {o for n in graph.node for o in n.output}
    output = next(
        name for name in (FEATURES_OUTPUT, *(f"{FEATURES_OUTPUT}_{i}" for i in range(1, 100))) if name not in taken
    )
    graph.node.append(helper.make_node("Identity", [choice.tensor], [output], name=f"convserve_expose_{output}"))
    graph.output.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, [None, choice.channels, None, None]))
    shape = graph.output[-1].type.tensor_type.shape
    shape.dim[0].CopyFrom(graph.input[0].type.tensor_type.shape.dim[0])  # the batch axis, fixed or free
    for axis, size in zip((2, 3), choice.spatial):
        if size > 0:
            shape.dim[axis].dim_value = size
        else:
            shape.dim[axis].dim_param = f"{output}_{'hw'[axis - 2]}"
    weights_name = None
    if choice.method == "cam":
        weights_name = choice.weights_initializer
        if weights_name is None:
            weights_name = ADDED_WEIGHTS
            graph.initializer.append(numpy_helper.from_array(choice.weights, weights_name))
    return exposed, output, weights_name


@dataclass(frozen=True)
class ExposeRequest:
    repo: Path
    model: str
    source_version: int | None
    tensor: str = AUTO
    name: str | None = None  # the new model's name; default <model>_cam
    max_maps: int | None = None  # score_cam: maps per image (default CamConfig's)
    overwrite: bool = False

    @property
    def new_name(self) -> str:
        return self.name or f"{self.model}_cam"


def expose_features(request: ExposeRequest, samples: np.ndarray | None = None) -> tuple[Path, FeatureChoice]:
    """Write `<repo>/<new name>/<N>/` with the feature output; `samples` are inputs [n, C, H, W] for
    the parity check (default: the model's own data, or seeded noise). Returns the version
    directory and the choice made."""
    source, version = find_source(request.repo, request.model, request.source_version)
    config = source.config
    if config.task != "classification":
        raise ExportError(f"model '{request.model}' is a {config.task} model; class activation maps need a classifier")
    if config.postprocessing.cam is not None:
        raise ExportError(
            f"model '{request.model}' already has postprocessing.cam "
            f"(features output '{config.postprocessing.cam.features_output}')"
        )
    source_bytes = source.model_path(version).read_bytes()
    model = onnx.load_from_string(source_bytes)
    choice = find_features(model, config.answer_output, request.tensor)
    exposed, output, weights_name = with_features(model, choice)
    onnx_bytes = exposed.SerializeToString()
    if samples is None:
        samples = sample_inputs(request.model, config)
    parity = _parity(source_bytes, onnx_bytes, config, samples)
    cam = CamConfig(
        method=choice.method,
        features_output=output,
        weights_initializer=weights_name,
        **({"max_maps": request.max_maps} if request.max_maps else {}),
    )
    new_config = config.model_copy(
        update={
            "name": request.new_name,
            "outputs": (*config.outputs, TensorSpec(name=output, dims=choice.dims)),
            "postprocessing": config.postprocessing.model_copy(update={"cam": cam}),
            "default_version": None,
            "description": f"{request.model} version {version} with its feature map exposed for {choice.method}"
            + (f" ({config.description})" if config.description else ""),
        }
    )
    new_config = type(config).model_validate(new_config.model_dump())  # re-validated: outputs and cam agree
    files = VersionFiles(
        new_config,
        onnx_bytes,
        parity,
        _card(request, source.name, version, source_bytes, choice, output, parity),
        labels=source.labels or None,
        min_opset=graph_opset(model),
        dynamic_batch=config.batching.max_batch_size > 1,
    )
    version_dir = write_model_version(files, Path(request.repo), overwrite=request.overwrite)
    check_serves(version_dir.parent, int(version_dir.name))
    return version_dir, choice


def _parity(source_bytes: bytes, onnx_bytes: bytes, config, samples: np.ndarray) -> ParityReport:
    """Largest |source − exposed| of the answer output at batch 1 and at the sample count."""
    before, after = cpu_session(source_bytes), cpu_session(onnx_bytes)
    input_name, answer = config.inputs[0].name, config.answer_output
    diffs = {}
    for batch in sorted({1, min(len(samples), config.batching.max_batch_size)}):
        feed = {input_name: samples[:batch]}
        expected = before.run([answer], feed)[0]
        got = after.run([answer], feed)[0]
        diffs[batch] = float(np.max(np.abs(expected.astype(np.float64) - got)))
    return ParityReport(diffs, PARITY_TOLERANCE, seed=0, reference="the source graph")


def _card(request: ExposeRequest, source: str, version: int, source_bytes: bytes, choice, output, parity) -> dict:
    tensor = "" if request.tensor == AUTO else f" {request.tensor}"
    return {
        "derived_from": {"model": source, "version": version, "sha256": hashlib.sha256(source_bytes).hexdigest()},
        "features": {
            "output": output,
            "tensor": choice.tensor,
            "dims": list(choice.dims),
            "method": choice.method,
            "why": choice.reason,
        },
        "parity": {**parity.as_dict(), "compared": "answer output of this graph vs the source graph"},
        "reproduce": f"convserve optimize --repo {request.repo} --model {request.model} --version {version} "
        f"--expose-features{tensor} --name {request.new_name}",
    }
