"""Measure the bundled yolo_grid detector on held-out scenes and record the result in its card.

    python -m export.evaluate.detector            # 400 held-out scenes -> model_card.json + samples
    python -m export.evaluate.detector --no-write # print only

The evaluation runs the committed ONNX file with ONNX Runtime, preprocesses with
service.preprocess and decodes with service/postprocess/detect.py, i.e. the serving path minus
gRPC. Scenes come from the "heldout" split (faces, distractors and backgrounds never used in
training) with a fixed seed, all of them, no selection. Metrics come from pycocotools' COCOeval:
mAP@0.5 and mAP@[.5:.95] over detections kept at a low score threshold (0.001, the usual COCO
protocol), and precision/recall at IoU 0.5 with the model's default thresholds, from the same
library's per-image matching.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.data.scenes import SCENE_CLASSES, Scene, make_scenes
from export.train.detector import DETECTOR_SPEC, MODEL_DIR, RUN_DIR
from service.config import load_model_config
from service.postprocess.detect import NmsParams, Detections, detections_from_output
from service.preprocess import preprocess_batch

HELDOUT_SEED = 1234
HELDOUT_COUNT = 400
EVAL_SCORE_THRESHOLD = 0.001
TARGET_MAP50 = 0.85  # the acceptance target, quoted in the README when missed


@dataclass(frozen=True)
class DetectorRunner:
    """An ONNX Runtime session plus the model's config: images in, Detections out."""

    session: object
    config: object

    @classmethod
    def load(cls, model_dir: Path, version: int = 1) -> "DetectorRunner":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(
            str(model_dir / str(version) / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        return cls(session, load_model_config(model_dir / "config.yaml"))

    def predict(self, images: list[np.ndarray], params: NmsParams, batch: int = 32) -> list[Detections]:
        """RGB uint8 images of any size -> one Detections per image, in original pixels."""
        detection, results = self.config.postprocessing.detection, []
        input_name = self.config.inputs[0].name
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            tensor, infos = preprocess_batch(chunk, self.config.preprocessing, source_order="rgb")
            outputs = self.session.run([self.config.answer_output], {input_name: tensor})[0]
            results.extend(detections_from_output(out, detection, info, params) for out, info in zip(outputs, infos))
        return results


def _coco_inputs(scenes: list[Scene], detections: list[Detections]):
    """Ground truth as a COCO dataset dict, detections as COCO result rows (category ids from 1)."""
    images, annotations, results = [], [], []
    for image_id, (scene, found) in enumerate(zip(scenes, detections), start=1):
        images.append({"id": image_id, "height": scene.image.shape[0], "width": scene.image.shape[1]})
        for box, label in zip(scene.boxes.tolist(), scene.labels.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        for box, score, label in zip(found.boxes.tolist(), found.scores.tolist(), found.classes.tolist()):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": label + 1,
                    "score": score,
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                }
            )
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(SCENE_CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def coco_eval(scenes: list[Scene], detections: list[Detections]):
    """Run COCOeval (bbox) and return it after evaluate/accumulate/summarize (output captured)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset, results = _coco_inputs(scenes, detections)
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = dataset
        truth.createIndex()
        found = truth.loadRes(results) if results else COCO()
        evaluator = COCOeval(truth, found, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def average_precision(scenes: list[Scene], detections: list[Detections]) -> dict:
    """mAP@0.5, mAP@[.5:.95] and per-class AP@0.5 (COCO's 101-point interpolation)."""
    evaluator = coco_eval(scenes, detections)
    precision = evaluator.eval["precision"][0, :, :, 0, -1]  # IoU 0.5, all recalls, classes, area all, 100 dets
    per_class = {name: float(np.mean(precision[:, k][precision[:, k] > -1])) for k, name in enumerate(SCENE_CLASSES)}
    return {
        "mAP@0.5": float(evaluator.stats[1]),
        "mAP@[.5:.95]": float(evaluator.stats[0]),
        "AP@0.5_per_class": per_class,
    }


def precision_recall(scenes: list[Scene], detections: list[Detections]) -> dict:
    """Precision and recall at IoU 0.5 for the given detections, from COCOeval's own matching."""
    evaluator = coco_eval(scenes, detections)
    true_pos = false_pos = n_truth = 0
    for record in evaluator.evalImgs:
        if record is None or record["aRng"] != evaluator.params.areaRng[0] or record["maxDet"] != 100:
            continue
        ignored = np.asarray(record["gtIgnore"], dtype=bool)
        n_truth += int((~ignored).sum())
        matched = np.asarray(record["dtMatches"])[0] > 0
        dt_ignored = np.asarray(record["dtIgnore"])[0].astype(bool)
        true_pos += int((matched & ~dt_ignored).sum())
        false_pos += int((~matched & ~dt_ignored).sum())
    return {
        "precision": true_pos / max(1, true_pos + false_pos),
        "recall": true_pos / max(1, n_truth),
        "true_positives": true_pos,
        "false_positives": false_pos,
        "ground_truth": n_truth,
    }


def evaluate(model_dir: Path = MODEL_DIR, count: int = HELDOUT_COUNT, seed: int = HELDOUT_SEED):
    """The model card's protocol; returns (metrics dict, scenes, detections at default thresholds)."""
    runner = DetectorRunner.load(model_dir)
    scenes = make_scenes(seed, count, DETECTOR_SPEC, "heldout")
    images = [scene.image for scene in scenes]
    detection = runner.config.postprocessing.detection
    loose = runner.predict(images, NmsParams.from_config(detection, score_threshold=EVAL_SCORE_THRESHOLD))
    default_params = NmsParams.from_config(detection)
    at_defaults = runner.predict(images, default_params)
    metrics = {
        "split": "heldout",
        "scenes": count,
        "seed": seed,
        "objects": int(sum(len(s.labels) for s in scenes)),
        **average_precision(scenes, loose),
        "map_score_threshold": EVAL_SCORE_THRESHOLD,
        "at_default_thresholds": {
            "score_threshold": default_params.score_threshold,
            "iou_threshold": default_params.iou_threshold,
            "match_iou": 0.5,
            **precision_recall(scenes, at_defaults),
        },
    }
    return metrics, scenes, at_defaults


def draw_samples(scenes: list[Scene], detections: list[Detections], path: Path, count: int = 8) -> None:
    """Ground truth in green, detections in red with class and score; a 2-row sheet."""
    import cv2

    tiles = []
    for scene, found in zip(scenes[:count], detections[:count]):
        image = cv2.resize(scene.image, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)[:, :, ::-1].copy()
        for box in scene.boxes * 2:
            cv2.rectangle(image, tuple(int(v) for v in box[:2]), tuple(int(v) for v in box[2:]), (0, 200, 0), 1)
        for box, score, label in zip(found.boxes * 2, found.scores, found.classes):
            top_left = tuple(int(v) for v in box[:2])
            cv2.rectangle(image, top_left, tuple(int(v) for v in box[2:]), (0, 0, 255), 2)
            cv2.putText(
                image,
                f"{SCENE_CLASSES[label]} {score:.2f}",
                (top_left[0], max(10, top_left[1] - 3)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.4,
                (0, 255, 255),
                1,
                cv2.LINE_AA,
            )
        tiles.append(cv2.copyMakeBorder(image, 0, 460 - image.shape[0], 0, 460 - image.shape[1], cv2.BORDER_CONSTANT))
    rows = [np.hstack(tiles[k : k + 4]) for k in range(0, len(tiles), 4)]
    cv2.imwrite(str(path), np.vstack(rows))


def _commands(runs: list[dict]) -> str:
    """The export.train.detector command lines that ran each recorded phase."""
    lines = []
    for k, run in enumerate(runs):
        epochs = run["planned_steps"] // max(1, run["scene_pool"] // run["batch_size"])
        args = ["--resume"] if k else []
        args += [
            f"--seed {run['seed']}",
            f"--lr {run['learning_rate']:g}",
            f"--warmup {run.get('warmup_steps', 200)}",
            f"--minutes {run['budget_minutes']:g}",
            f"--epochs {epochs}",
        ]
        if run.get("recolour_share"):
            args.append(f"--recolour {run['recolour_share']:g}")
        if run.get("torch_threads", 1) != 1:
            args.append(f"--threads {run['torch_threads']}")
        lines.append("    python -m export.train.detector " + " ".join(args))
    return "\n".join(lines)


def write_readme(model_dir: Path, card: dict) -> None:
    """model_repo/yolo_grid/README.md from the model card, so the two never disagree."""
    ev, training = card["evaluation"], card["training"]
    at = ev["at_default_thresholds"]
    per_class = " | ".join(f"{v:.3f}" for v in ev["AP@0.5_per_class"].values())
    runs = training.get("phases", [training])
    phases = "; ".join(
        f"phase {k + 1}: {p['steps']} steps, lr {p['learning_rate']}, {p['wall_seconds'] // 60} min"
        + (f", {p['recolour_share']:.0%} of shapes recoloured" if p.get("recolour_share") else "")
        for k, p in enumerate(runs)
    )
    threads = sorted({p.get("torch_threads", 1) for p in runs})
    recoloured = (
        ""
        if not any(p.get("recolour_share") for p in runs)
        else '\nRecolouring repaints a share of the shapes in saturated "product" colours (white, black, primaries:\n'
        "`export/data/recolour.py`), which the generator's uniformly random colours almost never produce."
    )
    text = f"""# yolo_grid

A one-stage grid detector after the lecture's "Object Detection" section (YOLO v1): a compact CNN
backbone (stride 16, {card["parameters"]:,} parameters) and a head predicting, on an S×S grid, B boxes
(x, y, w, h, confidence) and C class probabilities per cell. Activations are applied in the graph,
so the output is probabilities; the server decodes it with `service/postprocess/detect.py`
(score = confidence × class probability, score threshold, per-class NMS, letterbox inverse).

- classes (C={len(card["classes"])}): {", ".join(card["classes"])}
- input `images`: N×3×{card["input"][1]}×{card["input"][2]} float32, RGB / 255, letterboxed (grey 114 padding)
- output `grid`: N×S×S×(B·5+C) with S={card["grid"]}, B={card["boxes_per_cell"]}; per cell B × (x, y, w, h,
  confidence) then C class probabilities; x, y = box centre inside the cell (0..1), w, h = fraction
  of the input width / height. Each of the B slots has a size prior ({", ".join(str(a) for a in card["anchors"])} of
  the input side) baked into the graph, so the layout needs no anchors to decode.
- ONNX opset {card["onnx_opset"]}, dynamic batch; torch vs ONNX Runtime max abs diff \
{card["onnx_parity_max_abs_diff"]:.1e}

## Held-out evaluation

{ev["scenes"]} scenes of the held-out split (faces 80–99, distractors 180–199, backgrounds gravel and
immunohistochemistry; seed {ev["seed"]}; {ev["objects"]} objects), run from this ONNX file with ONNX
Runtime, service.preprocess and service/postprocess/detect.py; metrics by pycocotools COCOeval.

| mAP@0.5 | mAP@[.5:.95] | {" | ".join(f"AP@0.5 {c}" for c in card["classes"])} |
|---|---|{"---|" * len(card["classes"])}
| {ev["mAP@0.5"]:.3f} | {ev["mAP@[.5:.95]"]:.3f} | {per_class} |

mAP is computed over detections above score {ev["map_score_threshold"]} (COCO protocol). At the default
thresholds (score {at["score_threshold"]}, NMS IoU {at["iou_threshold"]}), matched at IoU {at["match_iou"]}:
precision {at["precision"]:.3f}, recall {at["recall"]:.3f} ({at["true_positives"]} TP, {at["false_positives"]} FP,
{at["ground_truth"]} objects).

## Training

Seeded synthetic scenes from `export/data/scenes.py` (train split), letterboxed through
service.preprocess; CIoU box loss, BCE objectness against the achieved IoU, soft cross-entropy for
classes; AdamW, cosine learning rate. {phases}; {sum(p["steps"] for p in runs)} steps of batch
{runs[0]["batch_size"]} in all, on a shared 2-core CPU with \
{" or ".join(map(str, threads))} torch thread(s).{recoloured}

Reproduce (one command per phase, then the evaluation that writes this file):

{_commands(runs)}
    python -m export.evaluate.detector

A phase stops at its step count or its wall-clock budget, whichever comes first, so on another
machine the step counts (and weights) differ; `1/model_card.json` records what was run.
"""
    if ev["mAP@0.5"] < TARGET_MAP50:
        text += f"""
Known gap: the target is mAP@0.5 >= {TARGET_MAP50}; this model reaches {ev["mAP@0.5"]:.3f}. Every new phase
lowered the validation loss further, so more steps are the first lever (these ran on a CPU shared
with other jobs); a 160-pixel input (S=10) for the smallest objects and more background
variety in training (both held-out backgrounds draw false positives) are the next.
"""
    (model_dir / "README.md").write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=HELDOUT_COUNT)
    parser.add_argument("--seed", type=int, default=HELDOUT_SEED)
    parser.add_argument("--no-write", action="store_true", help="do not update the model card")
    parser.add_argument("--model-dir", default=str(MODEL_DIR), help="the model to evaluate")
    parser.add_argument("--run-dir", default=str(RUN_DIR), help="where the sample drawings go")
    args = parser.parse_args()
    model_dir, run_dir = Path(args.model_dir), Path(args.run_dir)
    metrics, scenes, at_defaults = evaluate(model_dir, args.count, args.seed)
    from importlib.metadata import version

    metrics["evaluated_with"] = {"pycocotools": version("pycocotools"), "onnxruntime": version("onnxruntime")}
    print(json.dumps(metrics, indent=2))
    run_dir.mkdir(parents=True, exist_ok=True)
    draw_samples(scenes, at_defaults, run_dir / "samples.png")
    if not args.no_write and args.count == HELDOUT_COUNT and args.seed == HELDOUT_SEED:
        card_path = model_dir / "1" / "model_card.json"
        card = json.loads(card_path.read_text())
        card["evaluation"] = metrics
        card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        write_readme(model_dir, card)


if __name__ == "__main__":
    main()
