"""BN-CNN: the lecture's batch-normalisation example (cnn-lecture.txt, "배치정규화 알고리즘").

    Conv 32@2×2 → Conv 64@2×2 → Conv 128@2×2 stride 2 → Conv 32@2×2 → Conv 64@2×2
    → Conv 128@2×2 stride 2, each with sigmoid and followed by BatchNorm,
    → Flatten (5×5×128 = 3,200) → Dense 128 sigmoid → Dense 10

The lecture's Keras summary gives 511,690 parameters: 510,794 trainable (convolutions, dense
layers and the BatchNorm scale/shift γ, β) and 896 non-trainable running mean/variance values
(2 × (32+64+128+32+64+128)). In torch those 896 values are buffers, next to six
`num_batches_tracked` counters that Keras does not have. BatchNorm uses Keras' epsilon (1e-3);
its momentum stays at torch's 0.1 because our training runs are short (Keras' 0.99 would be
torch's 0.01 and lag behind the weights for the first few hundred steps). The softmax is left
out; the graph outputs logits.
"""

from __future__ import annotations

from torch import nn

from export.models.presets import digit_preprocessing
from export.models.registry import InputSpec, register_model

# (out_channels, stride) per convolution, in the lecture's order; all kernels are 2×2, valid.
_CONVS = ((32, 1), (64, 1), (128, 2), (32, 1), (64, 1), (128, 2))


def _conv_block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 2, stride=stride),
        nn.Sigmoid(),
        nn.BatchNorm2d(out_channels, eps=1e-3),
    )


class BNCNN(nn.Module):
    """28×28×1 → logits [N, num_classes]; spatial sizes 27, 26, 13, 12, 11, 5."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        blocks, channels = [], in_channels
        for out_channels, stride in _CONVS:
            blocks.append(_conv_block(channels, out_channels, stride))
            channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(5 * 5 * channels, 128),
            nn.Sigmoid(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model(
    input=InputSpec(1, 28, 28, fixed_size=True),
    preprocessing=digit_preprocessing(),
    default_num_classes=10,
)
def bn_cnn(*, num_classes: int = 10) -> nn.Module:
    """BN-CNN from the lecture: six 2×2 convolutions with BatchNorm (510,794 trainable parameters)."""
    return BNCNN(num_classes=num_classes)
