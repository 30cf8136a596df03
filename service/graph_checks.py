"""A model's config against its ONNX graph, checked at load: every disagreement names the field.

Why a module of its own: a config written for another graph must be refused when it loads, with
`<file>: <field>: <problem>` saying what to change, never loaded READY to fail every request (a
float16 config on a float32 graph) or to answer garbage (a detector output that cannot be the
configured layout). The static checks read the graph's signature (names, ONNX types, shapes with
None or a string for free axes); `warm_up_checked` adds what only a run shows: the answer
output's real shape, and the config fields behind a run ONNX Runtime refuses.
"""

from __future__ import annotations

from service.config import ModelConfig, SegmentationConfig
from service.detection_shapes import detection_problem, split_problem
from service.dtypes import config_of_onnx
from service.errors import ConfigError
from service.graph_shapes import fixed as _fixed
from service.graph_shapes import shown as _shown


def check_tensors(path: str, config: ModelConfig, signature, version: int) -> None:
    """Each configured input/output exists in the graph with the same dtype, rank and fixed sizes."""
    graph = {"inputs": signature.inputs, "outputs": signature.outputs}
    for kind in ("inputs", "outputs"):
        tensors = {name: (onnx_type, shape) for name, onnx_type, shape in graph[kind]}
        for index, spec in enumerate(getattr(config, kind)):
            field = f"{kind}[{index}]"
            if spec.name not in tensors:
                raise ConfigError(
                    path,
                    f"{field}.name",
                    f"'{spec.name}' is not a graph {kind[:-1]} of version {version} (graph has {sorted(tensors)})",
                )
            onnx_type, shape = tensors[spec.name]
            graph_dtype = config_of_onnx(onnx_type)
            if graph_dtype != spec.dtype:
                raise ConfigError(
                    path,
                    f"{field}.dtype",
                    f"'{spec.dtype}' but the graph's {kind[:-1]} '{spec.name}' is {graph_dtype or onnx_type}",
                )
            if len(spec.dims) != len(shape):
                raise ConfigError(
                    path,
                    f"{field}.dims",
                    f"{list(spec.dims)} has rank {len(spec.dims)}, the graph's "
                    f"shape {_shown(shape)} has rank {len(shape)}",
                )
            for axis, (want, have) in enumerate(zip(spec.dims[1:], shape[1:]), start=1):
                if _fixed(have) and want != have and want != -1:
                    raise ConfigError(
                        path,
                        f"{field}.dims",
                        f"{list(spec.dims)} disagree with the graph's shape {_shown(shape)} at axis {axis}",
                    )


def check_free_input_axes(path: str, config: ModelConfig, signature) -> None:
    """An input axis the config leaves free (-1) but the graph fixes would let requests of other
    sizes through to fail inside ONNX Runtime; the config must say the size."""
    shapes = {name: shape for name, _, shape in signature.inputs}
    for index, spec in enumerate(config.inputs):
        shape = shapes[spec.name]
        for axis, (want, have) in enumerate(zip(spec.dims[1:], shape[1:]), start=1):
            if want == -1 and _fixed(have):
                raise ConfigError(
                    path,
                    f"inputs[{index}].dims",
                    f"{list(spec.dims)} leave axis {axis} free but the graph's input '{spec.name}' fixes it at "
                    f"{have} (shape {_shown(shape)}): write {have}",
                )


def check_batch_axis(path: str, config: ModelConfig, signature) -> None:
    """A graph whose batch axis is fixed can only be served one image per run."""
    for name, _, shape in signature.inputs:
        batch = shape[0] if shape else None
        if not _fixed(batch):
            continue
        if batch != 1:
            index = next((i for i, s in enumerate(config.inputs) if s.name == name), 0)
            raise ConfigError(
                path,
                f"inputs[{index}].dims",
                f"the graph fixes the batch axis of input '{name}' at {batch}; "
                "the server runs batches of 1..max_batch_size: re-export "
                "with a dynamic batch axis",
            )
        if config.batching.max_batch_size > 1:
            raise ConfigError(
                path,
                "batching.max_batch_size",
                f"{config.batching.max_batch_size} but the graph fixes the batch axis of input '{name}' at 1: "
                "set batching.max_batch_size: 1, or re-export the model with a dynamic batch axis",
            )


def check_image_input(path: str, config: ModelConfig, signature) -> None:
    """Preprocessing's channels, size and stride against the image input's fixed axes."""
    pre = config.preprocessing
    if pre is None:
        return
    spec = config.inputs[0]
    shape = next(s for n, _, s in signature.inputs if n == spec.name)
    if len(shape) != 4:
        return  # check_tensors already compared the rank with inputs[0].dims, which must be NCHW
    if _fixed(shape[1]) and shape[1] != pre.channels:
        raise ConfigError(
            path,
            "preprocessing.color_order",
            f"'{pre.color_order}' gives {pre.channels} channels, the graph's input '{spec.name}' has {shape[1]}",
        )
    graph_hw = tuple(shape[2:])
    hw = pre.input_hw
    if hw is None and any(_fixed(a) for a in graph_hw):
        raise ConfigError(
            path,
            "preprocessing.resize",
            f"'native' keeps each image's size but the graph's input "
            f"'{spec.name}' is fixed at {_shown(graph_hw)}: use stretch, "
            "letterbox or center_crop with that size",
        )
    if hw is not None:
        for want, have in zip(hw, graph_hw):
            if _fixed(have) and want != have:
                padding = f" (with padding {pre.padding})" if pre.padding else ""
                raise ConfigError(
                    path,
                    "preprocessing.size",
                    f"gives {list(hw)}{padding} but the graph's input '{spec.name}' is fixed at {_shown(graph_hw)}",
                )
        if pre.stride > 1 and any(side % pre.stride for side in hw):
            raise ConfigError(
                path, "preprocessing.size", f"{list(hw)} is not a multiple of preprocessing.stride {pre.stride}"
            )


