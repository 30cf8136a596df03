"""Load a PyTorch checkpoint into a zoo model — tensors only, never arbitrary pickled code.

`torch.load(..., weights_only=True)` restricts unpickling to tensors and plain containers, so a
checkpoint cannot run code on the machine that exports it. A file that needs more (a pickled
`nn.Module`, a custom class) is refused with an explanation instead of being loaded unsafely.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

# Wrappers seen in the wild: torchvision's reference scripts save {"model": ...}, Lightning and
# many others {"state_dict": ...}.
_WRAPPER_KEYS = ("state_dict", "model")


class CheckpointError(ValueError):
    """The checkpoint cannot be loaded safely or does not fit the architecture."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read `path` with weights_only unpickling and return its state dict.

    Accepts a raw state dict, or a dict holding one under "state_dict" or "model". A common
    "module." prefix (DataParallel / DDP) is stripped.
    """
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(_refusal(path, str(exc))) from None
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc}") from None
    return _unwrap(data, path)


def _refusal(path: Path, torch_message: str) -> str:
    """Explain a weights-only unpickling failure: a custom/pickled object, or not a checkpoint."""
    found = re.search(r"GLOBAL ([\w.]+)", torch_message)
    if found:
        return (
            f"{path}: refused: loading it needs arbitrary unpickling (it references {found.group(1)}), "
            "which could run code. Only tensors and plain containers are accepted (torch.load "
            "weights_only=True); save `model.state_dict()` instead of the model object or custom classes."
        )
    detail = re.search(r"WeightsUnpickler error: *(.+)", torch_message.replace("\n", " "))
    reason = detail.group(1).split("Check the documentation")[0].strip() if detail else "unreadable pickle"
    return f"{path}: refused: not a tensors-only PyTorch checkpoint ({reason})"


def _unwrap(data: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(data, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(data.get(key), Mapping):
                data = data[key]
                break
    if not isinstance(data, Mapping) or not data:
        raise CheckpointError(f"{path}: not a state dict (expected a mapping of parameter names to tensors)")
    non_tensors = [k for k, v in data.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise CheckpointError(f"{path}: entries that are not tensors: {', '.join(map(str, non_tensors[:10]))}")
    state = dict(data)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_checkpoint(
    model: nn.Module, path: str | Path, training_only_prefixes: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """Load `path` into `model` strictly; returns the state dict that was applied.

    Keys under `training_only_prefixes` are ignored whether or not the checkpoint has them (a
    GoogLeNet saved with or without its auxiliary heads). Any other missing, unexpected or
    wrongly shaped key is refused, naming every such key.
    """
    state = read_state_dict(path)
    check_state_dict(model, state, Path(path), training_only_prefixes)
    expected = model.state_dict()
    filled = {k: state.get(k, expected[k]) for k in expected}  # training-only keys keep their init
    model.load_state_dict(filled, strict=True)
    return state


def _name_some(keys: list[str], limit: int = 20) -> str:
    """Join up to `limit` keys; a resnet50 checkpoint offered to resnet18 has hundreds."""
    shown = ", ".join(keys[:limit])
    return shown if len(keys) <= limit else f"{shown} … and {len(keys) - limit} more"


def check_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], path: Path, training_only_prefixes: tuple[str, ...] = ()
) -> None:
    """Raise CheckpointError naming missing, unexpected and shape-mismatched keys (if any)."""

    def required(key: str) -> bool:
        return not key.startswith(training_only_prefixes) if training_only_prefixes else True

    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state and required(k))
    unexpected = sorted(k for k in state if k not in expected and required(k))
    mismatched = sorted(
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    )
    problems = [
        f"{label}: {_name_some(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{path}: does not fit {type(model).__name__}: " + "; ".join(problems))
