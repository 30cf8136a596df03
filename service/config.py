"""Per-model configuration: the schema of `model_repo/<model>/config.yaml`, validated at load.

Every field is documented in docs/model-config.md. Unknown fields are errors (a typo must not be
silently ignored), values are frozen after load, and every problem is reported as a `ConfigError`
naming the file and the dotted field path.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from service.config_postprocessing import (  # noqa: F401 - re-exported: importers use service.config
    DECODED_LAYOUTS,
    CamConfig,
    DetectionConfig,
    PostprocessingConfig,
    SegmentationConfig,
    _Frozen,
)
from service.dtypes import CONFIG_DTYPES
from service.errors import ConfigError

DTYPES = CONFIG_DTYPES


class TensorSpec(_Frozen):
    """One graph input or output. `dims` includes the batch axis as -1; other -1 are free axes."""

    name: str = Field(min_length=1)
    dtype: Literal[DTYPES] = "float32"  # type: ignore[valid-type]
    dims: tuple[int, ...]

    @field_validator("dims")
    @classmethod
    def _dims_valid(cls, dims: tuple[int, ...]) -> tuple[int, ...]:
        if not dims:
            raise ValueError("must list at least the batch axis")
        if dims[0] != -1:
            raise ValueError("the first axis is the batch axis and must be -1")
        if any(d == 0 or d < -1 for d in dims):
            raise ValueError("each axis is a positive size or -1 (free)")
        return dims


class PreprocessingConfig(_Frozen):
    """How an encoded image becomes the model's input tensor (service/preprocess.py applies it)."""

    color_order: Literal["rgb", "bgr", "gray"] = "rgb"
    resize: Literal["stretch", "letterbox", "center_crop", "native"] = "stretch"
    size: tuple[int, int] | None = None  # (height, width) after resizing; None only with "native"
    resize_shorter: int | None = None  # center_crop: shorter side before cropping (default: crop size)
    interpolation: Literal["linear", "area", "nearest", "cubic"] = "linear"
    padding: int = Field(default=0, ge=0)  # constant border added after resizing (LeNet-5: 28 -> 32)
    pad_value: float = Field(default=0.0, ge=0, le=255)  # letterbox fill / padding value, in pixel units
    stride: int = Field(default=1, ge=1)  # "native": pad height and width up to a multiple of this
    native_scale: float = Field(default=1.0, gt=0, le=8)  # "native": resize by this factor before padding
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    @model_validator(mode="after")
    def _consistent(self) -> "PreprocessingConfig":
        channels = 1 if self.color_order == "gray" else 3
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, channels):
                raise ValueError(f"{name} has {len(values)} values; {self.color_order} needs 1 or {channels}")
        if any(s == 0 for s in self.std):
            raise ValueError("std values must be non-zero")
        if self.resize == "native":
            if self.size is not None:
                raise ValueError("size must be omitted with resize 'native' (the image keeps its size)")
        elif self.size is None or min(self.size) <= 0:
            raise ValueError(f"size (height, width) is required with resize '{self.resize}'")
        if self.resize_shorter is not None and self.resize != "center_crop":
            raise ValueError("resize_shorter only applies to resize 'center_crop'")
        if self.native_scale != 1.0 and self.resize != "native":
            raise ValueError("native_scale only applies to resize 'native' (the other modes set the size)")
        return self

    @property
    def channels(self) -> int:
        return 1 if self.color_order == "gray" else 3

    @property
    def input_hw(self) -> tuple[int, int] | None:
        """(height, width) of the tensor fed to the model, or None when it follows the image."""
        if self.size is None:
            return None
        return (self.size[0] + 2 * self.padding, self.size[1] + 2 * self.padding)


class BatchingConfig(_Frozen):
    max_batch_size: int = Field(default=32, ge=1)
    max_queue_delay_us: int = Field(default=500, ge=0)
    preferred_batch_sizes: tuple[int, ...] = ()
    instances: int = Field(default=1, ge=1)
    max_queue_size: int = Field(default=1024, ge=1)  # images
    # float32 input bytes (service/budget.py prices requests before decoding): one request, and the
    # whole queue; the running batch comes from the queue, so the model's activations are bounded too
    max_request_bytes: int = Field(default=64 * 2**20, ge=1)
    max_queue_bytes: int = Field(default=256 * 2**20, ge=1)
    # opt-in: a batch whose size has recently run in at most this long runs on the event loop instead
    # of the model's thread (the hand-off there and back costs more than a tiny model's whole run);
    # 0, the default, keeps every model run off the loop
    inline_run_max_us: int = Field(default=0, ge=0, le=2000)

    @model_validator(mode="after")
    def _preferred_within_max(self) -> "BatchingConfig":
        for size in self.preferred_batch_sizes:
            if not 1 <= size <= self.max_batch_size:
                raise ValueError(f"preferred batch size {size} is outside 1..max_batch_size ({self.max_batch_size})")
        if self.max_request_bytes > self.max_queue_bytes:
            raise ValueError(
                f"max_request_bytes {self.max_request_bytes} is over max_queue_bytes "
                f"{self.max_queue_bytes}: such a request could never be queued"
            )
        return self


class CudaOptions(_Frozen):
    device_id: int = Field(default=0, ge=0)
    gpu_mem_limit: int | None = Field(default=None, ge=1)  # bytes
    arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = "kNextPowerOfTwo"
    cudnn_conv_algo_search: Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"] = "HEURISTIC"
    do_copy_in_default_stream: bool = True