def segmentation_problem(classes: int | None, shape: tuple, one_channel: SegmentationConfig | None):
    """Why an output of `shape` cannot be the segmentation answer for `classes` labels, as
    (field, problem), or None: per-class scores [N, C, H, W] with C = labels, or, with
    `postprocessing.segmentation`, a one-channel map [N, 1, H, W] thresholded into two classes."""
    if len(shape) != 4:
        return "dims", f"segmentation needs per-class scores [N, C, H, W], the graph gives {_shown(shape)}"
    channels = shape[1]
    if not _fixed(channels):
        return None
    if channels == 1 and one_channel is None:
        wanted = f"{classes} labels" if classes else "a label map"
        return "labels" if classes else "dims", (
            f"{wanted} but the output has one channel [N, 1, H, W]: the label map is the argmax over channels, "
            "so every pixel would be class 0; set postprocessing.segmentation (activation, threshold) to threshold "
            "a one-channel map, or export one score channel per label (background included)"
        )
    if channels == 1 and classes not in (None, 2):
        return "labels", f"{classes} labels but a thresholded one-channel map has two classes (background, foreground)"
    if channels > 1 and one_channel is not None:
        return "postprocessing.segmentation", f"applies to one-channel maps, the output has {channels} channels"
    if channels > 1 and classes and channels != classes:
        return "labels", f"{classes} labels but the output has {channels} channels {_shown(shape)}"
    return None


def check_answer_shape(path: str, config: ModelConfig, labels: tuple[str, ...], shape: tuple) -> None:
    """The answer output (fixed axes of the graph, or a warm-up run's real shape) fits the task."""
    classes = len(labels) or None
    index = next(i for i, s in enumerate(config.outputs) if s.name == config.answer_output)
    detection = config.postprocessing.detection
    if config.task == "detection" and detection is not None:
        input_hw = config.preprocessing.input_hw if config.preprocessing is not None else None
        problem = detection_problem(detection, classes, shape, input_hw)
        if problem:
            raise ConfigError(path, "postprocessing.detection.layout", f"output '{config.answer_output}': {problem}")
    elif config.task == "segmentation":
        found = segmentation_problem(classes, shape, config.postprocessing.segmentation)
        if found:
            field = f"outputs[{index}].dims" if found[0] == "dims" else found[0]
            raise ConfigError(path, field, f"output '{config.answer_output}': {found[1]}")
    elif config.task == "classification" and classes and len(shape) >= 2:
        if _fixed(shape[-1]) and shape[-1] != classes:
            raise ConfigError(path, "labels", f"{classes} labels but the model has {shape[-1]} classes")


def check_graph(path: str, config: ModelConfig, labels: tuple[str, ...], signature, version: int) -> None:
    """Every check of this module, in the order an operator would fix them."""
    check_tensors(path, config, signature, version)
    check_batch_axis(path, config, signature)
    check_image_input(path, config, signature)
    check_free_input_axes(path, config, signature)
    graph_shape = next(s for n, _, s in signature.outputs if n == config.answer_output)
    configured = next(s.dims for s in config.outputs if s.name == config.answer_output)
    merged = tuple(g if _fixed(g) else (c if c > 0 else g) for g, c in zip(graph_shape, configured))
    check_answer_shape(path, config, labels, merged)
    detection = config.postprocessing.detection
    if config.task == "detection" and detection is not None and detection.layout == "decoded_split":
        found = split_problem(detection, {n: s for n, _, s in signature.outputs})
        if found:
            raise ConfigError(path, f"postprocessing.detection.{found[0]}", found[1])


def _warmup_fields(config: ModelConfig, batch_size: int) -> str:
    """The config fields that set the shapes a warm-up run used."""
    if batch_size > 1:
        preferred = batch_size in config.batching.preferred_batch_sizes and batch_size != config.batching.max_batch_size
        return "batching.preferred_batch_sizes" if preferred else "batching.max_batch_size"
    pre = config.preprocessing
    if pre is None:
        return "inputs[0].dims"
    return "preprocessing.size" if pre.input_hw is not None else "preprocessing.stride"


def warm_up_checked(path: str, runtime, labels: tuple[str, ...]) -> float:
    """Warm up at every batch size the runtime will see; seconds spent.

    A failing run is reported with the config fields that chose its shapes (ONNX Runtime's own
    "invalid dimensions" or "broadcast 7 by 8" names none), and the answer output's real shape at
    batch 1 is checked against the task, which catches axes the graph leaves free.
    """
    config, seconds = runtime.config, 0.0
    for batch_size in runtime.warmup_batch_sizes():
        try:
            spent, outputs = runtime.warm_up_run(batch_size)
        except Exception as exc:  # ONNX Runtime raises its own exception types
            shapes = {n: list(a.shape) for n, a in runtime.warmup_inputs(batch_size).items()}
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = (
                ""
                if batch_size > 1
                else "; a graph that downsamples and upsamples needs sizes divisible by its "
                "total stride (set preprocessing.size to such a multiple, or preprocessing.stride with resize "
                "native)"
            )
            raise ConfigError(
                path, _warmup_fields(config, batch_size), f"the warm-up run with inputs {shapes} failed: {detail}{hint}"
            ) from exc
        if batch_size == runtime.warmup_batch_sizes()[0]:
            check_answer_shape(path, config, labels, tuple(outputs[config.answer_output].shape))
        seconds += spent
    return seconds
