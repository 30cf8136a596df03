"""The lecture's augmentations on resized uint8 images, seeded, fresh every epoch.

The lecture's Data Augmentation slide names rotation, vertical flipping and a little added noise;
its AlexNet slides add the paper's random crops and colour (intensity) changes. Here: rotation
±10°, the flips the task tolerates (`flips`: "h", "v", both or none; digits tolerate none), a
random crop of the image padded by 1/8 of its side, brightness and contrast jitter ±20 %, and
Gaussian noise of σ = 3 grey levels. The result is normalised with the model's own config.
"""

from __future__ import annotations

import cv2
import numpy as np

from service.config import PreprocessingConfig
from service.preprocess import normalize


class Augmenter:
    """Callable: uint8 images [N, H, W, C] -> augmented, normalised NCHW float32 inputs."""

    def __init__(self, preprocessing: PreprocessingConfig, flips: str, rng: np.random.Generator) -> None:
        self.preprocessing, self.flips, self.rng = preprocessing, flips, rng

    def one(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        rng = self.rng
        out = image.astype(np.float32)
        if "h" in self.flips and rng.random() < 0.5:
            out = out[:, ::-1]
        if "v" in self.flips and rng.random() < 0.5:
            out = out[::-1]
        rotation = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-10, 10)), 1.0)
        out = cv2.warpAffine(np.ascontiguousarray(out), rotation, (w, h), borderMode=cv2.BORDER_REFLECT)
        out = out.reshape(h, w, -1)
        pad_h, pad_w = max(1, h // 8), max(1, w // 8)
        padded = cv2.copyMakeBorder(out, pad_h, pad_h, pad_w, pad_w, cv2.BORDER_REFLECT).reshape(
            h + 2 * pad_h, w + 2 * pad_w, -1
        )
        top, left = rng.integers(0, 2 * pad_h + 1), rng.integers(0, 2 * pad_w + 1)
        out = padded[top : top + h, left : left + w]
        mean = out.mean()
        out = (out - mean) * rng.uniform(0.8, 1.2) + mean * rng.uniform(0.8, 1.2)
        out = out + rng.normal(0.0, 3.0, out.shape)
        return np.clip(out, 0, 255).astype(np.uint8)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.stack([normalize(self.one(image), self.preprocessing) for image in images])
