"""Graph shapes as ONNX reports them (ints for fixed axes, None or a name for free ones), shared by
the load-time checks (service/graph_checks.py, service/detection_shapes.py)."""

from __future__ import annotations


def fixed(axis) -> bool:
    """A fixed axis: a positive int (free axes are None, a symbolic name, or -1 in a config)."""
    return isinstance(axis, int) and axis > 0


def shown(shape: tuple) -> str:
    """A graph shape for messages, "[N, 256, 8]": free axes as their symbolic name or '?'."""
    return "[" + ", ".join(str(a if fixed(a) else (a or "?")) for a in shape) + "]"
