"""How well class activation maps localise objects: held-out synthetic single-object scenes.

    python -m export.evaluate.cam                          # model_repo/gap_cnn, 300 held-out scenes
    python -m export.evaluate.cam --overlays runs/gap_cnn  # also write a few overlay PNGs

Each scene (export/data/scenes.py, "heldout" split: faces and backgrounds training never saw)
holds exactly one object with its ground-truth box. The image goes through the server's own
preprocessing and CAM functions (service.preprocess, service.postprocess.cam); the map is the one
of the top-1 predicted class, upsampled to the image and min-max normalised, as Explain returns it.

Two numbers, as in the CAM paper's weakly supervised localisation:
- argmax-in-box: the map's hottest pixel lies inside the ground-truth box;
- box IoU ≥ 0.5: the bounding box of the pixels with map ≥ 0.5 overlaps the ground-truth box
  with IoU ≥ 0.5.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from export.data.scenes import SCENE_CLASSES, Scene, SceneSpec, make_scenes
from service.config import ModelConfig, load_model_config
from service.postprocess.cam import class_activation_map, min_max_normalise, render_overlay, upsample_map
from service.preprocess import preprocess_image
from service.pipelines.cam_weights import read_class_weights

# One object per image on an 80×80 scene, which the server scales to the 64×64 input (objects of
# 16–45 input pixels).
CAM_SCENE_SPEC = SceneSpec(
    height=(80, 80),
    width=(80, 80),
    objects=(1, 1),
    object_size=(20, 56),
    distractors=(0, 0),
    clutter_lines=(0, 4),
)
HELDOUT_SEED = 7
HELDOUT_COUNT = 300
THRESHOLD = 0.5


@dataclass(frozen=True)
class LocalisationReport:
    images: int
    accuracy: float  # top-1 class = ground-truth class
    argmax_in_box: float
    box_iou_at_least_half: float
    mean_box_iou: float
    threshold: float
    split: str
    seed: int


def heldout_scenes(count: int = HELDOUT_COUNT, seed: int = HELDOUT_SEED) -> list[Scene]:
    return make_scenes(seed, count, CAM_SCENE_SPEC, split="heldout")


def cam_box(heat: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """heat [H, W] in [0, 1] -> x1, y1, x2, y2 (pixel edges) of the bounding box of every pixel with
    heat >= threshold, float32 [4]; (0, 0, 0, 0) for an all-zero map.

    The whole thresholded region rather than its largest connected part (the CAM paper's
    choice): a CAM often lights up several separate parts of one object (opposite edges of a large
    disc), and the box of the largest part alone then covers a fraction of the object.
    """
    if not heat.max() > 0:
        return np.zeros(4, dtype=np.float32)
    rows, cols = np.nonzero(heat >= threshold)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two x1, y1, x2, y2 boxes (0 when both are empty)."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def argmax_inside(heat: np.ndarray, box: np.ndarray) -> bool:
    """Is the hottest pixel (first in row-major order) inside the box? Pixel c spans [c, c + 1)."""
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return bool(box[0] <= col < box[2] and box[1] <= row < box[3])


def scene_heat_maps(session, config: ModelConfig, weights: np.ndarray, scenes: list[Scene], batch: int = 64):
    """Yield (predicted class, heat map [H, W] in [0, 1]) per scene, as the server computes them."""
    cam = config.postprocessing.cam
    for start in range(0, len(scenes), batch):
        chunk = scenes[start : start + batch]
        prepared = [preprocess_image(s.image, config.preprocessing, source_order="rgb") for s in chunk]
        inputs = {config.inputs[0].name: np.stack([tensor for tensor, _ in prepared])}
        logits, features = session.run([config.answer_output, cam.features_output], inputs)
        for row, (_, info) in enumerate(prepared):
            predicted = int(np.argmax(logits[row]))
            raw = class_activation_map(features[row], weights, predicted)
            yield predicted, min_max_normalise(upsample_map(raw, info))


def evaluate_localisation(
    session,
    config: ModelConfig,
    weights: np.ndarray,
    scenes: list[Scene],
    split: str = "heldout",
    seed: int = HELDOUT_SEED,
) -> LocalisationReport:
    """Run `scenes` through an ONNX Runtime session of a CAM model and score the maps."""
    correct, inside, good, ious = 0, 0, 0, []
    for scene, (predicted, heat) in zip(scenes, scene_heat_maps(session, config, weights, scenes)):
        truth = scene.boxes[0]
        correct += predicted == int(scene.labels[0])
        inside += argmax_inside(heat, truth)
        iou = box_iou(cam_box(heat), truth)
        good += iou >= 0.5
        ious.append(iou)
    n = len(scenes)
    return LocalisationReport(n, correct / n, inside / n, good / n, float(np.mean(ious)), THRESHOLD, split, seed)


def write_overlays(session, config: ModelConfig, weights: np.ndarray, scenes: list[Scene], directory: Path) -> None:
    """PNG overlays with the ground-truth box (green) and the CAM box (white), for looking at."""
    directory.mkdir(parents=True, exist_ok=True)
    for index, (scene, (predicted, heat)) in enumerate(zip(scenes, scene_heat_maps(session, config, weights, scenes))):
        bgr = np.ascontiguousarray(scene.image[:, :, ::-1])
        for box, colour in ((scene.boxes[0], (0, 255, 0)), (cam_box(heat), (255, 255, 255))):
            x1, y1, x2, y2 = (int(v) for v in box)
            cv2.rectangle(bgr, (x1, y1), (x2 - 1, y2 - 1), colour, 1)
        png = render_overlay(bgr, heat, "png")
        (directory / f"cam_{index:02d}_{SCENE_CLASSES[predicted]}.png").write_bytes(png)


def open_model(model_dir: Path, version: int = 1):
    """(ONNX Runtime session, config, class weights) of a model directory in a repository."""
    import onnxruntime as ort

    config = load_model_config(model_dir / "config.yaml")
    path = model_dir / str(version) / "model.onnx"
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session, config, read_class_weights(path, config.postprocessing.cam.weights_initializer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path("model_repo/gap_cnn"))
    parser.add_argument("--count", type=int, default=HELDOUT_COUNT)
    parser.add_argument("--overlays", type=Path, help="directory for a dozen overlay PNGs")
    args = parser.parse_args()
    session, config, weights = open_model(args.model_dir)
    scenes = heldout_scenes(args.count)
    print(json.dumps(asdict(evaluate_localisation(session, config, weights, scenes)), indent=2))
    if args.overlays:
        write_overlays(session, config, weights, scenes[:12], args.overlays)


if __name__ == "__main__":
    main()
