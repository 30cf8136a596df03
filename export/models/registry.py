"""The model zoo's registry: architectures by name, each with what an exporter must know about it.

Modelled on torchvision's builder registry: a builder is a plain function taking keyword-only
arguments (`num_classes`, ...) and returning an `nn.Module`; `register_model` records it together
with a `ModelSpec` — the input tensor the architecture expects by default, the preprocessing that
produces that tensor from an image, and the graph's output names — so that `export/` can write a
complete serving config without per-model special cases. Adding an architecture is one new module
in this package that decorates its builder, plus one import line in `export/models/__init__.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from torch import nn

from service.config import PostprocessingConfig, PreprocessingConfig

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class InputSpec:
    """The image tensor an architecture takes by default: (channels, height, width), batch excluded.

    `fixed_size` is True when the network has no global/adaptive pooling before its dense layers
    (Flatten → Linear), so only exactly this height and width can work.
    """

    channels: int
    height: int
    width: int
    fixed_size: bool = False

    @property
    def hw(self) -> tuple[int, int]:
        return (self.height, self.width)


@dataclass(frozen=True)
class ModelSpec:
    """Everything the exporter needs besides the weights.

    `preprocessing` is the serving transform for the default input size; its `size` plus twice its
    `padding` equals (height, width) of `input`. `training_only_prefixes` name state-dict keys a
    checkpoint may carry that the exported (eval-mode) graph never uses, e.g. GoogLeNet's auxiliary
    classifiers; the checkpoint loader drops them instead of calling them unexpected.
    """

    name: str
    builder: Builder
    input: InputSpec
    preprocessing: PreprocessingConfig
    default_num_classes: int
    summary: str
    task: Literal["classification", "detection", "segmentation"] = "classification"
    output_names: tuple[str, ...] = ("logits",)
    training_only_prefixes: tuple[str, ...] = ()
    postprocessing: Callable[[int], PostprocessingConfig] | None = None  # num_classes -> defaults

    def build(self, **kwargs) -> nn.Module:
        """Call the builder; `num_classes` defaults to the architecture's own."""
        kwargs.setdefault("num_classes", self.default_num_classes)
        return self.builder(**kwargs)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    *,
    input: InputSpec,
    preprocessing: PreprocessingConfig,
    default_num_classes: int,
    name: str | None = None,
    **spec_fields,
) -> Callable[[Builder], Builder]:
    """Decorator: register `builder` under `name` (default: the function's name).

    The summary shown by `convserve export --list` is the first line of the builder's docstring.
    Registering a name twice is an error, so two modules cannot silently shadow each other.
    """

    def decorate(builder: Builder) -> Builder:
        key = name or builder.__name__
        if key in _REGISTRY:
            raise ValueError(f"model '{key}' is already registered")
        summary = (builder.__doc__ or "").strip().splitlines()[0] if builder.__doc__ else key
        _REGISTRY[key] = ModelSpec(
            name=key,
            builder=builder,
            input=input,
            preprocessing=preprocessing,
            default_num_classes=default_num_classes,
            summary=summary,
            **spec_fields,
        )
        return builder

    return decorate


def list_models() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(_REGISTRY)


def get_model_spec(name: str) -> ModelSpec:
    """The spec registered under `name`; the error lists the names that exist."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown architecture '{name}'; known: {', '.join(list_models())}") from None


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered architecture: `build_model("lenet5", num_classes=10)`."""
    return get_model_spec(name).build(**kwargs)
