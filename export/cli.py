"""Command line for the PyTorch side: export a zoo model, list the zoo, rebuild the bundled models.

    convserve export ARCH --repo model_repo --name NAME [--version N] [--checkpoint FILE]
                     [--num-classes C] [--labels FILE] [--input-size H W] [--overwrite] [--cam]
    convserve export --module FILE.py:FACTORY --input-shape C,H,W [--labels FILE] [--task T] [--name NAME] ...
    convserve export --torchscript FILE.pt | --exported-program FILE.pt2 --input-shape C,H,W ...
    convserve export --list
    convserve train classifier --data DIR [--from MODEL|FILE --arch ARCH] [--freeze] [--epochs N] ...
    convserve models [--list] [--only NAME] [--max-minutes M] [--repo model_repo] [--runs runs]

`main(argv)` takes the subcommand first (`["export", "lenet5", ...]`) and returns the exit status:
0 on success, 1 when the export is refused (bad checkpoint, parity failure, ...), 2 for usage
errors. A refused export writes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch

from export.checkpoints import CheckpointError, load_checkpoint
from export.exporter import ExportError
from export.model_version import prepare_version, write_version
from export.models import get_model_spec, list_models
from export.parity import DEFAULT_TOLERANCE, ParityError
from service.cli_help import DefaultsHelpFormatter
from service.errors import ConfigError

INIT_SEED = 0  # weights of an export without --checkpoint are torch's init under this seed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convserve", description="Export and build models for convserve.")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser(
        "export",
        help="export a zoo architecture or your own model to an ONNX model version",
        formatter_class=DefaultsHelpFormatter,
    )
    export.add_argument("arch", nargs="?", help=f"architecture: {', '.join(list_models())}")
    export.add_argument("--list", action="store_true", help="list the architectures and exit")
    own = export.add_mutually_exclusive_group()
    own.add_argument(
        "--module",
        help="your own nn.Module: FILE.py:FACTORY or package.module:FACTORY (a class or "
        "a function returning the model)",
    )
    own.add_argument("--torchscript", type=Path, help="a TorchScript file (torch.jit.save)")
    own.add_argument("--exported-program", type=Path, help="a torch.export file (torch.export.save, .pt2)")
    export.add_argument("--input-shape", help="with --module/--torchscript/--exported-program: C,H,W per sample")
    export.add_argument(
        "--task", choices=("classification", "detection", "segmentation"), help="default: guessed from the output"
    )
    export.add_argument("--mean", type=float, nargs="+", help="own models: preprocessing mean (after scaling to 0..1)")
    export.add_argument("--std", type=float, nargs="+", help="own models: preprocessing std")
    export.add_argument("--repo", type=Path, default=Path("model_repo"), help="model repository (default model_repo)")
    export.add_argument("--name", help="model name in the repository (default: the architecture)")
    export.add_argument("--version", type=int, help="version number (default: the next free one)")
    export.add_argument("--checkpoint", type=Path, help="state dict saved with torch.save (weights only)")
    export.add_argument("--num-classes", type=int, help="classes (default: the labels' count, else the arch's)")
    export.add_argument("--labels", type=Path, help="text file, one class label per line")
    export.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="model input height width")
    export.add_argument("--overwrite", action="store_true", help="replace an existing version directory")
    export.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="parity max abs diff allowed")
    export.add_argument(
        "--cam",
        action="store_true",
        help="classifiers: add the `features` output class activation maps need (as export.cam_export)",
    )
    models = commands.add_parser(
        "models",
        help="rebuild the bundled models of model_repo/ (export/train/bundled.py)",
        formatter_class=DefaultsHelpFormatter,
    )
    models.add_argument("--repo", type=Path, default=Path("model_repo"), help="repository to write into")
    models.add_argument("--runs", type=Path, default=Path("runs"), help="training reports (figures, metrics)")
    models.add_argument("--only", action="append", help="only this model, whatever its cost (repeatable)")
    models.add_argument(
        "--max-minutes",
        type=float,
        default=30.0,
        help="without --only: skip (and say so) models whose training takes longer (default 30)",
    )
    models.add_argument(
        "--list", action="store_true", help="print what would be rebuilt or skipped, and why; run nothing"
    )
    train = commands.add_parser(
        "train", help="train a model on your own data (train classifier: fine-tune on a folder)"
    )
    tasks = train.add_subparsers(dest="task", required=True)
    from export.train.finetune import add_arguments

    add_arguments(
        tasks.add_parser(
            "classifier",
            help="fine-tune a bundled model or checkpoint on DIR/<class>/*",
            formatter_class=DefaultsHelpFormatter,
        )
    )
    return parser


def read_labels(path: Path) -> list[str]:
    """One label per line; trailing blank lines ignored, blank labels inside refused."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ExportError(f"cannot read labels file {path}: {exc.strerror}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    labels = [line.strip() for line in lines]
    blank = [i + 1 for i, label in enumerate(labels) if not label]
    if not labels or blank:
        raise ExportError(f"labels file {path}: " + (f"blank label on line(s) {blank}" if blank else "no labels"))
    return labels


