"""GoogLeNet (Inception v1) as the paper (Szegedy et al. 2014, Table 1) and the lecture draw it.

torchvision's GoogLeNet deviates in four ways the lecture's Inception argument depends on: its
"5×5" branch is a 3×3 convolution, every convolution carries BatchNorm (the 2014 network had
none; BatchNorm came in 2015), dropout is 0.2 instead of the table's 40 %, and its auxiliary heads
use dropout 0.7 on a 1024-wide layer like the paper but are optional. This builder follows the
table: each module is 1×1 | 1×1 → 3×3 | 1×1 → 5×5 | 3×3 max-pool → 1×1, concatenated by channel
(the lecture's [#1×1, (#3×3 reduce, #3×3), (#5×5 reduce, #5×5), pool proj] lists), ReLU after
every convolution, optional LRN after the first max-pool and after conv2, dropout 0.4 before the
classifier, and two auxiliary classifiers on 4a and 4d. The auxiliaries run only in training mode
(their losses are weighted 0.3, the paper's value, see `googlenet_loss`); the eval-mode forward,
which is what gets exported, returns the main logits, so the served graph has no trace of them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from export.models.presets import imagenet_preprocessing
from export.models.registry import InputSpec, register_model

# Table 1 / the lecture's code: #1×1, (#3×3 reduce, #3×3), (#5×5 reduce, #5×5), pool proj.
INCEPTION_TABLE: dict[str, tuple[int, tuple[int, int], tuple[int, int], int]] = {
    "3a": (64, (96, 128), (16, 32), 32),
    "3b": (128, (128, 192), (32, 96), 64),
    "4a": (192, (96, 208), (16, 48), 64),
    "4b": (160, (112, 224), (24, 64), 64),
    "4c": (128, (128, 256), (24, 64), 64),
    "4d": (112, (144, 288), (32, 64), 64),
    "4e": (256, (160, 320), (32, 128), 128),
    "5a": (256, (160, 320), (32, 128), 128),
    "5b": (384, (192, 384), (48, 128), 128),
}
AUX_LOSS_WEIGHT = 0.3


def conv_relu(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """A convolution with 'same' padding followed by ReLU (no BatchNorm, as in 2014)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2), nn.ReLU(inplace=True)
    )


class Inception(nn.Module):
    """One Inception module: four parallel branches concatenated along channels."""

    def __init__(self, in_channels: int, spec: tuple[int, tuple[int, int], tuple[int, int], int]) -> None:
        super().__init__()
        n1, (r3, n3), (r5, n5), pool_proj = spec
        self.out_channels = n1 + n3 + n5 + pool_proj
        self.branch1 = conv_relu(in_channels, n1, 1)
        self.branch2 = nn.Sequential(conv_relu(in_channels, r3, 1), conv_relu(r3, n3, 3))
        self.branch3 = nn.Sequential(conv_relu(in_channels, r5, 1), conv_relu(r5, n5, 5))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv_relu(in_channels, pool_proj, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], dim=1)


class AuxClassifier(nn.Module):
    """The paper's auxiliary head: 5×5/3 average pool, 1×1 conv 128, FC 1024, dropout 70 %, linear."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = conv_relu(in_channels, 128, 1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.dropout = nn.Dropout(0.7)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, 4)  # = 5×5/3 average pooling on the 14×14 maps at 224 px
        x = torch.flatten(self.conv(x), 1)
        return self.fc2(self.dropout(F.relu(self.fc1(x), inplace=True)))


class GoogLeNetTrainingOutputs(NamedTuple):
    logits: torch.Tensor
    aux1: torch.Tensor
    aux2: torch.Tensor


class GoogLeNetV1(nn.Module):
    """The 22-layer network of Table 1; `lrn` adds the two LocalResponseNorm layers of the paper."""

    def __init__(
        self, num_classes: int = 1000, lrn: bool = True, aux_classifiers: bool = True, dropout: float = 0.4
    ) -> None:
        super().__init__()
        norm = (lambda: nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)) if lrn else nn.Identity
        self.stem = nn.Sequential(
            conv_relu(3, 64, 7, stride=2),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            norm(),
            conv_relu(64, 64, 1),
            conv_relu(64, 192, 3),
            norm(),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
        )
        channels = 192
        modules = {}
        for name, spec in INCEPTION_TABLE.items():
            modules[name] = Inception(channels, spec)
            channels = modules[name].out_channels
        self.inception3a, self.inception3b = modules["3a"], modules["3b"]
        self.inception4a, self.inception4b, self.inception4c = modules["4a"], modules["4b"], modules["4c"]
        self.inception4d, self.inception4e = modules["4d"], modules["4e"]
        self.inception5a, self.inception5b = modules["5a"], modules["5b"]
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.aux1 = AuxClassifier(modules["4a"].out_channels, num_classes) if aux_classifiers else None
        self.aux2 = AuxClassifier(modules["4d"].out_channels, num_classes) if aux_classifiers else None
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetTrainingOutputs:
        x = self.inception3b(self.inception3a(self.stem(x)))
        x = self.inception4a(self.pool(x))
        aux1 = self.aux1(x) if self.training and self.aux1 is not None else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if self.training and self.aux2 is not None else None
        x = self.inception5b(self.inception5a(self.pool(self.inception4e(x))))
        logits = self.fc(self.dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))
        if aux1 is None or aux2 is None:
            return logits
        return GoogLeNetTrainingOutputs(logits, aux1, aux2)


def googlenet_loss(outputs, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the main head plus 0.3 × each auxiliary head's (training mode)."""
    if isinstance(outputs, GoogLeNetTrainingOutputs):
        aux = F.cross_entropy(outputs.aux1, target) + F.cross_entropy(outputs.aux2, target)
        return F.cross_entropy(outputs.logits, target) + AUX_LOSS_WEIGHT * aux
    return F.cross_entropy(outputs, target)


@register_model(
    input=InputSpec(3, 224, 224),
    preprocessing=imagenet_preprocessing(224),
    default_num_classes=1000,
    training_only_prefixes=("aux1.", "aux2."),
)
def googlenet_v1(*, num_classes: int = 1000, lrn: bool = True) -> nn.Module:
    """GoogLeNet v1 as in the 2014 paper (true 5×5 branches, no BatchNorm, dropout 0.4; 7.0M parameters, \
paper ~6.8M)."""
    return GoogLeNetV1(num_classes=num_classes, lrn=lrn)
