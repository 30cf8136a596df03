"""GAP-CNN: a small classifier with a global-average-pooling head, built for class activation maps.

The lecture's "CNN Class Activation Map" section (cnn-lecture.txt): replace the fully connected
layers by global average pooling (GAP) followed by one linear layer, so that each class score is

    y_c = Σ_k w_ck · mean_xy f_k(x, y) + b_c,

and the class activation map CAM_c(x, y) = Σ_k w_ck · f_k(x, y) shows where the evidence for class c
lies (its spatial mean is exactly y_c − b_c).

    input 3×64×64 → conv 3×3 stride 2 → BN → ReLU                    (16 maps, 32×32)
    → conv 3×3 → BN → ReLU → max-pool 2                               (32 maps, 16×16)
    → conv 3×3 → BN → ReLU                                           = local (64 maps, 16×16)
    → max-pool 2 → [conv 3×3 → BN → ReLU] × 2 → 2× nearest upsampling = context (64 maps, 16×16)
    → concat(local, context) → conv 3×3 → BN → ReLU                  = the CAM maps (64, 16×16)
    → GAP → linear (`fc`) → logits

Why these choices: the CAM maps keep stride 4 (a 16×16 map on a 64×64 input) so that the map can
outline small objects. A plain stack of 3×3 convolutions at that stride sees only 33 input
pixels, less than the largest objects (up to 45 pixels): the map then lit up the most telling
part of an object (a triangle's apex, a disc's rim) and its box at 0.5 came out too small. The
context branch at stride 8 widens the receptive field to about 60 pixels, and fusing it with the
stride-4 branch (the skip idea of FCN) keeps the map's resolution. Dilated convolutions widen it
more cheaply but sample the input on a sparse grid, and their CAMs showed it: hot stripes at the
dilation offsets beside the object instead of on it. The strided first convolution keeps the
full-resolution stage cheap; the network stays small (0.17 M parameters) so it trains on
two CPU threads in minutes. GAP makes it accept any input size (even height and width).
"""

from __future__ import annotations

import torch
from torch import nn

from export.models.registry import InputSpec, register_model
from service.config import PreprocessingConfig


def _block(in_channels: int, out_channels: int, stride: int = 1, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ContextFeatures(nn.Module):
    """[N, C, H, W] → the CAM maps [N, 64, H/4, W/4]: a stride-4 branch fused with a stride-8 one."""

    def __init__(self, in_channels: int = 3, channels: int = 64):
        super().__init__()
        self.stem = nn.Sequential(_block(in_channels, 16, stride=2), _block(16, 32, pool=True))
        self.local = _block(32, channels)
        self.context = nn.Sequential(
            nn.MaxPool2d(2),
            _block(channels, channels),
            _block(channels, channels),
            nn.Upsample(scale_factor=2, mode="nearest"),
        )
        self.fuse = _block(2 * channels, channels)
        self.out_channels = channels

    def forward(self, x):
        local = self.local(self.stem(x))
        return self.fuse(torch.cat([local, self.context(local)], dim=1))


class GapCNN(nn.Module):
    """[N, 3, H, W] → logits [N, num_classes]; `features(x)` are the CAM maps [N, 64, H/4, W/4]."""

    def __init__(self, *, num_classes: int = 5, in_channels: int = 3):
        super().__init__()
        self.features = ContextFeatures(in_channels)
        self.pool = nn.AdaptiveAvgPool2d(1)  # exported as GlobalAveragePool
        self.fc = nn.Linear(self.features.out_channels, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


@register_model(
    input=InputSpec(3, 64, 64),
    preprocessing=PreprocessingConfig(
        color_order="rgb",
        resize="stretch",
        size=(64, 64),
        interpolation="area",
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    ),
    default_num_classes=5,
)
def gap_cnn(*, num_classes: int = 5) -> nn.Module:
    """GAP-CNN: conv/BN/ReLU blocks with a stride-8 context branch fused at stride 4, global average pooling, \
one linear layer (CAM-ready)."""
    return GapCNN(num_classes=num_classes)
