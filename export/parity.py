"""Torch-vs-ONNX Runtime parity: the exported graph must compute what the torch model computes.

Both run on the same seeded, non-zero random inputs at several batch sizes (batch 1 and a batch
> 1, which also exercises the dynamic batch axis). The largest absolute difference over every
output element is compared with a tolerance (relative to the outputs' magnitude where it exceeds
1); an export that differs more is refused, because a silently wrong graph is worse than none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from export.exporter import INPUT_NAME, example_input

DEFAULT_TOLERANCE = 1e-4
DEFAULT_BATCH_SIZES = (1, 4)
PARITY_SEED = 20240521


class ParityError(RuntimeError):
    """ONNX Runtime's outputs differ from torch's by more than the tolerance (or could not be computed)."""


@dataclass(frozen=True)
class ParityReport:
    """Largest |torch − onnxruntime| per probe (a batch size, or an input size "HxW"), over all outputs.

    A probe passes when its difference is at most `tolerance × scale`; `scale` is 1 (an absolute
    tolerance) unless the exporter judges relative to its outputs' magnitude (the segmenter does).
    """

    max_abs_diff: dict[int | str, float]
    tolerance: float
    seed: int
    provider: str = "CPUExecutionProvider"
    scale: float = 1.0
    reference: str = "torch"  # what ONNX Runtime was compared with

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values())

    @property
    def bound(self) -> float:
        return self.tolerance * self.scale

    def check(self) -> None:
        """The parity gate: ParityError unless every probe (at least one) is within the bound."""
        failing = {probe: diff for probe, diff in self.max_abs_diff.items() if not diff <= self.bound}
        if not self.max_abs_diff or failing:
            detail = ", ".join(f"{_probe_name(probe)}: {diff:.3g}" for probe, diff in failing.items()) or "none run"
            scaled = f" = tolerance {self.tolerance:g} x output scale {self.scale:.3g}" if self.scale != 1 else ""
            raise ParityError(
                f"refusing to write the model: ONNX Runtime differs from {self.reference} by more than "
                f"{self.bound:g}{scaled} (max abs diff {detail})"
            )

    def as_dict(self) -> dict:
        return {
            "max_abs_diff": {str(b): d for b, d in self.max_abs_diff.items()},
            "tolerance": self.tolerance,
            "scale": self.scale,  # the bound is tolerance x scale (the outputs' magnitude, at least 1)
            "seed": self.seed,
            "batch_sizes": sorted(self.max_abs_diff),  # the probes: batch sizes, or "HxW" input sizes
            "provider": self.provider,
        }


def _probe_name(probe: int | str) -> str:
    return f"batch {probe}" if isinstance(probe, int) else f"input {probe}"


def cpu_session(onnx_bytes: bytes, threads: int = 1):
    """An ONNX Runtime CPU session with a bounded thread count (parity runs beside other work)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def _max_abs_diff(expected: list[np.ndarray], actual: list[np.ndarray]) -> float:
    if len(expected) != len(actual):
        return math.inf
    worst = 0.0
    for e, a in zip(expected, actual):
        if e.shape != a.shape:
            return math.inf
        diff = float(np.max(np.abs(e.astype(np.float64) - a.astype(np.float64)))) if e.size else 0.0
        worst = max(worst, diff if not math.isnan(diff) else math.inf)
    return worst


def measure_parity(
    model: nn.Module,
    onnx_bytes: bytes,
    input_shape: tuple[int, ...],
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES,
    seed: int = PARITY_SEED,
) -> dict[int, float]:
    """Max abs difference per batch size; `inf` when shapes differ or a value is NaN."""
    return _probe(model, onnx_bytes, input_shape, batch_sizes, seed)[0]


def _probe(
    model: nn.Module, onnx_bytes: bytes, input_shape: tuple[int, ...], batch_sizes: tuple[int, ...], seed: int
) -> tuple[dict[int, float], float]:
    """(max abs difference per batch size, the largest |torch output| seen)."""
    model.eval()
    session = cpu_session(onnx_bytes)
    diffs: dict[int, float] = {}
    peak = 0.0
    for batch in batch_sizes:
        x = example_input(input_shape, batch, seed=seed + batch)
        with torch.no_grad():
            outputs = model(x)
        expected = [o.numpy() for o in (outputs if isinstance(outputs, (tuple, list)) else (outputs,))]
        try:
            actual = session.run(None, {INPUT_NAME: x.numpy()})
        except Exception as exc:  # onnxruntime raises its own exception types from C++
            raise ParityError(f"ONNX Runtime failed at batch {batch}: {exc}") from None
        diffs[batch] = _max_abs_diff(expected, actual)
        peak = max([peak, *(float(np.max(np.abs(e))) for e in expected if e.size)])
    return diffs, peak


def check_parity(
    model: nn.Module,
    onnx_bytes: bytes,
    input_shape: tuple[int, ...],
    tolerance: float = DEFAULT_TOLERANCE,
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES,
    seed: int = PARITY_SEED,
) -> ParityReport:
    """Measure parity and raise ParityError if any batch differs by more than `tolerance` times the
    outputs' magnitude (their largest |value| under torch, at least 1).

    Why relative above 1: float32 rounding grows with the values summed. An untrained ResNet-152
    (no zero-initialised residual branches) has logits around 1e6, where ONNX Runtime and torch
    differ by tens in absolute terms and by 5e-5 relative; an absolute bound would refuse every
    such export, while a relative one still catches a wrong graph (its error is of the order of
    the values themselves).
    """
    diffs, peak = _probe(model, onnx_bytes, input_shape, batch_sizes, seed)
    report = ParityReport(diffs, tolerance, seed, scale=max(1.0, peak) if math.isfinite(peak) else 1.0)
    report.check()
    return report
