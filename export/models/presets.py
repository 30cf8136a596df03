"""Preprocessing presets shared by several architectures (values, not behaviour).

The transform itself lives in service/preprocess.py; these are only the numbers a config carries,
so that training, export and serving read the same ones.
"""

from __future__ import annotations

from service.config import PreprocessingConfig

# torchvision's ImageNet recipe: shorter side to 256, centre crop 224, RGB in [0, 1], then
# per-channel standardisation with the ImageNet training-set statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_preprocessing(size: int = 224) -> PreprocessingConfig:
    """Centre-crop preprocessing for torchvision classifiers at `size`×`size` (resize to 256/224 of it)."""
    return PreprocessingConfig(
        color_order="rgb",
        resize="center_crop",
        size=(size, size),
        resize_shorter=round(size * 256 / 224),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def digit_preprocessing(padding: int = 0, mean: float = 0.0, std: float = 1.0) -> PreprocessingConfig:
    """Gray MNIST-style digits: stretch to 28×28, optional constant border (LeNet-5 pads to 32×32)."""
    return PreprocessingConfig(
        color_order="gray",
        resize="stretch",
        size=(28, 28),
        interpolation="area",  # photos of digits are shrunk; area averaging avoids aliasing
        padding=padding,
        mean=(mean,),
        std=(std,),
    )