def _weights_info(checkpoint: Path | None) -> dict:
    if checkpoint is None:
        return {"source": "random initialisation", "seed": INIT_SEED}
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    return {"source": "checkpoint", "file": checkpoint.name, "sha256": digest}


def run_export(args: argparse.Namespace) -> Path:
    """Build, load weights, export, verify and write one version; returns its directory."""
    spec = get_model_spec(args.arch)
    labels = read_labels(args.labels) if args.labels else None
    num_classes = args.num_classes or (len(labels) if labels else spec.default_num_classes)
    torch.manual_seed(INIT_SEED)
    model = spec.build(num_classes=num_classes)
    if args.checkpoint is not None:
        load_checkpoint(model, args.checkpoint, spec.training_only_prefixes)
    if spec.task != "classification":
        return _export_dense(args, spec, model.eval(), labels)
    described = dict(
        name=args.name or spec.name,
        num_classes=num_classes,
        labels=labels,
        input_hw=tuple(args.input_size) if args.input_size else None,
        weights=_weights_info(args.checkpoint),
        tolerance=args.tolerance,
    )
    if args.cam:
        from export.cam_export import prepare_cam_version

        prepared = prepare_cam_version(model, spec.name, **described)
    else:
        prepared = prepare_version(model, spec, **described)
    version_dir = write_version(prepared, args.repo, version=args.version, overwrite=args.overwrite)
    diffs = ", ".join(f"batch {b}: {d:.2e}" for b, d in prepared.parity.max_abs_diff.items())
    print(f"wrote {version_dir} (parity max abs diff {diffs})")
    return version_dir


def _export_dense(args: argparse.Namespace, spec, model, labels: list[str] | None) -> Path:
    """Detectors and segmenters: the same files their training scripts write (one contract per model)."""
    from export.writer import write_model_version

    name = args.name or spec.name
    if spec.task == "segmentation":
        if args.input_size:
            raise ExportError("segmenters are exported with free height and width; --input-size does not apply")
        from export.train.segmenter import ANY_SIZE_PARITY, segmenter_files

        files = segmenter_files(
            model,
            name=name,
            architecture=spec.name,
            labels=labels,
            preprocessing=spec.preprocessing,
            card={"weights": _weights_info(args.checkpoint)},
            parity_sizes=ANY_SIZE_PARITY,
        )
    else:
        from export.train.detector import detector_files

        files = detector_files(model, None, name, tuple(labels) if labels else None, _weights_info(args.checkpoint))
    version_dir = write_model_version(files, args.repo, version=args.version, overwrite=args.overwrite)
    print(f"wrote {version_dir} (parity max abs diff {files.parity.worst:.2e})")
    return version_dir


def list_zoo() -> None:
    """Print each architecture with its task, default input (C×H×W) and summary."""
    for name in list_models():
        spec = get_model_spec(name)
        shape = f"{spec.input.channels}×{spec.input.height}×{spec.input.width}"
        print(f"{name:14s} {spec.task:15s} {shape:>11s}  {spec.summary}")


def _run_train(args: argparse.Namespace) -> int:
    from export.train.finetune import FineTuneError, run
    from export.train.folder_data import FolderDataError

    try:
        run(args)
    except KeyError as exc:
        print(f"convserve train: error: {exc.args[0]}", file=sys.stderr)
        return 2
    except (FineTuneError, FolderDataError, CheckpointError, ExportError, ParityError) as exc:
        print(f"convserve train: refused: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "train":
        return _run_train(args)
    if args.command == "models":
        from export.train.bundled import run

        return run(args.repo, args.runs, args.only, args.max_minutes, args.list)
    if args.list:
        list_zoo()
        return 0
    own_model = args.module or args.torchscript or args.exported_program
    if own_model and args.arch:
        parser.error("give an architecture or --module/--torchscript/--exported-program, not both")
    if own_model and not args.input_shape:
        parser.error("--module, --torchscript and --exported-program need --input-shape C,H,W")
    if not args.arch and not own_model:
        parser.error("export needs an architecture, --module, --torchscript or --exported-program (or --list)")
    try:
        if own_model:
            from export.custom_export import run_user_export

            run_user_export(args, read_labels(args.labels) if args.labels else None)
        else:
            run_export(args)
    except ConfigError as exc:
        print(f"convserve export: refused: {exc}", file=sys.stderr)
        return 1
    except KeyError as exc:
        print(f"convserve export: error: {exc.args[0]}", file=sys.stderr)
        return 2
    except (CheckpointError, ExportError, ParityError) as exc:
        print(f"convserve export: refused: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
