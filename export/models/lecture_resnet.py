"""ResNet v1 as the paper (He et al. 2015, Table 1) and the lecture's table draw it.

torchvision's ResNet-50/101/152 are "v1.5": the bottleneck downsamples on its 3×3 convolution.
The paper downsamples on the first 1×1 (stride 2), which is why its FLOPs row reads 3.8 G for
ResNet-50 where torchvision's network costs 4.1 G. Only the bottleneck differs; the basic block of
ResNet-18/34 is the paper's in torchvision too, so those two depths are registered here as the
same network under the lecture's name. State-dict names are torchvision's, so checkpoints of
either variant load into the other (the weights have the same shapes; only the stride moved).
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet, conv1x1, conv3x3

from export.models.presets import imagenet_preprocessing
from export.models.registry import InputSpec, register_model

_IMAGENET = dict(input=InputSpec(3, 224, 224), preprocessing=imagenet_preprocessing(224), default_num_classes=1000)


class BottleneckV1(Bottleneck):
    """The paper's bottleneck: 1×1 (stride s) → 3×3 (stride 1) → 1×1, BatchNorm after each."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer=None,
    ) -> None:
        super().__init__(inplanes, planes, stride, downsample, groups, base_width, dilation, norm_layer)
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width, stride)
        self.conv2 = conv3x3(width, width, 1, groups, dilation)


def resnet_v1(depth: int, *, num_classes: int = 1000) -> ResNet:
    """ResNet v1 at one of the paper's depths (18, 34, 50, 101, 152)."""
    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}
    if depth not in blocks:
        raise ValueError(f"ResNet depth must be one of {sorted(blocks)}, not {depth}")
    block = BasicBlock if depth < 50 else BottleneckV1
    return ResNet(block, blocks[depth], num_classes=num_classes)


@register_model(**_IMAGENET)
def resnet18_v1(*, num_classes: int = 1000) -> nn.Module:
    """ResNet-18 v1 (paper; same network as torchvision's resnet18; 1.8 G multiply-adds)."""
    return resnet_v1(18, num_classes=num_classes)


@register_model(**_IMAGENET)
def resnet34_v1(*, num_classes: int = 1000) -> nn.Module:
    """ResNet-34 v1 (paper; same network as torchvision's resnet34; 3.6 G multiply-adds)."""
    return resnet_v1(34, num_classes=num_classes)


@register_model(**_IMAGENET)
def resnet50_v1(*, num_classes: int = 1000) -> nn.Module:
    """ResNet-50 v1 (paper: stride on the bottleneck's first 1×1; 25.6M parameters, 3.8 G multiply-adds)."""
    return resnet_v1(50, num_classes=num_classes)


@register_model(**_IMAGENET)
def resnet101_v1(*, num_classes: int = 1000) -> nn.Module:
    """ResNet-101 v1 (paper; 44.5M parameters, 7.6 G multiply-adds)."""
    return resnet_v1(101, num_classes=num_classes)


@register_model(**_IMAGENET)
def resnet152_v1(*, num_classes: int = 1000) -> nn.Module:
    """ResNet-152 v1 (paper; 60.2M parameters, 11.3 G multiply-adds)."""
    return resnet_v1(152, num_classes=num_classes)
