"""Export a model nobody here wrote: the user's own nn.Module, a TorchScript file or a torch.export file.

    convserve export --module my_net.py:build --input-shape 3,64,64 --labels labels.txt --name mynet
    convserve export --module mypkg.nets:Net --input-shape 1,28,28
    convserve export --torchscript net.pt --input-shape 3,224,224
    convserve export --exported-program net.pt2 --input-shape 3,224,224

The model goes through the same steps as a zoo architecture: ONNX export with a dynamic batch
axis, the parity gate against torch, and the common writer (staging directory, model card). Its
config is the one `convserve config init` writes for the exported graph (service/config_init.py),
so a foreign model gets the same guesses, and the same list of what to check, either way.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

import onnx
import torch
from torch import nn

from export.exporter import ExportError, export_onnx
from export.parity import check_parity
from export.writer import VersionFiles, write_model_version
from service.config import parse_model_config
from service.config_init import Draft, draft_config

SEED = 0  # the torch seed before the factory runs (its random initialisation, if it has no weights)


def parse_input_shape(text: str) -> tuple[int, ...]:
    """`C,H,W` (or any per-sample shape) as positive integers."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ExportError(f"--input-shape must be integers separated by commas (C,H,W), got {text!r}") from None
    if not shape or any(size <= 0 for size in shape):
        raise ExportError(f"--input-shape sizes must be positive, got {text!r}")
    return shape


def _import_target(target: str):
    """`path/to/file.py:NAME` or `package.module:NAME` → the named object."""
    module_part, _, attribute = target.rpartition(":")
    if not module_part or not attribute:
        raise ExportError(f"--module must be FILE.py:FACTORY or package.module:FACTORY, got {target!r}")
    if module_part.endswith(".py"):
        path = Path(module_part)
        if not path.is_file():
            raise ExportError(f"--module: no such file {path}")
        spec = importlib.util.spec_from_file_location(f"convserve_user_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.resolve().parent))  # the file may import its neighbours
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # the user's code: say where it failed, not a traceback into ours
            raise ExportError(f"--module: importing {path} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            sys.path.remove(str(path.resolve().parent))
    else:
        try:
            module = importlib.import_module(module_part)
        except Exception as exc:
            raise ExportError(f"--module: importing {module_part} failed: {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, attribute):
        raise ExportError(f"--module: {module_part} has no {attribute!r}")
    return getattr(module, attribute)


class _ExportedProgramModule(nn.Module):
    """A torch.export program as a module exporters can call `.eval()` on (its own module refuses to).

    The program was captured in the mode it was exported in; it is held outside the module tree so
    that train/eval never reach it.
    """

    def __init__(self, program_module):
        super().__init__()
        for parameter in program_module.parameters():  # traced as constants, which must not need grad
            parameter.requires_grad_(False)
        object.__setattr__(self, "program_module", program_module)

    def forward(self, *inputs):
        try:
            return self.program_module(*inputs)
        except AssertionError as exc:  # torch.export's shape guards: the program was captured at fixed sizes
            shape = list(inputs[0].shape) if inputs else []
            raise ExportError(
                f"--exported-program does not take input {shape} ({exc}); the server batches requests, so "
                "capture the program with a dynamic batch axis: torch.export.export(model, (example,), "
                "dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))"
            ) from None


def load_user_model(args: argparse.Namespace) -> tuple[nn.Module, dict]:
    """The eval-mode model and where it came from (for the model card)."""
    torch.manual_seed(SEED)
    if args.module:
        built = _import_target(args.module)
        try:
            model = built if isinstance(built, nn.Module) else built()
        except Exception as exc:
            raise ExportError(f"--module {args.module}: the factory raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(model, nn.Module):
            raise ExportError(f"--module {args.module} returned {type(model).__name__}, not a torch.nn.Module")
        source = {"source": "module", "factory": args.module}
    else:
        path = Path(args.torchscript or args.exported_program)
        if not path.is_file():
            raise ExportError(f"no such file {path}")
        if args.torchscript:
            model, kind = torch.jit.load(str(path), map_location="cpu"), "torchscript"
        else:
            model, kind = _ExportedProgramModule(torch.export.load(str(path)).module()), "torch.export"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        source = {"source": kind, "file": path.name, "sha256": digest}
    if args.checkpoint is not None:
        from export.checkpoints import load_checkpoint

        load_checkpoint(model, args.checkpoint, ())
        source["checkpoint"] = args.checkpoint.name
    return model.eval(), source


def _output_names(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[str, ...]:
    from export.exporter import probe_output_shapes

    count = len(probe_output_shapes(model, input_shape))
    return ("logits",) if count == 1 else tuple(f"output{i}" for i in range(count))


def prepare_user_version(args: argparse.Namespace, labels: list[str] | None) -> tuple[VersionFiles, Draft]:
    """Export, check parity and draft the config, all in memory (nothing is written on a refusal)."""
    input_shape = parse_input_shape(args.input_shape)
    model, source = load_user_model(args)
    graph = export_onnx(model, input_shape, _output_names(model, input_shape))
    parity = check_parity(model, graph.onnx_bytes, input_shape, tolerance=args.tolerance)
    name = args.name or _default_name(args)
    classes = graph.output_shapes[0][-1] if graph.output_shapes[0] else None
    if labels is not None and args.task in (None, "classification") and classes != len(labels):
        raise ExportError(f"{len(labels)} labels given but the model returns {classes} scores")
    draft = draft_config(onnx.load_from_string(graph.onnx_bytes), name, args.task, labels)
    preprocessing = draft.data.get("preprocessing")
    if preprocessing is not None and (args.mean or args.std):
        preprocessing.update({k: list(v) for k, v in (("mean", args.mean), ("std", args.std)) if v})
        draft.checks = [c for c in draft.checks if not c.startswith("preprocessing: scale")]
    config = parse_model_config(draft.data, f"config for {name}")
    card = {"architecture": type(model).__name__, "weights": source, "input_shape": list(input_shape)}
    files = VersionFiles(
        config=config, onnx_bytes=graph.onnx_bytes, parity=parity, card=card, labels=tuple(labels) if labels else None
    )
    return files, draft


def _default_name(args: argparse.Namespace) -> str:
    if args.module:
        return args.module.rpartition(":")[2].lower()
    return Path(args.torchscript or args.exported_program).stem


def run_user_export(args: argparse.Namespace, labels: list[str] | None) -> Path:
    files, draft = prepare_user_version(args, labels)
    version_dir = write_model_version(files, args.repo, version=args.version, overwrite=args.overwrite)
    print(f"wrote {version_dir} (parity max abs diff {files.parity.worst:.2e})")
    for line in draft.guesses:
        print(f"  guessed {line}")
    for line in draft.checks:
        print(f"  check   {line}")
    return version_dir
