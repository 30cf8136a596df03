"""The lecture's ImageNet architectures, built by torchvision so that users' checkpoints load as-is.

The lecture (cnn-lecture.txt, "AlexNet ARCHITECTURE", VGG, "GoogLeNet (Inception), 2014",
"ResNet, 2015") walks through AlexNet, VGG-16, GoogLeNet and ResNet-18/34/50. These builders call
torchvision's with `weights=None` (nothing is downloaded) and the standard ImageNet preprocessing,
so torchvision checkpoints load as-is. Where torchvision's network is not the one the lecture
draws (GoogLeNet's 3×3 "5×5" branch and BatchNorm, ResNet v1.5, the one-GPU AlexNet without LRN,
VGG configurations other than D), the lecture's version is registered beside it: see
lecture_googlenet.py, lecture_resnet.py, lecture_alexnet.py, lecture_vgg.py and docs/transfer-learning.md.

GoogLeNet is built with its two auxiliary classifiers, which only run in training mode: the
exported graph is the eval-mode forward (logits only), and a checkpoint saved with or without the
auxiliary heads loads (their keys are declared training-only). `init_weights=True` selects
torchvision's truncated-normal init explicitly (and silences its warning about the default).
"""

from __future__ import annotations

import torchvision
from torch import nn

from export.models.presets import imagenet_preprocessing
from export.models.registry import InputSpec, register_model

_IMAGENET = dict(input=InputSpec(3, 224, 224), preprocessing=imagenet_preprocessing(224), default_num_classes=1000)


@register_model(**_IMAGENET)
def alexnet(*, num_classes: int = 1000) -> nn.Module:
    """AlexNet (torchvision; 61.1M parameters at 1,000 classes)."""
    return torchvision.models.alexnet(weights=None, num_classes=num_classes)


@register_model(**_IMAGENET)
def vgg16(*, num_classes: int = 1000) -> nn.Module:
    """VGG-16 without BatchNorm (torchvision; 138.4M parameters at 1,000 classes)."""
    return torchvision.models.vgg16(weights=None, num_classes=num_classes)


@register_model(**_IMAGENET, training_only_prefixes=("aux1.", "aux2."))
def googlenet(*, num_classes: int = 1000) -> nn.Module:
    """GoogLeNet (torchvision: 3×3 "5×5" branches, BatchNorm; 6.6M parameters; the paper's: googlenet_v1)."""
    return torchvision.models.googlenet(weights=None, num_classes=num_classes, aux_logits=True, init_weights=True)


@register_model(**_IMAGENET)
def resnet18(*, num_classes: int = 1000) -> nn.Module:
    """ResNet-18 (torchvision; 11.7M parameters, 1.8 G multiply-adds at 224×224)."""
    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


@register_model(**_IMAGENET)
def resnet34(*, num_classes: int = 1000) -> nn.Module:
    """ResNet-34 (torchvision; 21.8M parameters, 3.6 G multiply-adds at 224×224)."""
    return torchvision.models.resnet34(weights=None, num_classes=num_classes)


@register_model(**_IMAGENET)
def resnet50(*, num_classes: int = 1000) -> nn.Module:
    """ResNet-50 v1.5 (torchvision: stride on the 3×3; 25.6M parameters, 4.1 G multiply-adds; v1: resnet50_v1)."""
    return torchvision.models.resnet50(weights=None, num_classes=num_classes)
