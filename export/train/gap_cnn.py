"""Train gap_cnn on seeded synthetic single-object scenes and bundle it in model_repo/gap_cnn.

    python -m export.train.gap_cnn                  # train (~10 min on 2 CPU threads), evaluate, export
    python -m export.train.gap_cnn --export-only    # re-export runs/gap_cnn/checkpoint.pt

The task: which one of five objects (a face crop or a drawn circle, square, triangle, star; random
size, position and colour) is in a photo-textured scene with clutter lines and sensor noise
(export/data/scenes.py). Only the class is taught, never where the object is: localisation by the
class activation map is what the evaluation measures afterwards (export/evaluate/cam.py), on
held-out scenes whose faces and backgrounds training never saw, with the exact ONNX bytes that are
then written, and the numbers go into the model card.

Images go through service.preprocess exactly as the server sends them (RGB, stretch to 64×64,
area interpolation, normalisation). Logs and the checkpoint go to runs/gap_cnn/ (git-ignored).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from export.cam_export import prepare_cam_version
from export.data.scenes import SCENE_CLASSES, make_scene, make_scenes
from export.evaluate.cam import CAM_SCENE_SPEC, HELDOUT_COUNT, evaluate_localisation, heldout_scenes
from export.evaluate.confusion_cards import scene_report
from export.model_version import write_version
from export.models import build_model, get_model_spec
from export.parity import cpu_session
from service.config import CamConfig, ModelConfig, PostprocessingConfig, TensorSpec
from service.preprocess import convert_color, normalize, resize_image

RUN_DIR = Path("runs/gap_cnn")
REPO = Path("model_repo")
PREPROCESSING = get_model_spec("gap_cnn").preprocessing


def scene_pool(seed: int, count: int, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """`count` scenes resized to the model input: (uint8 RGB [N, 64, 64, 3], labels int64 [N])."""
    images = np.zeros((count, *PREPROCESSING.size, 3), dtype=np.uint8)
    labels = np.zeros(count, dtype=np.int64)
    for index in range(count):
        scene = make_scene(np.random.default_rng([seed, index]), CAM_SCENE_SPEC, split)
        images[index], _ = resize_image(convert_color(scene.image, "rgb", PREPROCESSING.color_order), PREPROCESSING)
        labels[index] = scene.labels[0]
    return images, labels


def cutout(images: np.ndarray, rng: np.random.Generator, probability: float = 0.5, sizes=(12, 24)) -> np.ndarray:
    """Grey out one random square (mean colour) in a share of the images (DeVries & Taylor, 2017).

    Why: when the most telling part of an object (a star's tips, a disc's rim) is sometimes hidden,
    the network has to use the rest of it too, so the class activation map spreads over the whole
    object (the idea of Hide-and-Seek, Singh & Lee, 2017) and its box fits the object better.
    """
    images = images.copy()
    height, width = images.shape[1:3]
    grey = np.uint8(round(PREPROCESSING.mean[0] / PREPROCESSING.scale))
    for index in np.flatnonzero(rng.random(len(images)) < probability):
        size = int(rng.integers(sizes[0], sizes[1] + 1))
        top, left = (int(rng.integers(-size // 2, extent - size // 2)) for extent in (height, width))
        images[index, max(0, top) : top + size, max(0, left) : left + size] = grey
    return images


def to_tensor(
    images: np.ndarray, rng: np.random.Generator | None, cutout_share: float = 0.5, cutout_max: int = 24
) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> normalised float NCHW; with `rng`, random horizontal flips and cutout."""
    if rng is not None:
        flip = rng.random(len(images)) < 0.5
        flipped = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
        images = cutout(flipped, rng, cutout_share, (min(12, cutout_max), cutout_max))
    return torch.from_numpy(np.stack([normalize(np.ascontiguousarray(image), PREPROCESSING) for image in images]))


