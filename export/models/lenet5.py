"""LeNet-5 (LeCun et al., 1998), as presented in the lecture (cnn-lecture.txt, "LeNET-5 ARCHITECTURE").

    input 32×32 → C1 conv 6@5×5 → S2 subsample → C3 conv 16@5×5 (partial connections)
    → S4 subsample → C5 conv 120@5×5 → F6 dense 84 → output dense num_classes

Choices, with the paper as the reference:
- Squashing function: the paper's scaled tanh, f(a) = 1.7159 · tanh(2a/3), after C1, S2, C3, S4,
  C5 and F6.
- S2 and S4 are the paper's *trainable* subsampling: the 2×2 average of each map, times a learned
  coefficient, plus a learned bias (2 parameters per map), then the squashing function. Here that
  is AvgPool 2×2 followed by a depthwise 1×1 convolution (one weight and one bias per map).
- C3 connects each of its 16 maps to a subset of S2's 6 maps (the lecture's connection table,
  Table I of the paper): maps 0–5 take 3 contiguous S2 maps, 6–11 take 4 contiguous, 12–14 take 4
  non-contiguous, 15 takes all 6. It is a 16×6×5×5 convolution whose weight is multiplied by a
  fixed 0/1 mask (a registered buffer) in every forward pass, so the masked weights get zero
  gradient and never affect the output; ONNX export folds the product into one constant weight.
  (The lecture's text rendering of the table has lost some empty cells, which shifts a few
  marks; the paper's table is the one with 60 connections, 10 per S2 map.)
- The paper's output layer is 10 Euclidean RBF units with fixed weights; here it is an ordinary
  dense layer producing logits, as in every modern re-implementation.

Parameter count (num_classes = 10):
    C1 156 · S2 12 · C3 1,516 · S4 32 · C5 48,120 · F6 10,164 · output 850
    effective trainable parameters: 60,850
    stored parameter values: 61,750 (C3's weight tensor also holds the 900 masked-out entries),
    plus the 96-value mask buffer.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from export.models.presets import digit_preprocessing
from export.models.registry import InputSpec, register_model

# C3 map -> the S2 maps it reads (LeCun et al. 1998, Table I).
C3_CONNECTIONS: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)  # fmt: skip


def c3_connection_mask() -> torch.Tensor:
    """The connection table as a 0/1 tensor [16 C3 maps, 6 S2 maps, 1, 1] (broadcasts over the kernel)."""
    mask = torch.zeros(len(C3_CONNECTIONS), 6, 1, 1)
    for out_map, in_maps in enumerate(C3_CONNECTIONS):
        mask[out_map, list(in_maps)] = 1.0
    return mask


class MaskedConv2d(nn.Conv2d):
    """A convolution whose weight is multiplied by a fixed connection mask (buffer `weight_mask`).

    `weight_mask` has shape [out, in, 1, 1] or the weight's full shape. Masked-out weights are
    zeroed at construction and receive zero gradient, so they stay zero unless a checkpoint sets
    them, and even then they never reach the output.
    """

    def __init__(self, *args, weight_mask: torch.Tensor, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_mask", weight_mask.to(self.weight.dtype))
        with torch.no_grad():
            self.weight.mul_(self.weight_mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.weight_mask, self.bias)


class ScaledTanh(nn.Module):
    """LeCun's squashing function 1.7159 · tanh(2a/3): f(±1) ≈ ±1, steepest near 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.7159 * torch.tanh(x * (2.0 / 3.0))


class TrainableSubsampling(nn.Module):
    """S2/S4: 2×2 average per map × learned coefficient + learned bias ([N, C, H, W] → [N, C, H/2, W/2])."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Conv2d(channels, channels, 1, groups=channels)  # 1 weight + 1 bias per map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale(F.avg_pool2d(x, 2))


class LeNet5(nn.Module):
    """32×32×1 → logits [N, num_classes]; feature maps 28, 14, 10, 5, 1."""

    def __init__(self, *, num_classes: int = 10):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5)
        self.s2 = TrainableSubsampling(6)
        self.c3 = MaskedConv2d(6, 16, 5, weight_mask=c3_connection_mask())
        self.s4 = TrainableSubsampling(16)
        self.c5 = nn.Conv2d(16, 120, 5)
        self.f6 = nn.Linear(120, 84)
        self.output = nn.Linear(84, num_classes)
        self.act = ScaledTanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.s2(self.act(self.c1(x))))
        x = self.act(self.s4(self.act(self.c3(x))))
        x = self.act(self.c5(x)).flatten(1)
        return self.output(self.act(self.f6(x)))


@register_model(
    input=InputSpec(1, 32, 32, fixed_size=True),
    # MNIST digits are 28×28; LeNet-5 was designed for 32×32 with the digit well inside the field,
    # so the 28×28 image gets a 2-pixel background border. Mean/std: the MNIST training set's.
    preprocessing=digit_preprocessing(padding=2, mean=0.1307, std=0.3081),
    default_num_classes=10,
)
def lenet5(*, num_classes: int = 10) -> nn.Module:
    """LeNet-5 with the paper's C3 connection table and trainable subsampling (60,850 parameters)."""
    return LeNet5(num_classes=num_classes)
