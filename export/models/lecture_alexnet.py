"""AlexNet as the paper (Krizhevsky et al. 2012) and the lecture's list draw it.

The lecture lists "ReLU + Local response normalization, Multiple GPU, Overlapping pooling,
Dropout". torchvision's AlexNet is the later one-GPU variant (64/192 filters, no LRN). This one has
the paper's 96-256-384-384-256 filters, LRN (size 5, α 1e-4, β 0.75, k 2) after conv1 and conv2,
3×3/2 overlapping max-pooling, dropout 0.5, and the two-GPU split as grouped convolutions
(conv2, conv4 and conv5 read only their own GPU's half of the maps; `groups=1` joins them).
The input is 227×227: the size at which the paper's 11×11/4 first layer gives its 55×55 maps.
"""

from __future__ import annotations

import torch
from torch import nn

from export.models.presets import imagenet_preprocessing
from export.models.registry import InputSpec, register_model


class AlexNetLRN(nn.Module):
    """The 2012 network: five convolutions (two followed by LRN), three dense layers."""

    def __init__(self, num_classes: int = 1000, groups: int = 2, dropout: float = 0.5) -> None:
        super().__init__()
        lrn = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, kernel_size=11, stride=4),
            nn.ReLU(inplace=True),
            nn.LocalResponseNorm(**lrn),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=groups),
            nn.ReLU(inplace=True),
            nn.LocalResponseNorm(**lrn),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=groups),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=groups),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model(
    input=InputSpec(3, 227, 227, fixed_size=True), preprocessing=imagenet_preprocessing(227), default_num_classes=1000
)
def alexnet_lrn(*, num_classes: int = 1000, groups: int = 2) -> nn.Module:
    """AlexNet as in the 2012 paper (LRN, two-GPU grouped convs; 61.0M parameters, 0.72 G multiply-adds)."""
    return AlexNetLRN(num_classes=num_classes, groups=groups)