def cosine_lr(step: int, total: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def accuracy(model, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        predicted = torch.cat(
            [model(to_tensor(images[s : s + 256], None)).argmax(1) for s in range(0, len(images), 256)]
        )
    model.train()
    return float((predicted.numpy() == labels).mean())


class TorchSession:
    """The `run(names, inputs)` of an ONNX Runtime session, computed by the torch model (for
    monitoring localisation during training with the evaluation's own code)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def run(self, _names, inputs: dict) -> list[np.ndarray]:
        self.model.eval()
        with torch.no_grad():
            features = self.model.features(torch.from_numpy(next(iter(inputs.values()))))
            logits = self.model.fc(features.mean(dim=(2, 3)))
        self.model.train()
        return [logits.numpy(), features.numpy()]


def localisation(model, monitor):
    """Localisation report on train-split scenes (never the held-out ones used for the card)."""
    weights = model.fc.weight.detach().numpy()
    return evaluate_localisation(TorchSession(model), MONITOR_CONFIG, weights, monitor, split="train")


def selection_score(val_accuracy: float, report) -> float:
    """Which epoch's weights to keep: classification and both localisation rates count equally.

    Why: late epochs keep sharpening the map onto the most telling part of an object, which can
    shrink its box below the object even while accuracy still rises; the epoch is chosen on
    train-split validation scenes, so the held-out numbers stay untouched by the choice.
    """
    return val_accuracy + report.argmax_in_box + report.box_iou_at_least_half


# What evaluate_localisation reads of a serving config (names, preprocessing, CAM source), for the
# torch model during training; the exported config is written by export.cam_export.
MONITOR_CONFIG = ModelConfig(
    name="gap_cnn",
    task="classification",
    inputs=(TensorSpec(name="input", dims=(-1, 3, 64, 64)),),
    outputs=(TensorSpec(name="logits", dims=(-1, 5)), TensorSpec(name="features", dims=(-1, 64, 16, 16))),
    preprocessing=PREPROCESSING,
    postprocessing=PostprocessingConfig(
        output="logits", cam=CamConfig(features_output="features", weights_initializer="fc")
    ),
)


def train_epoch(model, optimizer, images, labels, rng, args, step: int, total: int) -> tuple[float, float, int]:
    """One pass over the scene pool in random order; returns (mean loss, accuracy, next step)."""
    order, losses, hits = rng.permutation(len(images)), [], 0
    steps = len(images) // args.batch
    for k in range(steps):
        idx = order[k * args.batch : (k + 1) * args.batch]
        x, y = to_tensor(images[idx], rng, args.cutout, args.cutout_max), torch.from_numpy(labels[idx])
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, total, args.lr)
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=0.05)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        hits += int((logits.argmax(1) == y).sum())
        step += 1
    return float(np.mean(losses)), hits / (steps * args.batch), step


def train(args) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    started = time.monotonic()
    images, labels = scene_pool(args.seed, args.scenes)
    val_images, val_labels = scene_pool(args.seed + 1, args.val)
    monitor = make_scenes(args.seed + 2, 300, CAM_SCENE_SPEC, "train")
    generated = time.monotonic() - started
    model = build_model("gap_cnn", num_classes=len(SCENE_CLASSES))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    total, step = args.epochs * (len(images) // args.batch), 0
    with open(args.run_dir / "epochs.csv", "w", newline="") as log_file:
        log = csv.writer(log_file)
        log.writerow(
            [
                "epoch",
                "train_loss",
                "train_accuracy",
                "val_accuracy",
                "val_argmax_in_box",
                "val_box_iou_at_least_half",
                "seconds",
            ]
        )
        best_score, best_epoch, best_accuracy = -1.0, 0, 0.0
        for epoch in range(args.epochs):
            loss, train_accuracy, step = train_epoch(model, optimizer, images, labels, rng, args, step, total)
            val_accuracy, report = accuracy(model, val_images, val_labels), localisation(model, monitor)
            row = [
                epoch + 1,
                f"{loss:.4f}",
                f"{train_accuracy:.4f}",
                f"{val_accuracy:.4f}",
                f"{report.argmax_in_box:.4f}",
                f"{report.box_iou_at_least_half:.4f}",
                f"{time.monotonic() - started:.0f}",
            ]
            log.writerow(row)
            log_file.flush()
            print(
                "epoch {} loss {} train acc {} val acc {} val argmax-in-box {} val box-iou>=0.5 {} ({} s)".format(*row),
                flush=True,
            )
            score = selection_score(val_accuracy, report)
            if score > best_score:
                best_score, best_epoch, best_accuracy = score, epoch + 1, val_accuracy
                torch.save({"state_dict": model.state_dict(), "epoch": epoch + 1}, args.run_dir / "checkpoint.pt")
    model.load_state_dict(torch.load(args.run_dir / "checkpoint.pt")["state_dict"])
    training = training_record(args, total, generated, time.monotonic() - started)
    training.update(
        validation_accuracy=best_accuracy,
        selected_epoch=best_epoch,
        selection="epoch with the highest val accuracy + argmax-in-box + box-IoU rate (300 train-split monitor scenes)",
    )
    (args.run_dir / "training.json").write_text(json.dumps(training, indent=2))
    return model, training


def training_record(args, steps: int, generation_seconds: float, wall_seconds: float) -> dict:
    """How the weights were made, for the model card."""
    return {
        "data": "synthetic single-object scenes (export/data/scenes.py, split 'train'): "
        f"{args.scenes} scenes, seed {args.seed}, spec {asdict(CAM_SCENE_SPEC)}",
        "split": {
            "description": "train split (faces 0-79, distractors 100-179, 9 backgrounds); "
            "held-out split: faces 80-99 and backgrounds gravel, immunohistochemistry"
        },
        "epochs": args.epochs,
        "steps": steps,
        "batch_size": args.batch,
        "learning_rate": args.lr,
        "optimizer": "AdamW (weight decay 1e-4), cosine schedule, label smoothing 0.05",
        "augmentation": f"random h-flip; cutout of a 12-{args.cutout_max} px square in {args.cutout:.0%} of the images",
        "seed": args.seed,
        "torch_threads": torch.get_num_threads(),
        "scene_generation_seconds": round(generation_seconds),
        "wall_seconds": round(wall_seconds),
    }


def export(model: torch.nn.Module, training: dict, repo: Path = REPO) -> Path:
    """Export with the features output, measure localisation on the exact ONNX bytes, write."""
    prepared = prepare_cam_version(
        model,
        "gap_cnn",
        name="gap_cnn",
        num_classes=len(SCENE_CLASSES),
        labels=list(SCENE_CLASSES),
        weights={"source": "trained by export/train/gap_cnn.py"},
    )
    session = cpu_session(prepared.graph.onnx_bytes)
    class_weights = model.fc.weight.detach().numpy().astype(np.float32)
    report = evaluate_localisation(session, prepared.config, class_weights, heldout_scenes(HELDOUT_COUNT))
    print(json.dumps(asdict(report), indent=2))
    training = {
        **training,
        "metrics": {
            "heldout_accuracy": report.accuracy,
            "cam_argmax_in_box": report.argmax_in_box,
            "cam_box_iou_at_least_0.5": report.box_iou_at_least_half,
            "cam_mean_box_iou": report.mean_box_iou,
            "confusion_matrix": scene_report(session, prepared.config, class_weights).confusion_card(SCENE_CLASSES),
        },
        "cam_localisation": {**asdict(report), "measured_by": "python -m export.evaluate.cam"},
        "reproduce": "python -m export.train.gap_cnn",
    }
    version_dir = write_version(prepared, repo, version=1, overwrite=True, training=training)
    readme = version_dir.parent / "README.md"
    readme.write_text(readme.read_text() + localisation_lines(report), encoding="utf-8")
    return version_dir


def localisation_lines(report) -> str:
    """The README's CAM section (the model card holds the same numbers)."""
    return (
        f"\nClass activation maps on {report.images} held-out scenes (top-1 class; docs/cam.md):\n"
        f"- map maximum inside the ground-truth box: {report.argmax_in_box:.1%}\n"
        f"- box of the map >= {report.threshold} with IoU >= 0.5: {report.box_iou_at_least_half:.1%} "
        f"(mean IoU {report.mean_box_iou:.3f})\n\nRe-measure: `python -m export.evaluate.cam`.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=8000, help="training scenes (generated once)")
    parser.add_argument("--val", type=int, default=500, help="validation scenes (train split, own seed)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cutout", type=float, default=0.7, help="share of training images with a cutout square")
    parser.add_argument("--cutout-max", type=int, default=28, help="largest cutout side in input pixels")
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR, help="logs and checkpoint")
    parser.add_argument("--repo", type=Path, default=REPO, help="model repository to write gap_cnn into")
    parser.add_argument("--export-only", action="store_true", help="export RUN_DIR/checkpoint.pt")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    if args.export_only:
        model = build_model("gap_cnn", num_classes=len(SCENE_CLASSES))
        model.load_state_dict(torch.load(args.run_dir / "checkpoint.pt")["state_dict"])
        training = json.loads((args.run_dir / "training.json").read_text())
    else:
        model, training = train(args)
    print(export(model.eval(), training, args.repo))


if __name__ == "__main__":
    main()