class RuntimeConfig(_Frozen):
    providers: tuple[Literal["cuda", "cpu"], ...] | None = None  # None: the server's --providers
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    intra_op_threads: int = Field(default=0, ge=0)  # 0: sized to the machine's cores / instances
    # Idle intra-op threads spin-wait for work when true (ONNX Runtime's own default). Off here: the
    # server's cores are shared with gRPC, decoding and the batcher, and threads spinning between
    # batches took them (docs/model-config.md has the side-by-side numbers).
    intra_op_spinning: bool = False
    inter_op_threads: int = Field(default=1, ge=0)
    io_binding: Literal["auto", "on", "off"] = "auto"  # auto: on when the session runs on CUDA
    # CPU memory of ONNX Runtime: "arena" keeps the largest activations ever allocated (fast for fixed
    # shapes), "shrink" (arena_extend_strategy kSameAsRequested + shrinkage after every run) gives
    # them back, "no_arena" uses malloc; auto: shrink when an input has a free non-batch axis
    # (docs/security.md has the measured figures)
    cpu_memory: Literal["auto", "arena", "shrink", "no_arena"] = "auto"
    cuda: CudaOptions = CudaOptions()


MODEL_NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"  # also what a repository directory must be called to be loaded
MAX_MODEL_NAME = 128


class ModelConfig(_Frozen):
    name: str = Field(min_length=1, max_length=MAX_MODEL_NAME, pattern=MODEL_NAME_PATTERN)
    task: Literal["classification", "detection", "segmentation"]
    platform: Literal["onnx"] = "onnx"
    inputs: tuple[TensorSpec, ...] = Field(min_length=1)
    outputs: tuple[TensorSpec, ...] = Field(min_length=1)
    preprocessing: PreprocessingConfig | None = None  # None: the model only takes tensors
    labels: str | None = None  # labels file, one label per line, relative to the model directory
    batching: BatchingConfig = BatchingConfig()
    postprocessing: PostprocessingConfig = PostprocessingConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    default_version: int | None = Field(default=None, ge=1)  # None: the newest version
    description: str = ""

    @model_validator(mode="after")
    def _cross_checks(self) -> "ModelConfig":
        input_names = [t.name for t in self.inputs]
        output_names = [t.name for t in self.outputs]
        for kind, names in (("inputs", input_names), ("outputs", output_names)):
            if len(set(names)) != len(names):
                raise ValueError(f"{kind} has duplicate names: {names}")
        post = self.postprocessing
        if post.output is not None and post.output not in output_names:
            raise ValueError(f"postprocessing.output '{post.output}' is not among outputs {output_names}")
        if post.cam and post.cam.features_output and post.cam.features_output not in output_names:
            raise ValueError(f"postprocessing.cam.features_output '{post.cam.features_output}' is not among outputs")
        if post.segmentation is not None and self.task != "segmentation":
            raise ValueError("postprocessing.segmentation only applies to task segmentation")
        if self.task == "detection" and post.detection is None:
            raise ValueError("task detection needs postprocessing.detection")
        if post.detection is not None and post.detection.layout == "decoded_split":
            for field, name in zip(("boxes_output", "scores_output", "labels_output"), post.detection.split_outputs):
                if name not in output_names:
                    raise ValueError(f"postprocessing.detection.{field} '{name}' is not among outputs {output_names}")
        if self.preprocessing is not None:
            image_input = self.inputs[0]
            if len(image_input.dims) != 4:
                raise ValueError(f"inputs[0] '{image_input.name}' must be NCHW (4 dims) when preprocessing is set")
            channels, hw = image_input.dims[1], self.preprocessing.input_hw
            if channels != -1 and channels != self.preprocessing.channels:
                raise ValueError(
                    f"inputs[0] has {channels} channels but preprocessing.color_order "
                    f"'{self.preprocessing.color_order}' gives {self.preprocessing.channels}"
                )
            if hw is not None and tuple(image_input.dims[2:]) not in (hw, (-1, -1)):
                raise ValueError(f"inputs[0] dims {image_input.dims[2:]} disagree with preprocessing size {hw}")
        return self

    @property
    def answer_output(self) -> str:
        return self.postprocessing.output or self.outputs[0].name


_SKETCH = reprlib.Repr()
_SKETCH.maxlevel, _SKETCH.maxstring, _SKETCH.maxother = 3, 80, 80


def _field_path(loc: tuple) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def parse_model_config(data: object, path: str | Path) -> ModelConfig:
    """Validate already-parsed YAML/JSON data; the first problem is raised naming file and field."""
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", "must be a mapping of fields")
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = _field_path(tuple(error["loc"]))
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] == "literal_error":  # reprlib: an aliased value may be huge; show a bounded sketch
            message = f"{message} (got {_SKETCH.repr(error.get('input'))})"
        raise ConfigError(str(path), field, message) from None


MAX_CONFIG_BYTES = 256 * 1024  # a real config is a few hundred bytes
MAX_YAML_ALIASES = 64  # anchors are allowed, but an alias bomb ("billion laughs") is not


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing more than MAX_YAML_ALIASES alias references.

    Why: 792 bytes of nested aliases expand to hundreds of millions of values, which validation
    then walks and echoes; counting aliases while composing stops it before any expansion.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} YAML aliases (*name references)")
        return super().compose_node(parent, index)


def load_model_config(path: str | Path) -> ModelConfig:
    """Read config.yaml (or .json) with a safe, alias-bounded loader and validate it.

    A file over MAX_CONFIG_BYTES is refused from its size, unread.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(str(path), "", f"file is {size} bytes, over the limit of {MAX_CONFIG_BYTES}")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "", "not UTF-8 text") from None
    try:
        data = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), "", f"not valid YAML: {exc}") from None
    return parse_model_config(data, path)


def dump_model_config(config: ModelConfig, path: str | Path) -> None:
    """Write the fields that were set on purpose (defaults left unset stay out), so files stay short."""
    data = config.model_dump(mode="json", exclude_unset=True)
    data = {"name": config.name, "task": config.task, **data}
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
