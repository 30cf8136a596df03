"""Train the yolo_grid detector on seeded synthetic scenes and bundle it in model_repo/yolo_grid.

    python -m export.train.detector                    # one phase: cosine LR cycle, <= 40 min wall
    python -m export.train.detector --resume --seed 100 --lr 1e-3   # another phase, fresh scenes
    python -m export.train.detector --export-only      # re-export runs/yolo_grid/checkpoint.pt
    python -m export.evaluate.detector                 # held-out mAP -> model card, sample drawings

Images go through service.preprocess (colour conversion, letterbox, normalisation) exactly as the
server will send them. Training scenes come from the "train" split of export/data/scenes.py (faces,
distractors and backgrounds the held-out evaluation never sees); a pool of scenes is kept in memory
and a part of it is replaced by fresh scenes every epoch. A phase ends after `--epochs` or
`--minutes`, whichever comes first (the LR schedule follows the same clock), so on a busy machine
the step count, and hence the exact weights, depend on the machine's speed; the model card records
the steps actually run. Logs, loss curves and checkpoints go to runs/yolo_grid/ (git-ignored).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from export.data.recolour import recolour_shapes
from export.data.scenes import SCENE_CLASSES, SceneSpec, make_scene
from export.models.yolo_grid import (
    INPUT_SIZE,
    YOLO_PREPROCESSING,
    GridTargets,
    YoloGrid,
    assign_targets,
    build_yolo_grid,
    yolo_loss,
)
from export.exporter import OPSET, ExportError
from export.parity import DEFAULT_TOLERANCE, PARITY_SEED, ParityReport, cpu_session
from export.writer import VersionFiles, write_model_version
from service.config import BatchingConfig, DetectionConfig, ModelConfig, PostprocessingConfig, TensorSpec
from service.preprocess import convert_color, normalize, resize_image

GRID = 8
BOXES_PER_CELL = 2
DETECTOR_SPEC = SceneSpec(
    height=(112, 192),
    width=(112, 192),
    objects=(1, 6),
    object_size=(14, 64),
    distractors=(0, 3),
    clutter_lines=(0, 4),
)
PREPROCESSING = YOLO_PREPROCESSING
DETECTION = DetectionConfig(
    layout="yolo_grid",
    grid=GRID,
    boxes_per_cell=BOXES_PER_CELL,
    score_threshold=0.25,
    iou_threshold=0.45,
    max_detections=100,
)
RUN_DIR = Path("runs/yolo_grid")
MODEL_DIR = Path("model_repo/yolo_grid")


def letterbox_scene(scene) -> tuple[np.ndarray, np.ndarray]:
    """Scene -> (uint8 [input, input, 3] letterboxed RGB, boxes [N, 4] in model-input pixels)."""
    resized, info = resize_image(convert_color(scene.image, "rgb", PREPROCESSING.color_order), PREPROCESSING)
    (sy, sx), (oy, ox) = info.scale_yx, info.offset_yx
    boxes = scene.boxes * np.array([sx, sy, sx, sy], dtype=np.float32) + np.array([ox, oy, ox, oy], dtype=np.float32)
    return resized, boxes


class ScenePool:
    """Letterboxed training scenes in memory; `refresh` swaps a share for fresh ones (seeded).

    `recolour`: the share of shapes repainted in corner-of-the-cube colours (export/data/recolour.py),
    drawn from its own seeded stream so the scenes themselves do not change with it.
    """

    def __init__(self, seed: int, size: int, recolour: float = 0.0) -> None:
        self.seed, self.generation, self.recolour = seed, 0, recolour
        self.images = np.zeros((size, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
        self.objects: list[tuple[np.ndarray, np.ndarray]] = [None] * size  # type: ignore[list-item]
        self.next_scene = 0
        self._fill(range(size), "building scene pool")

    def _fill(self, slots, description: str) -> None:
        for slot in tqdm(list(slots), desc=description, leave=False):
            scene = make_scene(np.random.default_rng([self.seed, self.next_scene]), DETECTOR_SPEC, "train")
            scene = recolour_shapes(
                scene, np.random.default_rng([self.seed, self.next_scene, 1]), self.recolour, DETECTOR_SPEC.noise_std
            )
            self.next_scene += 1
            self.images[slot], boxes = letterbox_scene(scene)
            self.objects[slot] = (boxes, scene.labels)

    def refresh(self, count: int) -> None:
        start = (self.generation * count) % len(self.images)
        self.generation += 1
        self._fill([(start + k) % len(self.images) for k in range(count)], "refreshing scenes")


def make_batch(model: YoloGrid, images: np.ndarray, objects, rng: np.random.Generator | None):
    """uint8 images [N, H, W, 3] + their objects -> (float tensor NCHW, GridTargets); random h-flip."""
    tensors, masks, slot_boxes, classes = [], [], [], []
    for image, (boxes, labels) in zip(images, objects):
        if rng is not None and rng.random() < 0.5:
            image = image[:, ::-1]
            boxes = boxes[:, [2, 1, 0, 3]] * np.float32([-1, 1, -1, 1]) + np.float32([INPUT_SIZE, 0, INPUT_SIZE, 0])
        tensors.append(normalize(np.ascontiguousarray(image), PREPROCESSING))
        m, b, c = assign_targets(model.spec, boxes, labels)
        masks.append(m), slot_boxes.append(b), classes.append(c)
    targets = GridTargets(*(torch.from_numpy(np.stack(a)) for a in (masks, slot_boxes, classes)))
    return torch.from_numpy(np.stack(tensors)), targets


@dataclass
class Schedule:
    """Linear warm-up, then a cosine decay to 1 % over `progress`: the larger of the share of
    planned steps done and the share of the wall-clock budget used, so a busy machine shortens a
    phase instead of overrunning it."""

    base_lr: float
    warmup: int
    total_steps: int
    minutes: float
    started: float = field(default_factory=time.monotonic)
    step: int = 0

    def progress(self) -> float:
        return max(self.step / self.total_steps, (time.monotonic() - self.started) / (60.0 * self.minutes))

    def lr(self) -> float:
        if self.step < self.warmup:
            return self.base_lr * (self.step + 1) / self.warmup
        return self.base_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, self.progress()))))


def evaluate_loss(model: YoloGrid, val) -> dict[str, float]:
    model.eval()
    totals: dict[str, float] = {}
    with torch.no_grad():
        for start in range(0, len(val[0]), 64):
            x, targets = make_batch(model, val[0][start : start + 64], val[1][start : start + 64], None)
            for key, value in yolo_loss(model, model.raw(x), targets).items():
                totals[key] = totals.get(key, 0.0) + float(value) * len(x)
    model.train()
    return {key: value / len(val[0]) for key, value in totals.items()}


@dataclass
class Phase:
    """Where one training phase starts (a resumed phase continues step and epoch numbering)."""

    step: int = 0
    epoch: int = 0
    history: list = field(default_factory=list)


def _start_phase(model: YoloGrid, run_dir: Path, resume: bool) -> Phase:
    if not resume:
        return Phase()
    checkpoint = torch.load(run_dir / "checkpoint.pt")
    model.load_state_dict(checkpoint["state_dict"])
    steps = sum(1 for _ in open(run_dir / "steps.csv")) - 1
    previous = json.loads((run_dir / "training.json").read_text())
    return Phase(step=steps, epoch=checkpoint["epoch"], history=previous.get("phases", [previous]))


def _validation_set(seed: int, count: int):
    scenes = [make_scene(np.random.default_rng([seed + 1, i]), DETECTOR_SPEC, "train") for i in range(count)]
    boxed = [letterbox_scene(scene) for scene in scenes]
    return np.stack([image for image, _ in boxed]), [(boxes, s.labels) for (_, boxes), s in zip(boxed, scenes)]


def _run_epoch(model, optimizer, pool: ScenePool, schedule: Schedule, rng, batch: int, log, label: str) -> list[float]:
    """One pass over the pool (or until the schedule ends); returns the step losses."""
    order, running = rng.permutation(len(pool.images)), []
    bar = tqdm(range(len(pool.images) // batch), desc=label)
    for k in bar:
        if schedule.progress() >= 1.0:
            break
        idx = np.sort(order[k * batch : (k + 1) * batch])
        x, targets = make_batch(model, pool.images[idx], [pool.objects[i] for i in idx], rng)
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr()
        parts = yolo_loss(model, model.raw(x), targets)
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        values = {key: value.detach().item() for key, value in parts.items()}
        running.append(values["loss"])
        parts_text = [f"{values[key]:.5f}" for key in ("loss", "box", "obj", "cls")]
        log(schedule.step, f"{optimizer.param_groups[0]['lr']:.6f}", parts_text)
        bar.set_postfix(loss=f"{np.mean(running[-50:]):.3f}")
        schedule.step += 1
    return running


def train(args, run_dir: Path) -> YoloGrid:
    """One phase (a cosine cycle); `--resume` starts another from the last checkpoint."""
    torch.manual_seed(args.seed)
    model = build_yolo_grid(
        grid=GRID, boxes_per_cell=BOXES_PER_CELL, num_classes=len(SCENE_CLASSES), input_size=INPUT_SIZE
    )
    phase = _start_phase(model, run_dir, args.resume)
    val, pool = _validation_set(args.seed, args.val), ScenePool(args.seed, args.pool, args.recolour)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    schedule = Schedule(args.lr, args.warmup, args.epochs * (args.pool // args.batch), args.minutes)
    rng, mode = np.random.default_rng(args.seed), "a" if args.resume else "w"
    with (
        open(run_dir / "steps.csv", mode, newline="") as steps_file,
        open(run_dir / "epochs.csv", mode, newline="") as epochs_file,
    ):
        steps_log, epochs_log = csv.writer(steps_file), csv.writer(epochs_file)
        if not args.resume:
            steps_log.writerow(["step", "epoch", "lr", "loss", "box", "obj", "cls"])
            epochs_log.writerow(["epoch", "train_loss", "val_loss", "val_box", "val_obj", "val_cls", "seconds"])
        epochs_done = 0
        for epoch in range(phase.epoch + 1, phase.epoch + args.epochs + 1):
            if epoch > phase.epoch + 1:
                pool.refresh(args.refresh)
            if schedule.progress() >= 1.0:
                break
            epochs_done += 1
            running = _run_epoch(
                model,
                optimizer,
                pool,
                schedule,
                rng,
                args.batch,
                lambda step, lr, parts, epoch=epoch: steps_log.writerow([phase.step + step, epoch, lr, *parts]),
                f"epoch {epoch}",
            )
            val_loss = evaluate_loss(model, val)
            epochs_log.writerow(
                [epoch, f"{np.mean(running) if running else float('nan'):.5f}"]
                + [f"{val_loss[key]:.5f}" for key in ("loss", "box", "obj", "cls")]
                + [f"{time.monotonic() - schedule.started:.0f}"]
            )
            epochs_file.flush(), steps_file.flush()
            checkpoint = {"state_dict": model.state_dict(), "epoch": epoch, "args": vars(args)}
            torch.save(checkpoint, run_dir / "checkpoint.pt")
            if schedule.progress() >= 1.0:
                break
    _write_training_record(run_dir, phase, args, schedule, epochs_done, pool, val_loss)
    return model


def _write_training_record(run_dir: Path, phase: Phase, args, schedule: Schedule, epochs: int, pool, val_loss) -> None:
    record = {
        "epochs": epochs,
        "steps": schedule.step,
        "planned_steps": schedule.total_steps,
        "budget_minutes": args.minutes,
        "batch_size": args.batch,
        "scene_pool": args.pool,
        "fresh_scenes_per_epoch": args.refresh,
        "scenes_generated": pool.next_scene,
        "recolour_share": args.recolour,
        "seed": args.seed,
        "learning_rate": args.lr,
        "warmup_steps": args.warmup,
        "resumed": bool(args.resume),
        "wall_seconds": round(time.monotonic() - schedule.started),
        "torch_threads": torch.get_num_threads(),
        "final_val_loss": round(val_loss["loss"], 4),
    }
    phases = phase.history + [record]
    summary = {
        "phases": phases,
        "total_steps": sum(p["steps"] for p in phases),
        "total_wall_seconds": sum(p["wall_seconds"] for p in phases),
    }
    (run_dir / "training.json").write_text(json.dumps(summary, indent=2))


def plot_curves(run_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.genfromtxt(run_dir / "steps.csv", delimiter=",", names=True)
    epochs = np.genfromtxt(run_dir / "epochs.csv", delimiter=",", names=True, ndmin=1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    window = max(1, min(50, len(steps) // 4))
    for key in ("loss", "box", "obj", "cls"):
        smooth = np.convolve(steps[key], np.ones(window) / window, mode="valid")
        left.plot(steps["step"][window - 1 :], smooth, label=key)
    left.set(xlabel="step", ylabel=f"training loss ({window}-step mean)", yscale="log", title="training")
    left.legend()
    right.plot(epochs["epoch"], epochs["train_loss"], "o-", label="train")
    right.plot(epochs["epoch"], epochs["val_loss"], "o-", label="validation (train-split scenes)")
    right.set(xlabel="epoch", ylabel="loss", yscale="log", title="per epoch")
    right.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "loss_curves.png", dpi=110)


def detector_files(
    model: YoloGrid,
    training: dict | None,
    name: str = "yolo_grid",
    labels: tuple[str, ...] | None = tuple(SCENE_CLASSES),
    weights: dict | None = None,
) -> VersionFiles:
    """The exported detector (input `images`, output `grid`, dynamic batch), its parity with torch
    at batch 3, config and card, for the common writer. `convserve export yolo_grid` writes the same."""
    model.eval()
    spec = model.spec
    if labels is not None and len(labels) != spec.num_classes:
        raise ExportError(f"{len(labels)} labels given for {spec.num_classes} classes")
    sample = torch.rand(3, 3, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(PARITY_SEED))
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (sample,),
        buffer,
        input_names=["images"],
        output_names=["grid"],
        dynamic_axes={"images": {0: "batch"}, "grid": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    onnx_bytes = buffer.getvalue()
    with torch.no_grad():
        expected = model(sample).numpy()
    diff = float(np.abs(cpu_session(onnx_bytes).run(None, {"images": sample.numpy()})[0] - expected).max())
    parity = ParityReport({len(sample): diff}, DEFAULT_TOLERANCE, PARITY_SEED)
    channels = spec.boxes_per_cell * 5 + spec.num_classes
    detection = DETECTION.model_copy(update={"grid": spec.grid, "boxes_per_cell": spec.boxes_per_cell})
    config = ModelConfig(
        name=name,
        task="detection",
        inputs=(TensorSpec(name="images", dims=(-1, 3, spec.input_size, spec.input_size)),),
        outputs=(TensorSpec(name="grid", dims=(-1, spec.grid, spec.grid, channels)),),
        preprocessing=PREPROCESSING,
        labels="labels.txt" if labels is not None else None,
        batching=BatchingConfig(max_batch_size=16, preferred_batch_sizes=(4, 8, 16)),
        postprocessing=PostprocessingConfig(scores="probabilities", detection=detection),
        description=(
            f"YOLO v1-style grid detector (S={spec.grid}, B={spec.boxes_per_cell}, C={spec.num_classes}): output "
            f"[N, S, S, B*5+C], per cell B x (x, y, w, h, confidence) then C class probabilities; x, y = centre "
            "offset in the cell, w, h = fraction of the input size; activations applied in-graph."
        ),
    )
    card = {
        "name": name,
        "architecture": "compact CNN (stride 16) + YOLO v1 head with per-slot size priors",
        "parameters": sum(p.numel() for p in model.parameters()),
        "classes": list(labels or []),
        "input": [3, spec.input_size, spec.input_size],
        "grid": spec.grid,
        "boxes_per_cell": spec.boxes_per_cell,
        "anchors": list(spec.anchors),
        "onnx_opset": OPSET,
        "onnx_parity_max_abs_diff": diff,
        **({"weights": weights} if weights else {}),
        "training": training,
        "scene_spec": {k: v for k, v in vars(DETECTOR_SPEC).items()} if training else None,
    }
    return VersionFiles(
        config=config,
        onnx_bytes=onnx_bytes,
        parity=parity,
        card=card,
        labels=labels,
        metadata={"convserve.architecture": "yolo_grid"},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--minutes", type=float, default=40.0, help="wall-clock budget for the training loop")
    parser.add_argument("--pool", type=int, default=3200, help="scenes kept in memory")
    parser.add_argument("--refresh", type=int, default=640, help="fresh scenes swapped in per epoch")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--recolour",
        type=float,
        default=0.0,
        help="share of shapes repainted in saturated corner colours (white, black, primaries)",
    )
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--val", type=int, default=300, help="validation scenes (train split, own seed)")
    parser.add_argument("--warmup", type=int, default=200, help="linear warm-up steps")
    parser.add_argument("--seed", type=int, default=0, help="scenes: pool (seed, i), validation (seed + 1, i)")
    parser.add_argument("--resume", action="store_true", help="another phase from runs/yolo_grid/checkpoint.pt")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids spin on a shared CPU)")
    parser.add_argument("--export-only", action="store_true", help="export the run's checkpoint.pt")
    parser.add_argument("--run-dir", default=str(RUN_DIR), help="logs, curves and checkpoints")
    parser.add_argument("--model-dir", default=str(MODEL_DIR), help="where the servable model is written (version 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run_dir, model_dir = Path(args.run_dir), Path(args.model_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.export_only:
        model = build_yolo_grid(
            grid=GRID, boxes_per_cell=BOXES_PER_CELL, num_classes=len(SCENE_CLASSES), input_size=INPUT_SIZE
        )
        model.load_state_dict(torch.load(run_dir / "checkpoint.pt")["state_dict"])
    else:
        model = train(args, run_dir)
        plot_curves(run_dir)
    files = detector_files(model, json.loads((run_dir / "training.json").read_text()), model_dir.name)
    print(write_model_version(files, model_dir.parent, version=1, overwrite=True))


if __name__ == "__main__":
    main()
