"""Write the held-out confusion matrix into the bundled classifiers' model cards.

    python -m export.evaluate.confusion_cards [--repo model_repo] [--check]

The matrices are computed exactly as each card's metrics were: the digit models (simple_cnn,
bn_cnn, lenet5) on the 1,000 held-out MNIST digits of export/data/mnist.py through
service.preprocess with the version's own config, gap_cnn on the 300 held-out scenes of
export/evaluate/cam.py, each by ONNX Runtime on the committed graph (which is not modified). Before
anything is written, the accuracy recomputed from the matrix must equal the card's
`heldout_accuracy` (and, for the digit models, every per-class precision and recall), so a matrix
that does not belong to the card's numbers is refused. The matrix goes to
`training.metrics.confusion_matrix` in the lecture's layout (rows = predicted, columns = true, see
ClassificationReport.confusion_card). `--check` only verifies that the cards already hold it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from export.evaluate.classification import ClassificationReport, classification_report, onnx_logits

DIGIT_MODELS = ("simple_cnn", "bn_cnn", "lenet5")
BUNDLED_CLASSIFIERS = (*DIGIT_MODELS, "gap_cnn")


def digit_report(model_dir: Path) -> ClassificationReport:
    from export.data.mnist import mnist_split, to_model_inputs
    from service.config import load_model_config

    config = load_model_config(model_dir / "config.yaml")
    split = mnist_split()
    logits = onnx_logits(str(model_dir / "1" / "model.onnx"), to_model_inputs(split.test_images, config.preprocessing))
    return classification_report(split.test_labels, logits.argmax(1), 10)


def scene_report(session, config, weights: np.ndarray) -> ClassificationReport:
    """The CAM model's held-out scenes classified as export/evaluate/cam.py classifies them."""
    from export.evaluate.cam import heldout_scenes, scene_heat_maps

    scenes = heldout_scenes()
    predicted = [p for p, _ in scene_heat_maps(session, config, weights, scenes)]
    truth = [int(scene.labels[0]) for scene in scenes]
    return classification_report(np.asarray(truth), np.asarray(predicted), weights.shape[0])


def checked_matrix(name: str, card: dict, report: ClassificationReport) -> dict:
    """The card's confusion entry, after checking the report reproduces the card's own metrics."""
    metrics, labels = card["training"]["metrics"], card["labels"]
    if abs(report.accuracy - metrics["heldout_accuracy"]) > 1e-12:
        raise ValueError(f"{name}: recomputed accuracy {report.accuracy} != card's {metrics['heldout_accuracy']}")
    for label, stats in report.per_class(labels).items() if "heldout_per_class" in metrics else ():
        if stats != metrics["heldout_per_class"][label]:
            raise ValueError(
                f"{name}: class {label}: recomputed {stats} != card's {metrics['heldout_per_class'][label]}"
            )
    return report.confusion_card(labels)


def update(repo: Path, check_only: bool = False) -> list[str]:
    """Write (or check) every bundled classifier's matrix; returns one line per model."""
    lines = []
    for name in BUNDLED_CLASSIFIERS:
        card_path = repo / name / "1" / "model_card.json"
        card = json.loads(card_path.read_text(encoding="utf-8"))
        if name in DIGIT_MODELS:
            report = digit_report(repo / name)
        else:
            from export.evaluate.cam import open_model

            report = scene_report(*open_model(repo / name))
        matrix = checked_matrix(name, card, report)
        if check_only:
            if card["training"]["metrics"].get("confusion_matrix") != matrix:
                raise ValueError(f"{card_path}: training.metrics.confusion_matrix is missing or differs")
        else:
            card["training"]["metrics"]["confusion_matrix"] = matrix
            card_path.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        lines.append(f"{name}: accuracy {report.accuracy:.4f}, {int(report.confusion.sum())} held-out images")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("model_repo"))
    parser.add_argument("--check", action="store_true", help="verify, write nothing")
    args = parser.parse_args(argv)
    print("\n".join(update(args.repo, args.check)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
