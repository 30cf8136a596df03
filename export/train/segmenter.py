"""Train an FCN segmenter (fcn8s, fcn16s or fcn32s) on seeded scenes; bundle fcn8s in model_repo/.

    python -m export.train.segmenter --variant fcn8s     # train (<= 55 CPU-min, 1 thread), export to model_repo/fcn8s
    python -m export.train.segmenter --variant fcn16s    # same recipe; ONNX goes to runs/segmenter/fcn16s/
    python -m export.train.segmenter --variant fcn8s --export-only   # re-export the last checkpoint
                                                         # (--no-flip-average: one pass, no mirror averaging)
    python -m export.train.segmenter --export-arch fcn_resnet50 [--checkpoint ck.pt] --out-repo /tmp/repo
    python -m export.evaluate.segmenter                  # held-out mIoU of all three -> model card

Scenes come from export/data/scenes.py (several overlapping objects of five classes on real
background crops with clutter; per-pixel labels, 0 = background). By default training scenes use
the "fit" faces and distractors with jittered crops, and validation scenes the "validation" ones,
which the run never trains on (--no-hold-out-identities / --no-patch-jitter turn these off).
Each scene goes through service.preprocess exactly as the server will treat it: upscaled by
`native_scale` (2×, so the stride-8 output of FCN-8s is stride 4 on the scene, whose objects are
14-48 pixels) and padded bottom/right to the network stride (32), so every training scene of 65-96 pixels
becomes one INPUT_SIZE × INPUT_SIZE input (192 at 2×) whose labels are the scene's,
nearest-neighbour scaled; padded pixels are ignored by the loss. Training steps see random
--crop × --crop windows of those inputs (fully convolutional: the crop size only sets the cost of
a step, so the scale does not change it). Logs, curves, checkpoints and sample predictions go
to runs/segmenter/<variant>/ (git-ignored); the training scenes are cached in runs/segmenter/.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

import cv2

from export.data.scenes import BACKGROUNDS, DISTRACTOR_IDS, FACE_IDS, SCENE_CLASSES, SceneSpec, make_scene
from export.models import build_model, get_model_spec
from export.exporter import OPSET
from export.parity import DEFAULT_TOLERANCE as PARITY_TOLERANCE, ParityReport
from export.writer import VersionFiles, write_model_version
from export.models.fcn import (
    BACKBONE_CONVS,
    BACKBONE_WIDTHS,
    INPUT_NAME,
    MirrorAveraged,
    OUTPUT_NAME,
    PARITY_SIZES,
    SCENE_PREPROCESSING,
    export_segmenter_onnx,
    segmenter_parity,
)
from export.evaluate.segmentation_metrics import confusion_matrix, mean_iou
from export.train.plots import pyplot
from service.config import BatchingConfig, ModelConfig, TensorSpec
from service.postprocess.segment import palette
from service.preprocess import convert_color, normalize, resize_image

SEGMENTER_SPEC = SceneSpec(height=(65, 96), width=(65, 96), objects=(2, 5), object_size=(14, 48), distractors=(0, 2))
LABELS = ("background", *SCENE_CLASSES)
IGNORE = 255
# every scene of SEGMENTER_SPEC fits in this square once preprocessed as served: the largest scene's size
INPUT_SIZE = max(
    resize_image(np.zeros((SEGMENTER_SPEC.height[1], SEGMENTER_SPEC.width[1], 3), np.uint8), SCENE_PREPROCESSING)[
        1
    ].input_hw
)
RUN_ROOT = Path("runs/segmenter")
VARIANTS = ("fcn8s", "fcn16s", "fcn32s")


def padded_scene(scene) -> tuple[np.ndarray, np.ndarray]:
    """Scene -> (uint8 RGB [H', W', 3] padded to the stride as served, labels [H', W'] with padding = IGNORE)."""
    image, info = resize_image(convert_color(scene.image, "rgb", SCENE_PREPROCESSING.color_order), SCENE_PREPROCESSING)
    labels = np.full(info.input_hw, IGNORE, dtype=np.uint8)
    top, left, bottom, right = info.content_window()
    labels[top:bottom, left:right] = cv2.resize(
        scene.label_map, (right - left, bottom - top), interpolation=cv2.INTER_NEAREST
    )
    return image, labels


def scene_cache(kind: str, seed: int, count: int, split: str, spec: SceneSpec) -> Path:
    """Cache file of one scene set; the name carries everything that changes the scenes."""
    suffix = (
        ""
        if split == "train" and spec == SEGMENTER_SPEC
        else f"_{split}_{hashlib.sha256(repr(spec).encode()).hexdigest()[:8]}"
    )
    return RUN_ROOT / f"{kind}_scenes_{seed}_{count}_{INPUT_SIZE}{suffix}.npz"


def scene_arrays(
    kind: str, seed: int, count: int, split: str, spec: SceneSpec = SEGMENTER_SPEC
) -> tuple[np.ndarray, np.ndarray]:
    """`count` padded scenes as (images uint8 [N, S, S, 3], labels uint8 [N, S, S]), S = INPUT_SIZE;
    cached under runs/segmenter/ in a file named by `kind` ("train", "val") and what makes the scenes."""
    cache = scene_cache(kind, seed, count, split, spec)
    if cache.exists():
        data = np.load(cache)
        if len(data["images"]) == count:
            return data["images"], data["labels"]
    images = np.zeros((count, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    labels = np.full((count, INPUT_SIZE, INPUT_SIZE), IGNORE, dtype=np.uint8)
    for index in tqdm(range(count), desc=f"{split} scenes", leave=False):
        image, label = padded_scene(make_scene(np.random.default_rng([seed, index]), spec, split))
        images[index, : image.shape[0], : image.shape[1]] = image  # beyond: padding as served (pad_value 0)
        labels[index, : label.shape[0], : label.shape[1]] = label
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, images=images, labels=labels)
    return images, labels


def make_batch(
    images: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator | None,
    crop: int | None = None,
    augment: "Augment | None" = None,
):
    """uint8 [N, H, W, 3] + labels [N, H, W] -> (x [N, 3, h, w] float, y [N, h, w] long).

    With `rng` (training) the content (not the padding) is flipped left-right at random, so padding
    stays bottom/right as served, and with `crop` a random crop × crop window is taken whose
    origin lies in the content, so a crop may show the padding edge a served image has. `augment`
    (training only) rescales the window and jitters the content's colours.
    """
    xs, ys = [], []
    for image, label in zip(images, labels):
        rows = int((label[:, 0] != IGNORE).sum())
        cols = int((label[0] != IGNORE).sum())
        if rng is not None and rng.random() < 0.5:
            image, label = image.copy(), label.copy()
            image[:rows, :cols] = image[:rows, :cols][:, ::-1]
            label[:rows, :cols] = label[:rows, :cols][:, ::-1]
        if rng is not None and crop is not None:
            window = augment.window(rng, crop) if augment is not None else crop
            top = int(rng.integers(0, max(0, min(rows - 1, label.shape[0] - window)) + 1))
            left = int(rng.integers(0, max(0, min(cols - 1, label.shape[1] - window)) + 1))
            image, label = (
                image[top : top + window, left : left + window],
                label[top : top + window, left : left + window],
            )
            image, label = _window_to_crop(image, label, window, crop)
        if rng is not None and augment is not None:
            image = augment.colours(rng, image, label != IGNORE)
        xs.append(normalize(image, SCENE_PREPROCESSING))
        ys.append(label.astype(np.int64))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def _window_to_crop(image: np.ndarray, label: np.ndarray, window: int, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """A window cut at the input's edge is completed with padding (pixels 0, labels IGNORE, as served),
    then the window x window square is resized to crop x crop (labels nearest-neighbour)."""
    if image.shape[:2] != (window, window):
        full_image = np.zeros((window, window, 3), np.uint8)
        full_label = np.full((window, window), IGNORE, np.uint8)
        full_image[: image.shape[0], : image.shape[1]], full_label[: label.shape[0], : label.shape[1]] = image, label
        image, label = full_image, full_label
    if window == crop:
        return image, label
    return (
        cv2.resize(image, (crop, crop), interpolation=cv2.INTER_LINEAR),
        cv2.resize(label, (crop, crop), interpolation=cv2.INTER_NEAREST),
    )


class Augment:
    """Training-only variety the scene generator does not give: object scale and scene colours.

    Why: the held-out scenes use faces, distractors and backgrounds never seen in training, and the
    held-out mIoU trails the train-split validation mIoU by ~0.02-0.03 (unseen faces are the
    largest error). The served transform is unchanged; only what a training step sees varies.
    Scale 1 and colour 0 (the defaults) change nothing. The first runs with it did not raise the
    held-out face IoU (docs/segmentation.md).
    """

    def __init__(self, scale: float, colour: float):
        if scale < 1.0 or not 0.0 <= colour < 1.0:
            raise ValueError(f"scale jitter must be >= 1 and colour jitter in [0, 1), got {scale}, {colour}")
        self.scale, self.colour = scale, colour

    def window(self, rng: np.random.Generator, crop: int) -> int:
        """Side of the square to cut, resized to `crop` afterwards: objects appear 1/scale..scale as large."""
        if self.scale == 1.0:
            return crop
        return max(8, int(round(crop / math.exp(rng.uniform(-math.log(self.scale), math.log(self.scale))))))

    def colours(self, rng: np.random.Generator, image: np.ndarray, content: np.ndarray) -> np.ndarray:
        """Contrast, brightness and per-channel gain jitter of the content; padding keeps its value."""
        if self.colour == 0.0:
            return image
        jitter = self.colour
        pixels = image.astype(np.float32)
        mean = pixels[content].mean(0) if content.any() else np.zeros(3, np.float32)
        contrast = rng.uniform(1 - jitter, 1 + jitter)
        gains = rng.uniform(1 - jitter / 2, 1 + jitter / 2, 3).astype(np.float32)
        shift = rng.uniform(-jitter, jitter) * 128.0
        jittered = np.clip(((pixels - mean) * contrast + mean) * gains + shift, 0, 255).astype(np.uint8)
        return np.where(content[..., None], jittered, image)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy, soft Dice loss averaged over classes present); IGNORE pixels count in neither."""
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE)
    valid = (target != IGNORE).unsqueeze(1).float()  # [N, 1, H, W]
    probs = logits.softmax(dim=1) * valid
    onehot = F.one_hot(target.clamp(max=logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2).float() * valid
    inter, total = (probs * onehot).sum((0, 2, 3)), (probs + onehot).sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    dice = 1 - (2 * inter[present] + 1) / (total[present] + 1)
    return ce, dice.mean()


def confusion_of(model, images: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """Pixel confusion matrix [true, predicted] of the torch model over padded scenes (padding ignored)."""

    model.eval()
    confusion = np.zeros((classes, classes), dtype=np.int64)
    with torch.no_grad():
        for start in range(0, len(images), 32):
            x, y = make_batch(images[start : start + 32], labels[start : start + 32], None)
            confusion += confusion_matrix(y.numpy(), model(x).argmax(1).numpy(), classes, ignore=IGNORE)
    model.train()
    return confusion


def cosine_lr(step: int, progress: float, base: float, warmup: int = 50) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_step(
    model, optimizer, x: torch.Tensor, y: torch.Tensor, lr: float, dice_weight: float
) -> tuple[float, float, float]:
    """One AdamW step on CE + dice_weight x Dice; returns (loss, ce, dice)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    ce, dice = segmentation_loss(model(x.contiguous(memory_format=torch.channels_last)), y)
    loss = ce + dice_weight * dice
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), float(ce.detach()), float(dice.detach())


def train(args, run_dir: Path):

    torch.manual_seed(args.seed)
    # channels-last convolutions train ~15 % faster on the CPU; the checkpoint loads into any layout
    model = build_model(args.variant, num_classes=len(LABELS), widths=args.widths, convs=args.convs).to(
        memory_format=torch.channels_last
    )
    augment = Augment(args.scale_jitter, args.colour_jitter)
    fit_split, val_split = data_splits(args)
    fit_spec = dataclasses.replace(SEGMENTER_SPEC, patch_jitter=args.patch_jitter)
    images, labels = scene_arrays("train", args.seed, args.pool, fit_split, fit_spec)
    val = scene_arrays("val", args.seed + 1, args.val, val_split)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    # an exponential moving average of the weights (BN statistics included) is what is validated and saved
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=True) if args.ema else None
    kept = averaged.module if averaged is not None else model
    steps_per_epoch = len(images) // args.batch
    total, step, rng = args.steps, 0, np.random.default_rng(args.seed)
    epochs = math.ceil(total / steps_per_epoch)
    started, cpu_started, history = time.monotonic(), time.process_time(), []
    budget = 60.0 * args.minutes * args.threads
    with open(run_dir / "steps.csv", "w", newline="") as steps_file:
        steps_log = csv.writer(steps_file)
        steps_log.writerow(["step", "epoch", "lr", "loss", "ce", "dice"])
        for epoch in range(epochs):
            order, running = rng.permutation(len(images)), []
            bar = tqdm(range(steps_per_epoch), desc=f"{args.variant} epoch {epoch + 1}/{epochs}")
            for k in bar:
                # the schedule follows the step count, or the CPU budget (minutes x threads) if that runs
                # out first; CPU time, not wall time, so a busy shared machine does not cut training short
                progress = max(step / total, (time.process_time() - cpu_started) / budget)
                if progress >= 1.0:
                    break
                idx = np.sort(order[k * args.batch : (k + 1) * args.batch])
                x, y = make_batch(images[idx], labels[idx], rng, args.crop, augment)
                lr = cosine_lr(step, progress, args.lr)
                losses = train_step(model, optimizer, x, y, lr, args.dice_weight)
                if averaged is not None:
                    averaged.update_parameters(model)
                running.append(losses[0])
                steps_log.writerow([step, epoch, f"{lr:.6f}", *(f"{value:.5f}" for value in losses)])
                bar.set_postfix(loss=f"{np.mean(running[-30:]):.3f}")
                step += 1
            val_miou = mean_iou(confusion_of(kept, *val, len(LABELS)))
            history.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": float(np.mean(running)) if running else None,
                    "val_miou": val_miou,
                    "seconds": round(time.monotonic() - started),
                    "cpu_seconds": round(time.process_time() - cpu_started),
                }
            )
            tqdm.write(
                f"{args.variant} epoch {epoch + 1}: loss {history[-1]['train_loss']}, validation mIoU {val_miou:.4f}"
            )
            steps_file.flush()
            torch.save({"state_dict": kept.state_dict(), "epoch": epoch + 1}, run_dir / "checkpoint.pt")
            if progress >= 1.0:
                break
    training = {
        "variant": args.variant,
        "epochs": len(history),
        "steps": step,
        "planned_steps": total,
        "budget_minutes": args.minutes,
        "batch_size": args.batch,
        "crop": args.crop,
        "scenes": args.pool,
        "validation_scenes": args.val,
        "seed": args.seed,
        "learning_rate": args.lr,
        "dice_weight": args.dice_weight,
        "scale_jitter": args.scale_jitter,
        "colour_jitter": args.colour_jitter,
        "ema_decay": args.ema,
        "patch_jitter": args.patch_jitter,
        "hold_out_identities": args.hold_out_identities,
        "validation_split": val_split,
        "widths": list(args.widths),
        "convs": list(args.convs),
        "wall_seconds": round(time.monotonic() - started),
        "cpu_seconds": round(time.process_time() - cpu_started),
        "budget_cpu_seconds": budget,
        "torch_threads": torch.get_num_threads(),
        "history": history,
        "scene_spec": {k: v for k, v in vars(fit_spec).items()},
        "data": f"export/data/scenes.py split {fit_split!r} (faces {_id_range(FACE_IDS[fit_split])}, "
        f"distractors {_id_range(DISTRACTOR_IDS[fit_split])}, {len(BACKGROUNDS[fit_split])} backgrounds)",
        "reproduce": f"python -m export.train.segmenter --variant {args.variant}{recipe_flags(args)}",
    }
    (run_dir / "training.json").write_text(json.dumps(training, indent=2) + "\n")
    return kept, val


def data_splits(args) -> tuple[str, str]:
    """(training split, validation split): with --hold-out-identities the validation scenes show
    faces and distractors the run never trains on, so they measure how faces generalise."""
    return ("fit", "validation") if args.hold_out_identities else ("train", "train")


def _id_range(ids: range) -> str:
    return f"{ids.start}-{ids.stop - 1}"


# optional recipe changes a reproduce line must name
RECIPE_OPTIONS = ("scale_jitter", "colour_jitter", "ema", "patch_jitter", "hold_out_identities", "widths", "convs")


def _flag(dest: str, value) -> str:
    name = dest.replace("_", "-")
    if isinstance(value, bool):
        return f" --{name}" if value else f" --no-{name}"
    if isinstance(value, (list, tuple)):
        return f" --{name} " + ",".join(str(v) for v in value)
    return f" --{name} {value:g}"


def recipe_flags(args) -> str:
    """The recipe options of a run that differ from the parser's defaults (for its reproduce line)."""
    parser = _parser()
    return "".join(
        _flag(dest, getattr(args, dest)) for dest in RECIPE_OPTIONS if getattr(args, dest) != parser.get_default(dest)
    )


def load_variant(variant: str, run_dir: Path):
    """The run's checkpoint in the backbone it was trained with (recorded in training.json)."""
    shape = {}
    if (run_dir / "training.json").exists():
        training = json.loads((run_dir / "training.json").read_text())
        shape = {key: tuple(training[key]) for key in ("widths", "convs") if key in training}
    model = build_model(variant, num_classes=len(LABELS), **shape)
    model.load_state_dict(torch.load(run_dir / "checkpoint.pt", weights_only=True)["state_dict"])
    return model.eval()


def _native_note(preprocessing) -> str:
    if preprocessing.resize != "native":
        return ""
    scaled = f" scaled {preprocessing.native_scale:g}x and" if preprocessing.native_scale != 1.0 else ""
    return f";{scaled} padded to a multiple of {preprocessing.stride}"


def logit_scale(model, sizes, channels: int = 3) -> float:
    """The largest logit magnitude (at least 1) on segmenter_parity's own inputs: its tolerance is relative to it."""
    from export.exporter import example_input

    with torch.no_grad():
        peaks = [
            float(model(example_input((channels, *hw), 2, seed=100 + i)).abs().max()) for i, hw in enumerate(sizes)
        ]
    return max(1.0, *peaks)


def segmenter_files(
    model, *, name: str, architecture: str, labels, preprocessing, card: dict, parity_sizes=PARITY_SIZES
) -> VersionFiles:
    """Export `model` with free batch/height/width and check parity at `parity_sizes` (input "HxW"
    probes, tolerance relative to the logits' magnitude); config and card for the common writer."""
    mirrored = isinstance(model, MirrorAveraged)
    onnx_bytes = export_segmenter_onnx(model, trace_hw=parity_sizes[-1])
    diffs = segmenter_parity(model, onnx_bytes, parity_sizes, tolerance=PARITY_TOLERANCE)
    parity = ParityReport(diffs, PARITY_TOLERANCE, seed=100, scale=logit_scale(model, parity_sizes))
    with torch.no_grad():
        classes = model(torch.zeros(1, 3, *parity_sizes[0])).shape[1]
    config = ModelConfig(
        name=name,
        task="segmentation",
        inputs=(TensorSpec(name=INPUT_NAME, dims=(-1, 3, -1, -1)),),
        outputs=(TensorSpec(name=OUTPUT_NAME, dims=(-1, classes, -1, -1)),),
        preprocessing=preprocessing,
        labels="labels.txt" if labels else None,
        batching=BatchingConfig(
            max_batch_size=16,
            max_queue_delay_us=1000,  # budgets: docs/security.md
            max_request_bytes=16 * 2**20,
            max_queue_bytes=32 * 2**20,
        ),
        description=f"{architecture}: per-class logits [N, {classes}, H, W] at the input resolution (any H, W"
        f"{_native_note(preprocessing)})"
        f"{'; the mean of the logits of the image and of its mirror image' if mirrored else ''}.",
    )
    fields = {
        "name": name,
        "architecture": architecture,
        "task": "segmentation",
        "classes": list(labels or []),
        "parameters": sum(p.numel() for p in model.parameters()),
        "input": {"name": INPUT_NAME, "shape": [-1, 3, -1, -1]},
        "output": {"name": OUTPUT_NAME, "shape": [-1, classes, -1, -1]},
        "onnx": {"opset": OPSET},
        "parity_max_abs_diff": diffs,
        "test_time": {"flip_average": mirrored},
        **card,
    }
    metadata = {
        "convserve.architecture": architecture,
        **{f"convserve.parity_max_abs_diff_{k}": repr(v) for k, v in diffs.items()},
    }
    return VersionFiles(
        config=config,
        onnx_bytes=onnx_bytes,
        parity=parity,
        card=fields,
        labels=tuple(labels) if labels else None,
        metadata=metadata,
    )


def write_segmenter(model, *, repo: Path, **described) -> Path:
    """segmenter_files(model, **described) written as version 1 of `repo/<name>`; returns the model dir."""
    return write_model_version(segmenter_files(model, **described), repo, version=1, overwrite=True).parent


def export_scene_segmenter(model, variant: str, training: dict, flip_average: bool = True) -> Path:
    """fcn8s -> model_repo/fcn8s (bundled); the other variants -> runs/segmenter/<variant>/repo/<variant>.
    With `flip_average` the graph averages the logits of the scene and of its mirror image."""
    repo = Path("model_repo") if variant == "fcn8s" else RUN_ROOT / variant / "repo"
    return write_segmenter(
        as_exported(model, flip_average),
        name=variant,
        architecture=variant,
        labels=LABELS,
        preprocessing=SCENE_PREPROCESSING,
        repo=repo,
        card={"weights": {"source": "trained by export/train/segmenter.py"}, "training": training},
    )


def as_exported(network, flip_average: bool):
    """The module the export writes: `network`, or with `flip_average` its mirror-averaged form."""
    return MirrorAveraged(network).eval() if flip_average else network


ANY_SIZE_PARITY = ((64, 64), (96, 64))  # parity input sizes of a segmenter other than the scene FCNs


def export_architecture(name: str, checkpoint: str | None, num_classes: int | None, repo: Path) -> Path:
    """Export any registered segmenter (e.g. torchvision's fcn_resnet50), random or from a checkpoint."""
    from export.checkpoints import load_checkpoint

    spec = get_model_spec(name)
    model = spec.build(**({"num_classes": num_classes} if num_classes else {}))
    weights = {"source": "random initialisation"}
    if checkpoint:
        load_checkpoint(model, checkpoint, spec.training_only_prefixes)
        weights = {"source": "checkpoint", "file": Path(checkpoint).name}
    return write_segmenter(
        model.eval(),
        name=name,
        architecture=name,
        labels=None,
        preprocessing=spec.preprocessing,
        repo=repo,
        card={"weights": weights},
        parity_sizes=ANY_SIZE_PARITY,
    )


def write_run_figures(variant: str, flip_average: bool = True) -> None:
    """loss_curve.png and samples.png (validation scenes, predicted as the export will: mirror-averaged
    with `flip_average`) beside a training run."""
    run_dir, plt = RUN_ROOT / variant, pyplot()
    steps = np.genfromtxt(run_dir / "steps.csv", delimiter=",", names=True)
    training = json.loads((run_dir / "training.json").read_text())
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    window = max(1, min(25, len(steps) // 4))
    for key in ("loss", "ce", "dice"):
        left.plot(
            steps["step"][window - 1 :], np.convolve(steps[key], np.ones(window) / window, mode="valid"), label=key
        )
    left.set(
        xlabel="step", ylabel=f"training loss ({window}-step mean)", yscale="log", title=f"{variant}: training loss"
    )
    left.legend()
    history = training["history"]
    right.plot([h["epoch"] for h in history], [h["val_miou"] for h in history], "o-")
    val_split = training.get("validation_split", "train")
    right.set(xlabel="epoch", ylabel="mean IoU", title=f"validation ({val_split}-split scenes)")
    fig.tight_layout()
    fig.savefig(run_dir / "loss_curve.png", dpi=100)
    plt.close(fig)
    images, labels = scene_arrays("val", training["seed"] + 1, training["validation_scenes"], val_split)
    exported, rows = as_exported(load_variant(variant, run_dir), flip_average), min(6, len(images))
    with torch.no_grad():
        predicted = exported(make_batch(images[:rows], labels[:rows], None)[0]).argmax(1).numpy()
    predicted[labels[:rows] == IGNORE] = IGNORE  # padding: white in every panel
    colours = np.vstack(
        [palette(len(LABELS)), np.full((IGNORE + 1 - len(LABELS), 3), 255, np.uint8)]
    )  # IGNORE = padding
    fig, axes = plt.subplots(rows, 3, figsize=(6, 2 * rows), squeeze=False)
    for row in range(rows):
        for col, panel in enumerate((images[row], colours[labels[row]], colours[predicted[row]])):
            axes[row][col].imshow(panel)
            axes[row][col].set_axis_off()
            if row == 0:
                axes[row][col].set_title(("input (padded)", "truth", variant)[col], fontsize=9)
    fig.tight_layout()
    fig.savefig(run_dir / "samples.png", dpi=100)
    plt.close(fig)


def _five_ints(text: str) -> tuple[int, ...]:
    values = tuple(int(part) for part in text.split(","))
    if len(values) != 5 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"five positive comma-separated integers expected, got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=VARIANTS, default="fcn8s")
    parser.add_argument("--steps", type=int, default=10000, help="optimizer steps (the schedule's length)")
    parser.add_argument(
        "--minutes", type=float, default=55.0, help="budget: this many minutes on --threads cores (CPU time)"
    )
    parser.add_argument("--pool", type=int, default=4800, help="training scenes")
    parser.add_argument(
        "--val",
        type=int,
        default=96,
        help="validation scenes (own seed; identities held out of training unless --no-hold-out-identities)",
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=128, help="training window (pixels of the scaled, padded scene)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--dice-weight", type=float, default=0.5)
    parser.add_argument(
        "--scale-jitter",
        type=float,
        default=1.0,
        help="training windows show objects 1/S..S times their served size (default 1: off)",
    )
    parser.add_argument(
        "--colour-jitter",
        type=float,
        default=0.0,
        help="contrast/brightness/channel-gain jitter of training windows, 0..1 (default 0: off)",
    )
    parser.add_argument(
        "--ema",
        type=float,
        default=0.0,
        help="keep an exponential moving average of the weights "
        "with this decay (e.g. 0.999) and validate/export it (default 0: off)",
    )
    parser.add_argument(
        "--patch-jitter",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="rotate/zoom/shift/gamma-jitter every face and distractor crop of the training scenes",
    )
    parser.add_argument(
        "--hold-out-identities",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train on faces 0-71 and distractors "
        "100-171 only and validate on scenes of faces 72-79 and distractors 172-179",
    )
    parser.add_argument(
        "--widths", type=_five_ints, default=BACKBONE_WIDTHS, help="backbone stage widths, five comma-separated ints"
    )
    parser.add_argument(
        "--convs", type=_five_ints, default=BACKBONE_CONVS, help="3x3 convolutions per backbone stage, five ints"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids spin-waiting on a shared CPU)")
    parser.add_argument(
        "--flip-average",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="export a graph that "
        "averages the logits of each image and of its left-right mirror (two passes per image)",
    )
    parser.add_argument("--export-only", action="store_true", help="export runs/segmenter/<variant>/checkpoint.pt")
    parser.add_argument("--export-arch", help="export another registered segmenter (e.g. fcn_resnet50) instead")
    parser.add_argument("--checkpoint", help="with --export-arch: weights to load (default: random init)")
    parser.add_argument("--num-classes", type=int, help="with --export-arch: classes (default: the architecture's)")
    parser.add_argument("--out-repo", default="model_repo", help="with --export-arch: model repository to write to")
    return parser


def main() -> None:
    parser = _parser()
    args = parser.parse_args()
    if not 0.0 <= args.ema < 1.0:
        parser.error(f"--ema takes a decay in [0, 1), e.g. 0.999; got {args.ema}")
    torch.set_num_threads(args.threads)
    if args.export_arch:
        print(export_architecture(args.export_arch, args.checkpoint, args.num_classes, Path(args.out_repo)))
        return
    run_dir = RUN_ROOT / args.variant
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.export_only:
        model = load_variant(args.variant, run_dir)
    else:
        train(args, run_dir)

        write_run_figures(args.variant, args.flip_average)
        model = load_variant(args.variant, run_dir)
    training = json.loads((run_dir / "training.json").read_text())
    print(export_scene_segmenter(model.eval(), args.variant, training, args.flip_average))


if __name__ == "__main__":
    main()
