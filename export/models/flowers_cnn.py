"""Flowers-CNN: the lecture's 180×180×3 five-class Keras example (cnn-lecture.txt, after Simple-CNN).

    Rescaling(1/255) → [Conv 16/32/64 @3×3 same + ReLU → MaxPool 2] ×3 → Flatten (22×22×64)
    → Dropout 0.2 → Dense 128 ReLU → Dense 5

3,989,285 parameters (448 + 4,640 + 18,496 + 3,965,056 + 645), as in the lecture's table.
The Keras model's in-graph `Rescaling(1./255)` is not a layer here: it becomes the config's
preprocessing `scale: 1/255`, so the transform lives in one place (service/preprocess.py).
"""

from __future__ import annotations

from torch import nn

from export.models.registry import InputSpec, register_model
from service.config import PreprocessingConfig


def _conv_pool(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))


class FlowersCNN(nn.Module):
    """180×180×3 → logits [N, num_classes]; feature maps 90, 45, 22 (floor)."""

    def __init__(self, *, num_classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(_conv_pool(3, 16), _conv_pool(16, 32), _conv_pool(32, 64))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(22 * 22 * 64, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model(
    input=InputSpec(3, 180, 180, fixed_size=True),
    preprocessing=PreprocessingConfig(color_order="rgb", resize="stretch", size=(180, 180), scale=1.0 / 255.0),
    default_num_classes=5,
)
def flowers_cnn(*, num_classes: int = 5) -> nn.Module:
    """Flowers-CNN from the lecture (180×180 RGB, 5 classes, 3,989,285 parameters)."""
    return FlowersCNN(num_classes=num_classes)
