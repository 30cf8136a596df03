"""VGG configurations A–E (Simonyan & Zisserman 2014, Table 1), as the lecture's table lists them.

torchvision builds A, B, D and E (vgg11/13/16/19) but not A-LRN (A with local response
normalisation after the first convolution) nor C (D's depth with 1×1 convolutions as the last
layer of the three deepest stages). All six are built here from one table with torchvision's VGG
class, so state-dict names (`features.N`, `classifier.N`) match torchvision's for A, B, D and E.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.vgg import VGG

from export.models.presets import imagenet_preprocessing
from export.models.registry import InputSpec, register_model

_IMAGENET = dict(input=InputSpec(3, 224, 224), preprocessing=imagenet_preprocessing(224), default_num_classes=1000)

# The paper's Table 1: an int is conv3-N, ("1x1", N) conv1-N, "M" a 2×2/2 max-pool, "LRN" local
# response normalisation (size 5, α 1e-4, β 0.75, k 2, as in AlexNet).
CONFIGS: dict[str, list] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        ("1x1", 256),
        "M",
        512,
        512,
        ("1x1", 512),
        "M",
        512,
        512,
        ("1x1", 512),
        "M",
    ],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def vgg_features(config: list) -> nn.Sequential:
    """The convolutional stack of one configuration (ReLU after every convolution)."""
    layers: list[nn.Module] = []
    channels = 3
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif item == "LRN":
            layers.append(nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0))
        else:
            kernel, out = (1, item[1]) if isinstance(item, tuple) else (3, item)
            layers += [nn.Conv2d(channels, out, kernel_size=kernel, padding=kernel // 2), nn.ReLU(inplace=True)]
            channels = out
    return nn.Sequential(*layers)


def vgg(config: str, *, num_classes: int = 1000) -> VGG:
    """VGG configuration `config` (a key of CONFIGS), dropout 0.5 on both 4096-wide layers."""
    return VGG(vgg_features(CONFIGS[config]), num_classes=num_classes, init_weights=True, dropout=0.5)


@register_model(**_IMAGENET)
def vgg_a(*, num_classes: int = 1000) -> nn.Module:
    """VGG configuration A (11 weight layers; torchvision's vgg11; 133M parameters)."""
    return vgg("A", num_classes=num_classes)


@register_model(**_IMAGENET)
def vgg_a_lrn(*, num_classes: int = 1000) -> nn.Module:
    """VGG configuration A-LRN (A with LRN after the first convolution; 133M parameters)."""
    return vgg("A-LRN", num_classes=num_classes)


@register_model(**_IMAGENET)
def vgg_b(*, num_classes: int = 1000) -> nn.Module:
    """VGG configuration B (13 weight layers; torchvision's vgg13; 133M parameters)."""
    return vgg("B", num_classes=num_classes)


@register_model(**_IMAGENET)
def vgg_c(*, num_classes: int = 1000) -> nn.Module:
    """VGG configuration C (16 weight layers, three of them 1×1; 134M parameters)."""
    return vgg("C", num_classes=num_classes)


@register_model(**_IMAGENET)
def vgg_d(*, num_classes: int = 1000) -> nn.Module:
    """VGG configuration D = VGG-16 (138M parameters, 15.5 G multiply-adds)."""
    return vgg("D", num_classes=num_classes)


@register_model(**_IMAGENET)
def vgg_e(*, num_classes: int = 1000) -> nn.Module:
    """VGG configuration E = VGG-19 (144M parameters, 19.6 G multiply-adds)."""
    return vgg("E", num_classes=num_classes)
