"""Make `nn.AdaptiveAvgPool2d` exportable at any input size.

The TorchScript ONNX exporter only handles adaptive average pooling when the output size divides
the input size (or is 1×1). AlexNet and VGG-16 pool to 6×6 / 7×7, so at any input other than
224×224 (e.g. VGG-16 at 32×32, whose last feature map is 1×1) export fails. With the input height
and width fixed in the exported graph, adaptive pooling is a fixed linear map along each axis:

    y[n, c] = P_h · x[n, c] · P_wᵀ,   P_h[i, j] = 1/len(bin_i) if j ∈ bin_i else 0,
    bin_i = [floor(i·H/out_h), ceil((i+1)·H/out_h))          (torch's definition of the bins)

which exports as two MatMuls. `exportable_adaptive_pools` swaps such layers in for the duration of
an export and restores the originals; the parity check then compares the ONNX graph with the
untouched torch model.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


def adaptive_pool_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """[out_size, in_size] averaging matrix whose rows are torch's adaptive pooling bins."""
    matrix = torch.zeros(out_size, in_size)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = math.ceil((i + 1) * in_size / out_size)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class MatmulAdaptiveAvgPool2d(nn.Module):
    """Adaptive average pooling for a fixed input size: [N, C, H, W] → [N, C, out_h, out_w]."""

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]):
        super().__init__()
        self.register_buffer("rows", adaptive_pool_matrix(in_hw[0], out_hw[0]), persistent=False)
        self.register_buffer("cols_t", adaptive_pool_matrix(in_hw[1], out_hw[1]).T.contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(self.rows, x), self.cols_t)


def _output_hw(module: nn.AdaptiveAvgPool2d, in_hw: tuple[int, int]) -> tuple[int, int]:
    size = module.output_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return tuple(in_hw[i] if size[i] is None else size[i] for i in range(2))  # type: ignore[return-value]


def _needs_swap(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> bool:
    """Every adaptive pool but the global one (exported as GlobalAveragePool). Even when the output
    divides the input, the exporter needs the input size in the traced graph, which some layers
    upstream hide (LocalResponseNorm does: VGG A-LRN failed with "input size not accessible")."""
    return out_hw != (1, 1)


def _exportable_pool(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> nn.Module:
    """At a fixed input size: the identity when it keeps the size (VGG's 7x7 at 224), else the matrix form."""
    return nn.Identity() if in_hw == out_hw else MatmulAdaptiveAvgPool2d(in_hw, out_hw)


def _pool_input_sizes(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Run `example` through `model` and record the input (H, W) of every AdaptiveAvgPool2d."""
    sizes: dict[str, tuple[int, int]] = {}

    def recorder(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            sizes[name] = tuple(args[0].shape[-2:])

        return hook

    handles = [
        module.register_forward_pre_hook(recorder(name))
        for name, module in model.named_modules()
        if isinstance(module, nn.AdaptiveAvgPool2d)
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return sizes


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


@contextmanager
def exportable_adaptive_pools(model: nn.Module, example: torch.Tensor) -> Iterator[list[str]]:
    """Within the block, adaptive pools other than the global one are their fixed-size equivalents
    at `example`'s size (identity or matrix product); yields the names of the swapped layers."""
    swapped: dict[str, nn.Module] = {}
    for name, in_hw in _pool_input_sizes(model, example).items():
        original = model.get_submodule(name)
        out_hw = _output_hw(original, in_hw)
        if _needs_swap(in_hw, out_hw):
            swapped[name] = original
            _set_submodule(model, name, _exportable_pool(in_hw, out_hw))
    try:
        yield sorted(swapped)
    finally:
        for name, original in swapped.items():
            _set_submodule(model, name, original)
