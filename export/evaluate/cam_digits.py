"""How well Score-CAM maps of the digit classifiers point at the digit: held-out MNIST digits.

    convserve optimize --repo model_repo --model lenet5 --expose-features      # writes lenet5_cam
    python -m export.evaluate.cam_digits --model-dir model_repo/lenet5_cam

The digit classifiers (lenet5, simple_cnn) ship without a feature output; `--expose-features`
adds one (export/expose_features.py). Each of the 1,000 held-out digits (export/data/mnist.py,
never used for training) goes through the server's own preprocessing and Score-CAM functions
(service.preprocess, service.postprocess.cam, composed as service/pipelines/explain.py composes
them; tests/export/test_expose_features.py checks the map equals what Explain returns), for the
top-1 class, upsampled to the 28x28 digit and min-max normalised.

A digit has no box worth the name (it fills the frame), so the ground truth is its ink: the
pixels >= 128, grown by one pixel (a map cell straddles a stroke's edge). Two numbers, each beside
what a map that knows nothing would score:
- pointing: the map's hottest pixel lies on the ink;
- ink share: the fraction of the map's total mass on the ink;
and for both, a map that knows nothing (a random point, a flat map) scores the ink's share of the
image (`ink_fraction`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from service.config import load_model_config
from service.postprocess.cam import (
    masked_inputs,
    min_max_normalise,
    score_cam_map,
    score_cam_masks,
    select_maps,
    upsample_map,
)
from service.preprocess import preprocess_image

INK_LEVEL = 128


@dataclass(frozen=True)
class DigitLocalisation:
    model: str
    images: int
    accuracy: float
    pointing: float  # share of digits whose map's hottest pixel is on the (grown) ink
    ink_share: float  # mean fraction of the map's mass on the ink
    ink_fraction: float  # the grown ink's mean share of the image: what both score by chance
    max_maps: int
    feature_dims: tuple[int, ...]


def ink_mask(digit: np.ndarray) -> np.ndarray:
    """bool [H, W]: the digit's strokes (>= INK_LEVEL), grown by one pixel in each direction."""
    return cv2.dilate((digit >= INK_LEVEL).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0


def score_cam_heat(session, config, digit: np.ndarray) -> tuple[int, np.ndarray]:
    """(top-1 class, map [H, W] in [0, 1] on the digit) as Explain computes it."""
    cam = config.postprocessing.cam
    tensor, info = preprocess_image(digit, config.preprocessing)
    input_name = config.inputs[0].name
    logits, features = session.run([config.answer_output, cam.features_output], {input_name: tensor[None]})
    predicted = int(np.argmax(logits[0]))
    activations = features[0]
    chosen = select_maps(activations, cam.max_maps)
    if len(chosen) == 0:
        return predicted, np.zeros(digit.shape, dtype=np.float32)
    batch = masked_inputs(tensor, score_cam_masks(activations, chosen, tensor.shape[1:]))
    scores = session.run([config.answer_output], {input_name: batch})[0][:, predicted]
    raw = score_cam_map(activations, chosen, scores)
    return predicted, min_max_normalise(upsample_map(raw, info))


def evaluate(model_dir: Path, images: np.ndarray, labels: np.ndarray, version: int = 1) -> DigitLocalisation:
    import onnxruntime as ort

    config = load_model_config(model_dir / "config.yaml")
    if config.postprocessing.cam is None or config.postprocessing.cam.method != "score_cam":
        raise SystemExit(
            f"{model_dir}: postprocessing.cam must be score_cam (run convserve optimize --expose-features)"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(
        str(model_dir / str(version) / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    correct, pointing, ink_fraction, share = 0, 0, [], []
    for digit, label in zip(images, labels):
        predicted, heat = score_cam_heat(session, config, digit)
        ink = ink_mask(digit)
        correct += predicted == int(label)
        row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
        pointing += bool(heat.max() > 0 and ink[row, col])
        ink_fraction.append(float(ink.mean()))
        share.append(float(heat[ink].sum() / heat.sum()) if heat.sum() > 0 else 0.0)
    features_dims = next(o.dims for o in config.outputs if o.name == config.postprocessing.cam.features_output)
    n = len(images)
    return DigitLocalisation(
        config.name,
        n,
        correct / n,
        pointing / n,
        float(np.mean(share)),
        float(np.mean(ink_fraction)),
        config.postprocessing.cam.max_maps,
        tuple(features_dims[1:]),
    )


def main(argv: list[str] | None = None) -> None:
    from export.data.mnist import heldout_digits

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, action="append", required=True, help="a *_cam model (repeatable)")
    parser.add_argument("--count", type=int, default=1000, help="held-out digits scored (at most 1,000)")
    args = parser.parse_args(argv)
    images, labels = heldout_digits()
    for model_dir in args.model_dir:
        report = evaluate(model_dir, images[: args.count], labels[: args.count])
        print(json.dumps(asdict(report), indent=2))


if __name__ == "__main__":
    main()
