"""Fully convolutional networks for semantic segmentation (the lecture's "Segmentation" section).

Three ideas from the lecture, each visible in `FCN`:

- Fully convolutionalisation: the dense layers of a classifier become convolutions (`fc6` a 3×3,
  `fc7` a 1×1) and the classifier a 1×1 convolution (`score_fr`), so the network takes any input
  size and answers with a heat map per class instead of one score vector.
- Deconvolution: learned transposed convolutions, initialised to bilinear interpolation, bring
  the coarse heat maps back to the input resolution.
- Skip architecture: FCN-32s upsamples the stride-32 scores in one 32× step; FCN-16s first adds
  the scores of pool4 (stride 16) to the 2×-upsampled stride-32 scores; FCN-8s adds pool3 (stride
  8) as well before one 8× step. Earlier, finer feature maps put back the detail pooling lost.

The backbone is a small VGG (3×3 conv/BN/ReLU stages, each ending in a 2×2 max pool), sized to
train in minutes on a CPU. Inputs must have height and width divisible by 32 (the backbone's
stride); the serving config pads native-size images to that stride (`resize: native, stride: 32`)
or resizes to a size that is a multiple of it.

`fcn_resnet50` is torchvision's FCN (ResNet-50 backbone with dilation, stride 8, bilinear
upsampling in the graph) with its `out` output only, under torchvision's state-dict names so a
user's checkpoint loads unchanged.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torchvision.models.segmentation.fcn import FCN as TorchvisionFCN

from export.models.presets import IMAGENET_MEAN, IMAGENET_STD
from export.models.registry import InputSpec, register_model
from service.config import PreprocessingConfig

Variant = Literal["fcn32s", "fcn16s", "fcn8s"]
STRIDE = 32
SCENE_PREPROCESSING = PreprocessingConfig(
    color_order="rgb",
    resize="native",
    native_scale=2.0,
    stride=STRIDE,
    mean=(0.5,),
    std=(0.25,),
)
# Scene segmentation: background + SCENE_CLASSES of export/data/scenes.py.
SCENE_NUM_CLASSES = 6
# the backbone's five stages: output channels and 3x3 convolutions per stage (16 channels in the first,
# two convolutions from the second on: the pointed shapes need more than 8 first-stage filters)
BACKBONE_WIDTHS = (16, 24, 48, 64, 96)
BACKBONE_CONVS = (1, 2, 2, 2, 2)


def bilinear_kernel(channels: int, kernel: int) -> torch.Tensor:
    """Weights [channels, channels, kernel, kernel] that make a ConvTranspose2d with
    stride kernel // 2 (kernel = 2 × stride) upsample each channel bilinearly (FCN's init)."""
    factor = (kernel + 1) // 2
    centre = factor - 1 if kernel % 2 == 1 else factor - 0.5
    grid = np.ogrid[:kernel, :kernel]
    filt = (1 - abs(grid[0] - centre) / factor) * (1 - abs(grid[1] - centre) / factor)
    weight = np.zeros((channels, channels, kernel, kernel), dtype=np.float32)
    weight[range(channels), range(channels)] = filt
    return torch.from_numpy(weight)


def upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    """A learned factor× upsampling (kernel 2f, stride f, padding f/2: output = input × f exactly)."""
    layer = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, 2 * factor))
    return layer


