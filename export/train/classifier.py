"""Train the bundled digit classifiers (simple_cnn, bn_cnn, lenet5) and export them.

    python -m export.train.classifier            # all three (convserve models also remakes their INT8 versions)
    python -m export.train.classifier --only lenet5 --repo /tmp/repo

Every image goes through `service.preprocess` with the model's own config (what the server does),
the split is the fixed stratified 80/20 one from export/data/mnist.py, and every random choice
is seeded (weights, shuffling) with deterministic kernels on a fixed thread count, so a rerun on
the same machine and torch build reproduces the same weights and numbers. A run leaves, in
`runs/<model>/`: training_curve.png, confusion_matrix.png, metrics.json and metrics.md; the model
itself is exported to `<repo>/<model>/1/` with its config, labels and model card.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from export.data.mnist import MNIST_DESCRIPTION, SPLIT_DESCRIPTION, SPLIT_SEED, mnist_split, sklearn_digits_as_mnist
from export.data.mnist import jitter_digits, to_model_inputs
from export.evaluate.classification import ClassificationReport, classification_report, onnx_logits, torch_logits
from export.model_version import prepare_version, write_version
from export.models import get_model_spec
from export.train.plots import save_confusion_matrix, save_training_curve

LABELS = [str(d) for d in range(10)]
AUGMENTATION = "export.data.mnist.jitter_digits: per epoch, rotation ±10°, zoom ±10 %, shift ±2 px (seeded)"


@dataclass(frozen=True)
class TrainingData:
    """Raw uint8 training images [N, 28, 28], labels [N], and the preprocessing that turns
    images into model inputs (service.preprocess with the model's config)."""

    images: np.ndarray
    labels: np.ndarray
    inputs: Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int = 32
    learning_rate: float = 1e-3
    lr_decay: float = 0.7  # multiplied into the learning rate after every epoch
    seed: int = 0
    threads: int = 1
    augment: bool = False  # fresh seeded jitter_digits() of the training images every epoch


# Accuracy the held-out split must reach (the targets) and each model's recipe.
TARGETS = {"simple_cnn": 0.95, "bn_cnn": 0.96, "lenet5": 0.97}
RECIPES = {
    "simple_cnn": TrainSettings(epochs=8, learning_rate=3e-3, lr_decay=0.85),
    "bn_cnn": TrainSettings(epochs=5),
    "lenet5": TrainSettings(epochs=14, learning_rate=3e-3, lr_decay=0.85, augment=True),
}


def seed_everything(settings: TrainSettings) -> torch.Generator:
    """Fix torch's global seed, kernels and thread count; return the generator for shuffling."""
    torch.manual_seed(settings.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(settings.threads)
    return torch.Generator().manual_seed(settings.seed)


def train_epoch(model: nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor, settings, generator, bar) -> float:
    """One pass over (x, y) in seeded random order; returns the mean training loss."""
    model.train()
    order = torch.randperm(len(x), generator=generator)
    total = 0.0
    for start in range(0, len(x), settings.batch_size):
        index = order[start : start + settings.batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x[index]), y[index])
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(index)
        bar.update(1)
    return total / len(x)


def fit(model: nn.Module, train: TrainingData, held_out, settings: TrainSettings, progress: bool = True) -> list[dict]:
    """Adam with per-epoch exponential decay; returns one dict per epoch.

    The held-out accuracy is recorded for the training curve only; nothing is selected on it
    (the number of epochs is fixed in RECIPES).
    """
    generator = seed_everything(settings)
    rng = np.random.default_rng(settings.seed)
    clean = train.inputs(train.images)
    y = torch.from_numpy(np.asarray(train.labels))
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=settings.lr_decay)
    steps = settings.epochs * -(-len(y) // settings.batch_size)
    history = []
    with tqdm(total=steps, desc=type(model).__name__, unit="step", leave=False, disable=not progress) as bar:
        for epoch in range(1, settings.epochs + 1):
            x = train.inputs(jitter_digits(train.images, rng)) if settings.augment else clean
            loss = train_epoch(model, optimizer, torch.from_numpy(x), y, settings, generator, bar)
            scheduler.step()
            train_acc = float((torch_logits(model, clean).argmax(1) == train.labels).mean())
            test_acc = float((torch_logits(model, held_out[0]).argmax(1) == held_out[1]).mean())
            history.append({"epoch": epoch, "loss": loss, "train_accuracy": train_acc, "heldout_accuracy": test_acc})
            bar.set_postfix(loss=f"{loss:.3f}", heldout=f"{test_acc:.3f}")
    return history


def _report_files(run_dir: Path, name: str, history, heldout: ClassificationReport, digits: ClassificationReport):
    run_dir.mkdir(parents=True, exist_ok=True)
    save_training_curve(history, run_dir / "training_curve.png", title=name)
    save_confusion_matrix(heldout.confusion, LABELS, run_dir / "confusion_matrix.png", title=f"{name}: held-out MNIST")
    metrics = {
        "heldout": {"accuracy": heldout.accuracy, "per_class": heldout.per_class(LABELS)},
        "sklearn_digits": {"accuracy": digits.accuracy, "per_class": digits.per_class(LABELS)},
        "history": history,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    markdown = heldout.as_markdown(LABELS, f"{name}: held-out MNIST (1,000 images)")
    markdown += "\n" + digits.as_markdown(LABELS, f"{name}: scikit-learn digits (1,797 images)")
    (run_dir / "metrics.md").write_text(f"# {name}\n\n" + markdown)


def train_and_export(name: str, repo: Path, runs: Path, progress: bool = True) -> dict:
    """Train one bundled model, evaluate the exported ONNX graph, write reports and the version."""
    spec, settings = get_model_spec(name), RECIPES[name]
    split = mnist_split()
    prep = spec.preprocessing
    train = TrainingData(split.train_images, split.train_labels, lambda images: to_model_inputs(images, prep))
    held_out = (to_model_inputs(split.test_images, prep), split.test_labels)
    digits_images, digits_labels = sklearn_digits_as_mnist()
    seed_everything(settings)
    model = spec.build(num_classes=10)
    history = fit(model, train, held_out, settings, progress)
    weights = {"source": "trained", "by": "export/train/classifier.py (convserve models)"}
    prepared = prepare_version(model, spec, name=name, num_classes=10, labels=LABELS, weights=weights)
    # The reported numbers are those of the exported ONNX graph, which is what gets served.
    heldout = classification_report(held_out[1], onnx_logits(prepared.graph.onnx_bytes, held_out[0]).argmax(1), 10)
    digits_inputs = to_model_inputs(digits_images, prep)
    digits = classification_report(digits_labels, onnx_logits(prepared.graph.onnx_bytes, digits_inputs).argmax(1), 10)
    _report_files(runs / name, name, history, heldout, digits)
    if heldout.accuracy < TARGETS[name]:
        raise RuntimeError(f"{name}: held-out accuracy {heldout.accuracy:.4f} is below the target {TARGETS[name]}")
    training = _training_section(name, settings, history, heldout, digits)
    write_version(prepared, repo, version=1, overwrite=True, training=training)
    return {"model": name, "heldout_accuracy": heldout.accuracy, "sklearn_digits_accuracy": digits.accuracy}


def _training_section(
    name: str, settings: TrainSettings, history, heldout: ClassificationReport, digits: ClassificationReport
):
    return {
        "data": MNIST_DESCRIPTION,
        "split": {"description": SPLIT_DESCRIPTION, "seed": SPLIT_SEED, "train": 4000, "heldout": 1000},
        "settings": {**asdict(settings), "optimizer": "Adam", "loss": "cross-entropy", "lr_schedule": "exponential"},
        "augmentation": AUGMENTATION if settings.augment else None,
        "final_epoch": history[-1],
        "metrics": {
            "heldout_accuracy": heldout.accuracy,
            "heldout_per_class": heldout.per_class(LABELS),
            "confusion_matrix": heldout.confusion_card(LABELS),
            "sklearn_digits_accuracy": digits.accuracy,
            "sklearn_digits_note": "scikit-learn load_digits, 1,797 8×8 images scaled to 0–255, resized to 20×20 "
            "and padded to 28×28 (MNIST framing); never used for training",
        },
        "reproduce": f"convserve models --only {name}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="convserve models", description="Train and export the bundled digit models.")
    parser.add_argument("--repo", type=Path, default=Path("model_repo"), help="model repository to write into")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="where training reports go")
    parser.add_argument("--only", choices=sorted(RECIPES), action="append", help="train only these models")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    for name in args.only or list(RECIPES):
        result = train_and_export(name, args.repo, args.runs, progress=not args.no_progress)
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
