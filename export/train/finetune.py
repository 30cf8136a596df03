"""Fine-tune a bundled model or a user's checkpoint on a folder of images (transfer learning).

    convserve train classifier --data DIR [--from simple_cnn | --from ckpt.pt --arch ARCH] [--freeze]
                               [--epochs N] [--name NAME] [--repo model_repo] [--runs runs]

DIR holds one sub-folder per class (torchvision's ImageFolder layout); the folder names, sorted,
are the labels. Every image goes through service.preprocess's resize with the source model's own
config (what the server will do), a seeded stratified share is held out, the network's last
Linear layer is replaced by one sized to the classes, and `--freeze` trains only that new head
(the backbone keeps the source's features, BatchNorm statistics included). Augmentation follows
the lecture's list (rotation, flips, a little noise) plus the crops and colour jitter of the
AlexNet recipe it cites. The run leaves curves and the confusion matrix (rows = predicted class,
columns = true class, the lecture's layout) in `runs/<name>/`, and ends in the common export
writer: `<repo>/<name>/<version>/` with its config, labels and model card, servable as is.

A bundled model's weights are read back from its ONNX file's initializers (the repository ships
no PyTorch checkpoints) and must reproduce the graph's outputs; simple_cnn, bn_cnn and lenet5 can be
sources, gap_cnn cannot (its exporter folded BatchNorm into the convolutions).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from tqdm import tqdm

from export.checkpoints import load_checkpoint
from export.evaluate.classification import classification_report
from export.model_version import prepare_version, write_version
from export.models import get_model_spec
from export.train.augment import Augmenter
from export.train.folder_data import FolderData, read_image_folder, stratified_split
from export.train.plots import save_confusion_matrix, save_training_curve


class FineTuneError(ValueError):
    """The source model or the data cannot be used for fine-tuning."""


@dataclass(frozen=True)
class FineTuneSettings:
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 1e-3
    freeze: bool = False
    heldout_fraction: float = 0.2
    seed: int = 0
    augment: bool = True
    flips: str = "h"  # "", "h", "v" or "hv": which flips the task tolerates (digits tolerate none)


def bundled_source(repo: Path, name: str) -> tuple[str, Path]:
    """(architecture, ONNX file) of the float version of bundled model `name` (the lowest-numbered
    version whose card names an architecture; INT8 versions record `derived_from` instead)."""
    versions = sorted(
        (p for p in (repo / name).glob("*/model_card.json") if p.parent.name.isdigit()),
        key=lambda p: int(p.parent.name),
    )
    for card_path in versions:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        if card.get("architecture") and "quantization" not in card:
            return card["architecture"], card_path.parent / "model.onnx"
    raise FineTuneError(f"{repo / name}: no float version with a model card naming its architecture")


def load_onnx_weights(model: nn.Module, onnx_path: Path, input_shape: tuple[int, int, int] | None = None) -> None:
    """Fill `model` from the initializers of the graph it was exported to.

    Weights keep their state-dict names in the graph, except those the exporter folded into a
    constant (LeNet-5's C3 weight × its connection mask), which get an anonymous name: such a weight
    is taken from the one unclaimed anonymous initializer of its shape. Fixed buffers (`*_mask`) keep
    the builder's values. Whatever was matched, the loaded model must then reproduce the graph's
    outputs on a random batch (1e-4), or the weights are refused: a wrong match cannot pass.
    """
    graph = onnx.load(str(onnx_path)).graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    anonymous = {k: v for k, v in initializers.items() if k.startswith("onnx::")}
    state, filled, missing = model.state_dict(), {}, []
    for key, value in state.items():
        if key in initializers:
            filled[key] = torch.from_numpy(initializers[key].copy()).reshape(value.shape)
        elif key.endswith("_mask") or not value.is_floating_point():
            filled[key] = value
        else:
            same_shape = [k for k, v in anonymous.items() if tuple(v.shape) == tuple(value.shape)]
            if len(same_shape) != 1:
                missing.append(key)
                continue
            filled[key] = torch.from_numpy(anonymous.pop(same_shape[0]).copy())
    if missing:
        raise FineTuneError(
            f"{onnx_path}: graph lacks weights {', '.join(missing[:5])} (folded at export); "
            "pass the training checkpoint with --from FILE --arch ARCH instead"
        )
    model.load_state_dict(filled, strict=True)
    _check_reproduces(model, onnx_path, graph)


def _check_reproduces(model: nn.Module, onnx_path: Path, graph) -> None:
    from export.parity import cpu_session

    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]]
    x = np.random.default_rng(0).random((2, *dims), dtype=np.float32)
    expected = cpu_session(onnx_path.read_bytes()).run(None, {graph.input[0].name: x})[0]
    with torch.no_grad():
        got = model.eval()(torch.from_numpy(x)).numpy()
    if got.shape != expected.shape or float(np.abs(got - expected).max()) > 1e-4:
        raise FineTuneError(f"{onnx_path}: the weights read from the graph do not reproduce it")


def replace_head(model: nn.Module, num_classes: int) -> nn.Linear:
    """Swap the network's last nn.Linear (outside auxiliary heads) for a fresh one with `num_classes`
    outputs, and resize auxiliary heads' output layers likewise; returns the new main head."""
    parent_name, child_name, head = None, None, None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not name.startswith(("aux1", "aux2")):
            parent_name, _, child_name = name.rpartition(".")
            head = module
    if head is None:
        raise FineTuneError(f"{type(model).__name__} has no Linear layer to replace")
    new_head = nn.Linear(head.in_features, num_classes)
    setattr(model.get_submodule(parent_name) if parent_name else model, child_name, new_head)
    for aux_name in ("aux1", "aux2"):  # GoogLeNet's training-only heads get the new classes too
        aux = getattr(model, aux_name, None)
        if aux is not None and isinstance(getattr(aux, "fc2", None), nn.Linear):
            aux.fc2 = nn.Linear(aux.fc2.in_features, num_classes)
    return new_head


def freeze_backbone(model: nn.Module, head: nn.Module) -> None:
    """Only the head trains; BatchNorm layers of the backbone stay in eval mode (see `train_mode`)."""
    for parameter in model.parameters():
        parameter.requires_grad = False
    for parameter in head.parameters():
        parameter.requires_grad = True


def train_mode(model: nn.Module, frozen: bool) -> None:
    """Training mode, except that a frozen backbone's BatchNorm keeps the source's statistics."""
    model.train()
    if frozen:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def _loss(outputs, target: torch.Tensor) -> torch.Tensor:
    from export.models.lecture_googlenet import googlenet_loss  # plain cross-entropy for one output

    return googlenet_loss(outputs, target)


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return np.concatenate([model(x[i : i + batch_size]).argmax(1).numpy() for i in range(0, len(x), batch_size)])


def fit(
    model: nn.Module, train: FolderData, heldout: FolderData, settings: FineTuneSettings, progress: bool = True
) -> list[dict]:
    """Adam over the trainable parameters; returns one dict per epoch (loss, accuracies)."""
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    augmenter = Augmenter(train.preprocessing, settings.flips, np.random.default_rng(settings.seed))
    clean = torch.from_numpy(train.inputs())
    x_held, y = torch.from_numpy(heldout.inputs()), torch.from_numpy(train.labels)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate)
    steps = settings.epochs * -(-len(y) // settings.batch_size)
    history = []
    with tqdm(total=steps, desc="fine-tune", unit="step", leave=False, disable=not progress) as bar:
        for epoch in range(1, settings.epochs + 1):
            x = torch.from_numpy(augmenter(train.images)) if settings.augment else clean
            order, total = torch.randperm(len(y), generator=generator), 0.0
            train_mode(model, settings.freeze)
            for start in range(0, len(y), settings.batch_size):
                index = order[start : start + settings.batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = _loss(model(x[index]), y[index])
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(index)
                bar.update(1)
            row = {
                "epoch": epoch,
                "loss": total / len(y),
                "train_accuracy": float((predict(model, clean) == train.labels).mean()),
                "heldout_accuracy": float((predict(model, x_held) == heldout.labels).mean()),
            }
            history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", heldout=f"{row['heldout_accuracy']:.3f}")
    return history


def source_model(source: str, arch: str | None, repo: Path) -> tuple[str, nn.Module, dict]:
    """(architecture, model with the source's weights, the card's `weights` entry) for `--from`."""
    path = Path(source)
    if path.suffix in (".pt", ".pth", ".ckpt") or path.is_file():
        if not arch:
            raise FineTuneError("--from a checkpoint file needs --arch (the architecture it was saved from)")
        spec = get_model_spec(arch)
        model = spec.build()
        load_checkpoint(model, path, spec.training_only_prefixes)
        return arch, model, {"source": f"fine-tuned from checkpoint {path.name}"}
    arch_name, onnx_path = bundled_source(repo, source)
    spec = get_model_spec(arch_name)
    labels = json.loads((onnx_path.parent / "model_card.json").read_text(encoding="utf-8")).get("labels") or []
    model = spec.build(num_classes=len(labels) or spec.default_num_classes)
    load_onnx_weights(model, onnx_path)
    return arch_name, model, {"source": f"fine-tuned from bundled model {source} ({onnx_path.parent})"}


def fine_tune(
    data_dir: Path,
    source: str,
    *,
    arch: str | None = None,
    name: str | None = None,
    repo: Path = Path("model_repo"),
    source_repo: Path = Path("model_repo"),
    runs: Path = Path("runs"),
    settings: FineTuneSettings | None = None,
    version: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """The whole command: data, source, head, training, report files, export. Returns the version dir."""
    settings = settings or FineTuneSettings()
    arch, model, weights = source_model(source, arch, source_repo)
    spec = get_model_spec(arch)
    data = read_image_folder(data_dir, spec.preprocessing)
    train, heldout = stratified_split(data, settings.heldout_fraction, settings.seed)
    head = replace_head(model, len(data.classes))
    if settings.freeze:
        freeze_backbone(model, head)
    history = fit(model, train, heldout, settings, progress)
    predicted = predict(model, torch.from_numpy(heldout.inputs()))
    report = classification_report(heldout.labels, predicted, len(data.classes))
    name = name or f"{Path(data_dir).name}_{arch}"
    run_dir = runs / name
    run_dir.mkdir(parents=True, exist_ok=True)
    save_training_curve(history, run_dir / "training_curve.png", title=name)
    save_confusion_matrix(report.confusion, list(data.classes), run_dir / "confusion_matrix.png", title=name)
    prepared = prepare_version(
        model.eval(), spec, name=name, num_classes=len(data.classes), labels=list(data.classes), weights=weights
    )
    training = {
        "data": f"image folder {Path(data_dir).name}: {len(data.labels)} images, {len(data.classes)} classes",
        "split": {
            "description": f"stratified, {settings.heldout_fraction:.0%} held out, seed {settings.seed}",
            "train": len(train.labels),
            "heldout": len(heldout.labels),
        },
        "settings": {**settings.__dict__, "optimizer": "Adam", "loss": "cross-entropy"},
        "final_epoch": history[-1],
        "metrics": {"heldout_accuracy": report.accuracy, "confusion_matrix": report.confusion_card(data.classes)},
        "reproduce": f"convserve train classifier --data {data_dir} --from {source}"
        + (" --freeze" if settings.freeze else "")
        + f" --epochs {settings.epochs}",
    }
    (run_dir / "metrics.json").write_text(json.dumps(training, indent=2) + "\n", encoding="utf-8")
    return write_version(prepared, repo, version=version, overwrite=overwrite, training=training)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="folder with one sub-folder of images per class")
    parser.add_argument(
        "--from",
        dest="source",
        default="simple_cnn",
        help="bundled model name in --repo, or a state-dict file (with --arch); default simple_cnn",
    )
    parser.add_argument(
        "--source-repo",
        type=Path,
        default=Path("model_repo"),
        help="repository holding the bundled --from model (default model_repo)",
    )
    parser.add_argument("--arch", help="architecture of a --from checkpoint file")
    parser.add_argument("--freeze", action="store_true", help="train only the new head")
    parser.add_argument("--epochs", type=int, default=FineTuneSettings.epochs, help="passes over the training share")
    parser.add_argument("--batch-size", type=int, default=FineTuneSettings.batch_size, help="images per step")
    parser.add_argument("--lr", type=float, default=FineTuneSettings.learning_rate, help="Adam learning rate")
    parser.add_argument(
        "--heldout",
        type=float,
        default=FineTuneSettings.heldout_fraction,
        help="share of each class held out",
    )
    parser.add_argument(
        "--flips", choices=["", "h", "v", "hv"], default=FineTuneSettings.flips, help="flips the task tolerates"
    )
    parser.add_argument(
        "--no-augment",
        action="store_true",
        help="train on the images as they are (no flips, rotations, crops, contrast or noise)",
    )
    parser.add_argument(
        "--seed", type=int, default=FineTuneSettings.seed, help="seeds the split, the augmentation and the new head"
    )
    parser.add_argument("--name", help="model name in the repository (default DIR_ARCH)")
    parser.add_argument("--repo", type=Path, default=Path("model_repo"), help="repository the new model goes into")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="where curves and the confusion matrix go")
    parser.add_argument("--version", type=int, help="version number (default: the next free one)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version directory")


def run(args: argparse.Namespace) -> Path:
    settings = FineTuneSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        freeze=args.freeze,
        heldout_fraction=args.heldout,
        seed=args.seed,
        augment=not args.no_augment,
        flips=args.flips,
    )
    version_dir = fine_tune(
        args.data,
        args.source,
        arch=args.arch,
        name=args.name,
        repo=args.repo,
        source_repo=args.source_repo,
        runs=args.runs,
        settings=settings,
        version=args.version,
        overwrite=args.overwrite,
    )
    print(f"wrote {version_dir}")
    return version_dir
