"""Parameter and multiply-accumulate counts for the model card.

MACs are counted the way the ResNet paper's "FLOPs" row is (multiply-adds of convolutions and
fully-connected layers; BatchNorm, activations, pooling and additions are left out), by forward
hooks on `nn.Conv2d` and `nn.Linear` during one forward pass of a single image. No extra package.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParameterCount:
    """`trainable`: values an optimiser can change and that reach the output (masked-out weights
    excluded); `stored`: values in parameter tensors; `buffers`: non-trainable state such as
    BatchNorm running statistics (integer counters like `num_batches_tracked` excluded)."""

    trainable: int
    stored: int
    buffers: int


def _masked_out(module: nn.Module) -> int:
    """Weight entries a fixed `weight_mask` buffer zeroes (see lenet5.MaskedConv2d)."""
    mask = getattr(module, "weight_mask", None)
    weight = getattr(module, "weight", None)
    if mask is None or weight is None:
        return 0
    return int(weight.numel() - torch.broadcast_to(mask != 0, weight.shape).sum())


def count_parameters(model: nn.Module, exclude_prefixes: tuple[str, ...] = ()) -> ParameterCount:
    """Count parameters and floating-point buffers, skipping names under `exclude_prefixes`
    (training-only heads such as GoogLeNet's `aux1.`, which the exported graph does not contain)."""

    def kept(name: str) -> bool:
        return not any(name.startswith(prefix) for prefix in exclude_prefixes)

    params = [(n, p) for n, p in model.named_parameters() if kept(n)]
    stored = sum(p.numel() for _, p in params)
    trainable = sum(p.numel() for _, p in params if p.requires_grad)
    masked = sum(_masked_out(m) for n, m in model.named_modules() if kept(n + "."))
    buffers = sum(
        b.numel() for n, b in model.named_buffers() if kept(n) and b.is_floating_point() and not n.endswith("_mask")
    )
    return ParameterCount(trainable=trainable - masked, stored=stored, buffers=buffers)


def _conv_macs(module: nn.Conv2d, output: torch.Tensor) -> int:
    """Per image: output positions × (input channels per group × kernel area) per output channel,
    with a connection mask's zero entries left out."""
    kernel_area = module.kernel_size[0] * module.kernel_size[1]
    connections = module.out_channels * (module.in_channels // module.groups)
    mask = getattr(module, "weight_mask", None)
    if mask is not None:
        connections = int((mask.reshape(mask.shape[0], mask.shape[1], -1) != 0).any(-1).sum())
    return int(output.shape[2] * output.shape[3]) * connections * kernel_area


def _linear_macs(module: nn.Linear, output: torch.Tensor) -> int:
    """Per image: in_features × out_features for every position of the leading non-batch axes."""
    positions = int(output[0].numel() // module.out_features)
    return positions * module.in_features * module.out_features


def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass for one image of `input_shape` (C, H, W).

    Only shapes matter, so a model built on the "meta" device (`with torch.device("meta"):`)
    is counted without computing anything; the input is made on the model's device.
    """
    device = next(model.parameters()).device
    total = 0

    def hook(module: nn.Module, _inputs, output) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += _conv_macs(module, output)
        elif isinstance(module, nn.Linear):
            total += _linear_macs(module, output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total