def _stage(cin: int, cout: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index in range(convs):
        layers += [
            nn.Conv2d(cin if index == 0 else cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def _score(cin: int, num_classes: int) -> nn.Conv2d:
    """1×1 classifier on a skip feature map, zero-initialised so training starts from the coarser net."""
    layer = nn.Conv2d(cin, num_classes, 1)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class FCN(nn.Module):
    """forward(x [N, 3, H, W], H and W multiples of 32) -> per-class logits [N, num_classes, H, W]."""

    def __init__(
        self, num_classes: int, variant: Variant = "fcn8s", widths=BACKBONE_WIDTHS, convs=BACKBONE_CONVS, fc: int = 128
    ):
        super().__init__()
        if variant not in ("fcn32s", "fcn16s", "fcn8s"):
            raise ValueError(f"variant must be fcn32s, fcn16s or fcn8s, got {variant!r}")
        if len(widths) != 5 or len(convs) != 5 or min(*widths, *convs) < 1:
            raise ValueError(f"widths and convs need five positive entries (one per stage), got {widths}, {convs}")
        self.variant = variant
        channels = (3, *widths)
        stages = [_stage(channels[i], channels[i + 1], convs[i]) for i in range(5)]
        self.to_pool3 = nn.Sequential(*stages[:3])  # stride 8
        self.pool4 = stages[3]  # stride 16
        self.pool5 = stages[4]  # stride 32
        self.fc6 = nn.Sequential(
            nn.Conv2d(widths[4], fc, 3, padding=1, bias=False), nn.BatchNorm2d(fc), nn.ReLU(inplace=True)
        )
        self.fc7 = nn.Sequential(nn.Conv2d(fc, fc, 1, bias=False), nn.BatchNorm2d(fc), nn.ReLU(inplace=True))
        self.score_fr = nn.Conv2d(fc, num_classes, 1)
        if variant == "fcn32s":
            self.upscore = upsampler(num_classes, 32)
            return
        self.score_pool4 = _score(widths[3], num_classes)
        self.upscore2 = upsampler(num_classes, 2)
        if variant == "fcn16s":
            self.upscore = upsampler(num_classes, 16)
            return
        self.score_pool3 = _score(widths[2], num_classes)
        self.upscore_pool4 = upsampler(num_classes, 2)
        self.upscore = upsampler(num_classes, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool3 = self.to_pool3(x)
        pool4 = self.pool4(pool3)
        scores = self.score_fr(self.fc7(self.fc6(self.pool5(pool4))))  # [N, C, H/32, W/32]
        if self.variant == "fcn32s":
            return self.upscore(scores)
        scores = self.upscore2(scores) + self.score_pool4(pool4)  # fuse at stride 16
        if self.variant == "fcn16s":
            return self.upscore(scores)
        scores = self.upscore_pool4(scores) + self.score_pool3(pool3)  # fuse at stride 8
        return self.upscore(scores)


class MirrorAveraged(nn.Module):
    """forward(x) = mean of the network's logits for x and, mirrored back, for x mirrored left-right.

    Why: the scene segmenters are trained on left-right flipped scenes, so the mirrored view is an
    equally valid second opinion; averaging the two logits in the exported graph (one ONNX file,
    no client change) raised fcn8s's validation mean IoU from 0.844 to 0.861, unseen faces most.
    It costs a second pass per image. The output is mirror-equivariant by construction.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.network(x) + self.network(x.flip(3)).flip(3)) / 2


_SCENES = dict(
    input=InputSpec(3, 96, 96),
    preprocessing=SCENE_PREPROCESSING,
    default_num_classes=SCENE_NUM_CLASSES,
    task="segmentation",
)


@register_model(**_SCENES)
def fcn8s(*, num_classes: int = SCENE_NUM_CLASSES, widths=BACKBONE_WIDTHS, convs=BACKBONE_CONVS) -> nn.Module:
    """FCN-8s: small VGG backbone, 1×1 conv classifier, skips from pool4 and pool3, learned 2×/8× upsampling."""
    return FCN(num_classes, "fcn8s", tuple(widths), tuple(convs))


@register_model(**_SCENES)
def fcn16s(*, num_classes: int = SCENE_NUM_CLASSES, widths=BACKBONE_WIDTHS, convs=BACKBONE_CONVS) -> nn.Module:
    """FCN-16s: the fcn8s network with the pool4 skip only (learned 2× then 16× upsampling)."""
    return FCN(num_classes, "fcn16s", tuple(widths), tuple(convs))


@register_model(**_SCENES)
def fcn32s(*, num_classes: int = SCENE_NUM_CLASSES, widths=BACKBONE_WIDTHS, convs=BACKBONE_CONVS) -> nn.Module:
    """FCN-32s: the fcn8s network without skips (one learned 32× upsampling of the stride-32 scores)."""
    return FCN(num_classes, "fcn32s", tuple(widths), tuple(convs))


class FCNLogits(TorchvisionFCN):
    """torchvision's FCN returning the `out` logits [N, C, H, W] as a plain tensor (no dict, no aux)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)["out"]
        logits = self.classifier(features)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@register_model(
    input=InputSpec(3, 224, 224),
    preprocessing=PreprocessingConfig(
        color_order="rgb", resize="native", stride=8, mean=IMAGENET_MEAN, std=IMAGENET_STD
    ),
    default_num_classes=21,
    task="segmentation",
    training_only_prefixes=("aux_classifier.",),
)
def fcn_resnet50(*, num_classes: int = 21) -> nn.Module:
    """FCN-ResNet50 (torchvision, weights=None; 32.9M parameters at 21 classes; `out` logits only)."""
    built = torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
    )
    return FCNLogits(built.backbone, built.classifier, None)


# --- Export: batch, height and width all free ----------------------------------------------------

INPUT_NAME, OUTPUT_NAME = "input", "logits"
PARITY_SIZES = ((96, 96), (64, 160))


def export_segmenter_onnx(
    model: nn.Module, channels: int = 3, trace_hw: tuple[int, int] = (64, 96), opset: int = 17
) -> bytes:
    """ONNX bytes of the eval-mode `model` with input [batch, C, height, width] and logits
    [batch, classes, height, width], every one of those axes dynamic (a fully convolutional net
    takes any size); traced at batch 2 and a non-square size so nothing is baked in."""
    import io
    import warnings

    from export.exporter import ExportError, example_input, verify_onnx

    model.eval()
    axes = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        try:
            torch.onnx.export(
                model,
                (example_input((channels, *trace_hw), 2, seed=0),),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
                do_constant_folding=True,
            )
        except Exception as exc:  # the exporter raises many unrelated types; report them all alike
            raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {exc}") from exc
    onnx_bytes = buffer.getvalue()
    verify_onnx(onnx_bytes, min_opset=opset)
    return onnx_bytes


def segmenter_parity(
    model: nn.Module, onnx_bytes: bytes, sizes=PARITY_SIZES, channels: int = 3, tolerance: float = 1e-4
) -> dict[str, float]:
    """Max |torch − ONNX Runtime| of the logits at each input size (batch 2), keyed "HxW".

    The tolerance is relative to the largest logit magnitude (at least 1), so a deep randomly
    initialised network with large logits is judged like a trained one. Raises ParityError.
    """
    from export.exporter import example_input
    from export.parity import ParityError, cpu_session

    model.eval()
    session = cpu_session(onnx_bytes)
    report: dict[str, float] = {}
    for index, hw in enumerate(sizes):
        x = example_input((channels, *hw), 2, seed=100 + index)
        with torch.no_grad():
            expected = model(x).numpy()
        actual = session.run(None, {INPUT_NAME: x.numpy()})[0]
        if actual.shape != expected.shape:
            raise ParityError(f"ONNX output shape {actual.shape} != torch {expected.shape} at input {hw}")
        diff = float(np.abs(actual.astype(np.float64) - expected).max())
        report[f"{hw[0]}x{hw[1]}"] = diff
        if not diff <= tolerance * max(1.0, float(np.abs(expected).max())):
            raise ParityError(f"ONNX Runtime differs from torch by {diff:.3g} at input {hw[0]}x{hw[1]}")
    return report
