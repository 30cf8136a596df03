"""Transfer learning on few labelled images: from scratch vs fine-tuned from a bundled backbone.

    python -m export.transfer_study            # prints the Markdown table of docs/transfer-learning.md

Target task: scikit-image's `lfw_subset` (ships with the package: 100 face crops and 100 non-face
crops, 25×25 grey), faces vs non-faces. 40 images per class are held out once (seed 0); the
training sets take the first 10, 50 or all 60 of the remaining images per class (in a seeded
order). Each cell trains simple_cnn (the bundled MNIST model's architecture, 28×28 grey input,
the images stretched to it by service.preprocess) three ways, with the same optimiser, epochs and
augmentation, and reports held-out accuracy as the mean over seeds 0, 1 and 2 (min–max):
  scratch     random initialisation, every layer trained
  fine-tune   the bundled simple_cnn's weights (from its ONNX file), new 2-class head, every layer trained
  frozen      the same, but only the new head trained (`--freeze`)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from export.models import build_model, get_model_spec
from export.train.finetune import FineTuneSettings, fit, freeze_backbone, predict, replace_head, source_model
from export.train.folder_data import FolderData
from service.preprocess import resize_image

BACKBONE = "simple_cnn"
HELDOUT_PER_CLASS = 40
SIZES = (10, 50, "all")
SEEDS = (0, 1, 2)
ARMS = ("scratch", "fine-tune", "frozen")
SETTINGS = dict(epochs=30, batch_size=16, learning_rate=3e-3, flips="h")  # faces tolerate mirroring


def face_data() -> tuple[FolderData, FolderData]:
    """(training pool, held-out) of lfw_subset resized with the backbone's serving config."""
    from skimage.data import lfw_subset

    preprocessing = get_model_spec(BACKBONE).preprocessing
    raw = np.round(lfw_subset() * 255).astype(np.uint8)
    images = np.stack([resize_image(image, preprocessing)[0].reshape(28, 28, 1) for image in raw])
    labels = np.repeat([0, 1], 100)  # lfw_subset: 100 faces first, then 100 non-faces
    data = FolderData(images, labels, ("face", "non-face"), preprocessing)
    rng = np.random.default_rng(0)
    order = [rng.permutation(np.flatnonzero(labels == c)) for c in (0, 1)]
    held = np.concatenate([o[:HELDOUT_PER_CLASS] for o in order])
    pool = np.concatenate([o[HELDOUT_PER_CLASS:] for o in order])  # class 0's 60, then class 1's 60
    return data.subset(pool), data.subset(held)


def first_per_class(pool: FolderData, count: int | str) -> FolderData:
    if count == "all":
        return pool
    index = np.concatenate([np.flatnonzero(pool.labels == c)[:count] for c in range(len(pool.classes))])
    return pool.subset(index)


def run_arm(arm: str, train: FolderData, heldout: FolderData, seed: int, repo: Path) -> float:
    settings = FineTuneSettings(**SETTINGS, seed=seed, freeze=arm == "frozen")
    torch.manual_seed(seed)
    if arm == "scratch":
        model = build_model(BACKBONE, num_classes=len(train.classes))
    else:
        _, model, _ = source_model(BACKBONE, None, repo)
        torch.manual_seed(seed)
        head = replace_head(model, len(train.classes))
        if settings.freeze:
            freeze_backbone(model, head)
    fit(model, train, heldout, settings, progress=False)
    return float((predict(model, torch.from_numpy(heldout.inputs())) == heldout.labels).mean())


def study(repo: Path) -> dict[tuple[str, str], list[float]]:
    torch.set_num_threads(1)
    pool, heldout = face_data()
    results = {}
    for size in SIZES:
        train = first_per_class(pool, size)
        for arm in ARMS:
            results[(str(size), arm)] = [run_arm(arm, train, heldout, seed, repo) for seed in SEEDS]
    return results


def markdown(results: dict[tuple[str, str], list[float]], pool_size: int = 60) -> str:
    header = "| images per class | " + " | ".join(ARMS) + " |"
    lines = [header, "|---|" + "---|" * len(ARMS)]
    for size in SIZES:
        label = f"all ({pool_size})" if size == "all" else str(size)
        cells = [f"{np.mean(v):.3f} ({min(v):.3f}–{max(v):.3f})" for v in (results[(str(size), a)] for a in ARMS)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("model_repo"), help="where the bundled backbone is")
    args = parser.parse_args(argv)
    print(markdown(study(args.repo)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
