"""Simple-CNN: the lecture's first Keras example (cnn-lecture.txt, "SIMPLE CNN EXAMPLE WITH KERAS").

    Conv 8@3×3 same + ReLU → MaxPool 2 → Conv 16@3×3 valid + ReLU → MaxPool 2
    → Conv 16@3×3 valid + ReLU → Flatten → Dense 64 sigmoid → Dense 10

Parameters per layer, as in the lecture's summary table: 80, 1,168, 2,320, 16,448, 650 (20,666).
The final softmax is left out: the graph outputs logits and the server applies softmax
(config `postprocessing.scores: logits`). Keras flattens H×W×C while torch flattens C×H×W; the
counts are the same, only the order of the first dense layer's inputs differs.
"""

from __future__ import annotations

from torch import nn

from export.models.presets import digit_preprocessing
from export.models.registry import InputSpec, register_model


class SimpleCNN(nn.Module):
    """28×28×1 → logits [N, num_classes]."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1),  # 28×28×8
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 14×14×8
            nn.Conv2d(8, 16, 3),  # 12×12×16
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 6×6×16
            nn.Conv2d(16, 16, 3),  # 4×4×16
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # 256
            nn.Linear(256, 64),
            nn.Sigmoid(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model(
    input=InputSpec(1, 28, 28, fixed_size=True),
    preprocessing=digit_preprocessing(),
    default_num_classes=10,
)
def simple_cnn(*, num_classes: int = 10) -> nn.Module:
    """Simple-CNN from the lecture (28×28 gray digits, 20,666 parameters)."""
    return SimpleCNN(num_classes=num_classes)
