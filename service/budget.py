"""Byte budgets on what a model really receives, decided before anything is decoded or allocated.

Why: the pixel limit counts the decoded image, not the tensor the model gets after resizing,
`native_scale` and padding to the stride, and not the activations a fully convolutional model
allocates for it (about 20 times the input's bytes for fcn8s, measured by `python -m
bench.ort_memory`). A 1 x 10,000,000 PNG passed the pixel limit and became a 7 GiB input. So every
request is priced here in float32 input bytes, from the header-reported size and the model config:

* a model with a fixed input size costs `images x C x H x W x 4` bytes, known from the count alone;
  over `batching.max_request_bytes` it is INVALID_ARGUMENT (sending it again cannot help);
* a native-resolution model (`resize: native`) gets each image downscaled until it fits its share
  of `max_request_bytes` (the large-image policy: the model sees fewer pixels, and the mask is
  mapped back to the original size through the recorded scale, as for any resize);
* tensors sent as tensors are priced by their `nbytes`, and a native model's tensor must have
  non-zero height and width that are multiples of its stride (what the graph can take);
* the batcher sums the same bytes over its queue (`batching.max_queue_bytes`);
* a request that keeps its decoded originals (for overlays) may hold `--max-pixels` in all.
"""

from __future__ import annotations

import math

import numpy as np

from service.config import ModelConfig, PreprocessingConfig
from service.errors import InvalidArgument
from service.image_header import image_size

FLOAT_BYTES = 4  # preprocessing always produces float32


def input_hw(width: int, height: int, spec: PreprocessingConfig) -> tuple[int, int]:
    """(h, w) of the model input an image of width x height becomes under `spec` (no decoding)."""
    fixed = spec.input_hw
    if fixed is not None:
        return fixed
    new_h = max(1, int(round(height * spec.native_scale)))
    new_w = max(1, int(round(width * spec.native_scale)))
    stride = spec.stride
    new_h, new_w = -(-new_h // stride) * stride, -(-new_w // stride) * stride
    return new_h + 2 * spec.padding, new_w + 2 * spec.padding


def image_tensor_bytes(width: int, height: int, spec: PreprocessingConfig) -> int:
    """float32 bytes of the one-image input tensor [C, h, w] that width x height becomes."""
    h, w = input_hw(width, height, spec)
    return spec.channels * h * w * FLOAT_BYTES


def image_budget(config: ModelConfig, count: int) -> int:
    """Each image's share of the request's byte budget; a fixed-size model over budget is refused.

    Cheap (no image is looked at), so it runs on the event loop before any decoding is scheduled.
    """
    limit = config.batching.max_request_bytes
    spec = config.preprocessing
    if spec is not None and spec.input_hw is not None:
        need = count * image_tensor_bytes(1, 1, spec)
        if need > limit:
            raise InvalidArgument(
                f"{count} images become {need} bytes of model input, over the model's "
                f"batching.max_request_bytes {limit}; send fewer images per request"
            )
    return limit // max(1, count)


def check_kept_pixels(encoded: list[bytes], max_pixels: int) -> None:
    """A request that keeps its decoded originals (overlays, explanations) holds them all at once,
    so together they may have at most `max_pixels` pixels (one largest image's worth).

    Why: 64 flat 40-megapixel PNGs fit in an 8 MB message and would hold 7.7 GB of originals until
    the overlays are drawn. Headers only (cheap and bounded); unreadable ones are refused at decode.
    """
    total = 0
    for data in encoded:
        size = image_size(data)
        if size is not None:
            total += size[0] * size[1]
    if total > max_pixels:
        raise InvalidArgument(
            f"the request's images have {total} pixels together; a request that returns overlays "
            f"or explanations may have at most {max_pixels} (--max-pixels) in all"
        )


def fit_to_budget(data: bytes, spec: PreprocessingConfig, budget: int) -> PreprocessingConfig:
    """`spec`, with a smaller native_scale when this image's tensor would exceed `budget` bytes.

    Only native-resolution models are rescaled (the others have a fixed size, priced by
    `image_budget`). An image whose header cannot be read is left to `decode_image`, which refuses it.
    """
    if spec.input_hw is not None:
        return spec
    size = image_size(data)
    if size is None or min(size) <= 0:
        return spec
    width, height = size
    if image_tensor_bytes(width, height, spec) <= budget:
        return spec
    fits = _largest_fitting_scale(width, height, spec, budget)
    if fits is None:
        raise InvalidArgument(
            f"image of {width}x{height} cannot fit the model's input budget of {budget} bytes "
            "(batching.max_request_bytes per image) at any scale"
        )
    return spec.model_copy(update={"native_scale": fits})


def _largest_fitting_scale(width: int, height: int, spec: PreprocessingConfig, budget: int) -> float | None:
    """The largest native_scale (below spec's) whose tensor fits `budget`, to 1 %; None if none does.

    The bytes only grow with the scale, but in steps (stride padding, the 1-pixel floor of a side),
    so the square-root estimate is a start: halve until it fits, then bisect up.
    """

    def fits(scale: float) -> bool:
        return image_tensor_bytes(width, height, spec.model_copy(update={"native_scale": scale})) <= budget

    too_big = spec.native_scale
    good = too_big * math.sqrt(budget / image_tensor_bytes(width, height, spec))
    for _ in range(40):
        if fits(good):
            break
        too_big, good = good, good / 2
    else:
        return None
    for _ in range(16):
        if too_big - good <= 0.01 * good:
            break
        middle = (good + too_big) / 2
        good, too_big = (middle, too_big) if fits(middle) else (good, middle)
    return good


def check_model_inputs(config: ModelConfig, inputs: dict[str, np.ndarray]) -> None:
    """Tensors about to be queued: their bytes against max_request_bytes, and the shapes the graph takes.

    O(number of inputs): shapes and nbytes only, never the values.
    """
    total = sum(int(array.nbytes) for array in inputs.values())
    limit = config.batching.max_request_bytes
    if total > limit:
        raise InvalidArgument(
            f"request tensors hold {total} bytes, over the model's batching.max_request_bytes "
            f"{limit}; send smaller or fewer images"
        )
    for name, array in inputs.items():
        if any(extent == 0 for extent in array.shape[1:]):
            raise InvalidArgument(
                f"input '{name}' has shape {list(array.shape)}: every axis after the batch axis must be at least 1"
            )
    spec = config.preprocessing
    image = inputs.get(config.inputs[0].name)
    if spec is None or spec.input_hw is not None or image is None or image.ndim != 4 or spec.stride == 1:
        return
    height, width = image.shape[2], image.shape[3]
    if height % spec.stride or width % spec.stride:
        raise InvalidArgument(
            f"input '{config.inputs[0].name}' is {height}x{width}: model '{config.name}' needs a "
            f"height and width that are multiples of its stride {spec.stride} "
            "(preprocessing.stride; pad the image, or send encoded images)"
        )
