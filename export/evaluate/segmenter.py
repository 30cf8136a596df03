"""Measure the FCN segmenters on held-out scenes and record the result in fcn8s's model card.

    python -m export.evaluate.segmenter            # 240 held-out scenes, fcn32s/16s/8s, both resize modes
    python -m export.evaluate.segmenter --no-write # print only
    python -m export.evaluate.segmenter --scale-sweep 2,2.5,3   # fcn8s at other native_scale values,
                                                   # on the training run's validation scenes (prints only)

The evaluation runs the exported ONNX files with ONNX Runtime, preprocesses with service.preprocess
and turns logits into label maps with service/postprocess/segment.py (bilinear resize of the
logits to the original size, then argmax): the serving path minus gRPC. Scenes come from the
"heldout" split (faces, distractors and backgrounds the training never saw).

The metric is the lecture's IoU = TP / (TP + FP + FN) per class, with TP, FP and FN counted in
pixels over all held-out scenes together, and its mean over the classes (background included).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from export.evaluate.segmentation_metrics import confusion_matrix, iou_per_class, mean_iou
from export.train.plots import pyplot

HELDOUT_SEED = 2024
HELDOUT_SCENES = 240
VALIDATION_SEED, VALIDATION_SCENES = 1, 96  # the training run's validation scenes
TARGET_MEAN_IOU = 0.85
BUNDLED = Path("model_repo/fcn8s")


def heldout_scenes(count: int = HELDOUT_SCENES, seed: int = HELDOUT_SEED):
    from export.data.scenes import make_scenes
    from export.train.segmenter import SEGMENTER_SPEC

    return make_scenes(seed, count, SEGMENTER_SPEC, "heldout")


def predict_onnx(onnx_path: Path, preprocessing, scenes, batch: int = 32) -> list[np.ndarray]:
    """Label maps [H, W] at each scene's size: service preprocessing -> ONNX Runtime -> service postprocess."""
    from export.parity import cpu_session
    from service.postprocess.segment import label_map_from_logits
    from service.preprocess import preprocess_image

    session = cpu_session(Path(onnx_path).read_bytes())
    prepared = [preprocess_image(scene.image, preprocessing, source_order="rgb") for scene in scenes]
    groups: dict[tuple, list[int]] = {}
    for index, (tensor, _) in enumerate(prepared):
        groups.setdefault(tensor.shape, []).append(index)
    maps: list[np.ndarray | None] = [None] * len(scenes)
    for indices in groups.values():
        for start in range(0, len(indices), batch):
            chunk = indices[start : start + batch]
            logits = session.run(None, {"input": np.stack([prepared[i][0] for i in chunk])})[0]
            for row, index in enumerate(chunk):
                maps[index] = label_map_from_logits(logits[row], prepared[index][1])
    return maps  # type: ignore[return-value]


def score(maps, scenes, labels) -> dict:
    """IoU per class, mean IoU and pixel accuracy of predicted label maps against the scenes' truth."""
    confusion = sum(confusion_matrix(s.label_map, m, len(labels)) for s, m in zip(scenes, maps))
    ious = iou_per_class(confusion)
    return {
        "mean_iou": round(mean_iou(confusion), 4),
        "iou": {label: round(float(v), 4) for label, v in zip(labels, ious)},
        "pixel_accuracy": round(float(np.trace(confusion) / confusion.sum()), 4),
    }


def variant_onnx(variant: str) -> Path:
    from export.train.segmenter import RUN_ROOT

    return (
        BUNDLED / "1" / "model.onnx"
        if variant == "fcn8s"
        else RUN_ROOT / variant / "repo" / variant / "1" / "model.onnx"
    )


def training_summary(variant: str) -> dict:
    """Steps and CPU seconds of the variant's last training run (runs/segmenter/<variant>/training.json)."""
    from export.train.segmenter import RUN_ROOT

    path = RUN_ROOT / variant / "training.json"
    if not path.exists():
        return {}
    training = json.loads(path.read_text())
    return {"training_steps": training["steps"], "training_cpu_seconds": training.get("cpu_seconds")}


def evaluate_all(count: int, seed: int) -> tuple[dict, dict]:
    """Every trained variant as served (native size, scaled), and fcn8s stretched to a fixed square
    of the training input size too; returns (results, maps)."""
    from export.models.fcn import SCENE_PREPROCESSING
    from export.train.segmenter import INPUT_SIZE, LABELS, VARIANTS

    scenes = heldout_scenes(count, seed)
    stretch = SCENE_PREPROCESSING.model_copy(
        update={"resize": "stretch", "size": (INPUT_SIZE, INPUT_SIZE), "stride": 1, "native_scale": 1.0}
    )
    results, maps = {}, {}
    for variant in VARIANTS:
        if variant_onnx(variant).exists():
            maps[variant] = predict_onnx(variant_onnx(variant), SCENE_PREPROCESSING, scenes)
            results[variant] = {**score(maps[variant], scenes, LABELS), **training_summary(variant)}
    if "fcn8s" in maps:
        stretched = predict_onnx(variant_onnx("fcn8s"), stretch, scenes)
        results[f"fcn8s_stretch_{INPUT_SIZE}x{INPUT_SIZE}"] = score(stretched, scenes, LABELS)
    return results, {"scenes": scenes, **maps}


def bundled_validation_split() -> str:
    """The scene split the bundled fcn8s was validated on during training (recorded in its model card)."""
    card = json.loads((BUNDLED / "1" / "model_card.json").read_text())
    return card.get("training", {}).get("validation_split", "train")


def scale_sweep(scales: list[float], count: int = VALIDATION_SCENES, seed: int = VALIDATION_SEED) -> dict[str, float]:
    """Mean IoU of the bundled fcn8s served at each `native_scale`, on its training run's validation scenes.

    Why on those: choosing a serving scale is a model-selection decision, so it must not look at
    the held-out scenes that the reported figure comes from.
    """
    from export.data.scenes import make_scenes
    from export.models.fcn import SCENE_PREPROCESSING
    from export.train.segmenter import LABELS, SEGMENTER_SPEC

    scenes = make_scenes(seed, count, SEGMENTER_SPEC, bundled_validation_split())
    results = {}
    for scale in scales:
        spec = SCENE_PREPROCESSING.model_copy(update={"native_scale": scale})
        results[f"{scale:g}"] = score(predict_onnx(variant_onnx("fcn8s"), spec, scenes), scenes, LABELS)["mean_iou"]
    return results


def save_heldout_samples(scenes, maps: dict, path: Path, count: int = 6) -> None:
    """Grid PNG: image | truth | each variant's prediction, for the first `count` held-out scenes."""
    from export.train.segmenter import LABELS
    from service.postprocess.segment import palette

    plt = pyplot()
    colours = palette(len(LABELS))
    columns = ["image", "truth", *maps]
    fig, axes = plt.subplots(count, len(columns), figsize=(2.0 * len(columns), 2.0 * count), squeeze=False)
    for row, scene in enumerate(scenes[:count]):
        panels = [scene.image, colours[scene.label_map], *(colours[m[row]] for m in maps.values())]
        for col, panel in enumerate(panels):
            axes[row][col].imshow(panel)
            axes[row][col].set_axis_off()
            if row == 0:
                axes[row][col].set_title(columns[col], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_readme(model_dir: Path) -> None:
    """model_repo/fcn8s/README.md from its config and model card."""
    from service.config import load_model_config

    card = json.loads((model_dir / "1" / "model_card.json").read_text())
    evaluation, training = card.get("evaluation", {}), card.get("training", {})
    preprocessing = load_model_config(model_dir / "config.yaml").preprocessing
    scale, stride = preprocessing.native_scale, preprocessing.stride
    lines = [
        f"# {card['name']}",
        "",
        'FCN-8s (the lecture\'s "Segmentation" section): a small VGG backbone made fully convolutional, a 1×1 '
        "convolution classifier giving one heat map per class, learned 2× and 8× transposed-convolution "
        "upsampling, and skip fusion of pool4 and pool3 scores.",
        "",
        f"- classes: {', '.join(card['classes'])} (background first)",
        f"- input `{card['input']['name']}`: N×3×H×W float32, any H, W "
        f"(`resize: native` with `native_scale: {scale:g}`: "
        f"the image scaled {scale:g}×, padded bottom/right to a multiple of {stride})",
        f"- output `{card['output']['name']}`: N×{len(card['classes'])}×H×W logits",
        f"- parameters: {card['parameters']:,}; ONNX opset {card['onnx']['opset']}; parity with torch (max abs diff): "
        + ", ".join(f"{k}: {v:.2e}" for k, v in card["parity_max_abs_diff"].items()),
        "",
    ]
    if card.get("test_time", {}).get("flip_average"):
        lines += [
            "The graph runs the network twice, on the image and on its left-right mirror, and returns the mean of "
            "the two logits (mirrored back); docs/segmentation.md gives the single-pass figures.",
            "",
        ]
    if evaluation:
        lines += [
            f"Held-out evaluation ({evaluation['scenes']} scenes of the held-out split, seed {evaluation['seed']}; "
            "IoU = TP / (TP + FP + FN) over all pixels, mean over classes):",
            "",
            "| model | training steps | mean IoU | pixel accuracy | " + " | ".join(card["classes"]) + " |",
            "|---|---|---|---|" + "---|" * len(card["classes"]),
        ]
        for name, result in evaluation["results"].items():
            lines.append(
                f"| {name} | {result.get('training_steps', '(fcn8s)')} | {result['mean_iou']:.4f} | "
                f"{result['pixel_accuracy']:.4f} | "
                + " | ".join(f"{result['iou'][c]:.3f}" for c in card["classes"])
                + " |"
            )
        stretched = next((name for name in evaluation["results"] if name.startswith("fcn8s_stretch_")), None)
        lines += [
            "",
            "All three variants share the backbone and the training recipe (same scenes, schedule and CPU budget: "
            f"a run stops after {training.get('planned_steps')} steps or {training.get('budget_minutes')} CPU-minutes, "
            "whichever comes first); only the skips differ."
            + (
                f" `{stretched}` is the bundled network served with `resize: stretch` to a fixed size instead of at "
                "native size."
                if stretched
                else ""
            ),
            "",
        ]
        fcn8s = evaluation["results"]["fcn8s"]
        weakest = sorted(fcn8s["iou"], key=fcn8s["iou"].get)[:2]
        verdict = "meets" if fcn8s["mean_iou"] >= TARGET_MEAN_IOU else "does **not** meet"
        lines += [
            f"fcn8s {verdict} the target of {TARGET_MEAN_IOU} mean IoU on the held-out scenes; its weakest classes "
            f"are {weakest[0]} ({fcn8s['iou'][weakest[0]]:.3f}) and {weakest[1]} ({fcn8s['iou'][weakest[1]]:.3f}).",
            "",
        ]
    if training:
        lines += [
            f"Trained for {training.get('cpu_seconds', '?')} CPU-seconds ({training.get('steps')} steps, batch "
            f"{training.get('batch_size')} of {training.get('crop')}×{training.get('crop')} crops, "
            f"{training.get('torch_threads')} thread; {training.get('wall_seconds')} s "
            f"wall on a shared machine) on {training.get('scenes')} scenes from {training.get('data')}.",
            "",
            f"Reproduce: `{training.get('reproduce')}` then `python -m export.evaluate.segmenter`.",
            "",
        ]
    lines += ["Details: `1/model_card.json`.", ""]
    (model_dir / "README.md").write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=HELDOUT_SCENES)
    parser.add_argument("--seed", type=int, default=HELDOUT_SEED)
    parser.add_argument("--no-write", action="store_true", help="print only; leave the model card alone")
    parser.add_argument(
        "--scale-sweep", help="comma list of native_scale values: fcn8s on validation scenes, prints only"
    )
    args = parser.parse_args()
    from export.train.segmenter import RUN_ROOT

    if args.scale_sweep:
        try:
            scales = [float(v) for v in args.scale_sweep.split(",") if v.strip()]
        except ValueError:
            parser.error(f"--scale-sweep takes numbers separated by commas, got {args.scale_sweep!r}")
        print(
            json.dumps(
                {
                    "scenes": (
                        f"{VALIDATION_SCENES} {bundled_validation_split()}-split validation scenes, "
                        f"seed {VALIDATION_SEED}"
                    ),
                    "mean_iou_by_native_scale": scale_sweep(scales),
                },
                indent=2,
            )
        )
        return

    results, maps = evaluate_all(args.scenes, args.seed)
    print(json.dumps(results, indent=2))
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    save_heldout_samples(maps.pop("scenes"), maps, RUN_ROOT / "heldout_samples.png")
    if args.no_write:
        return
    card_path = BUNDLED / "1" / "model_card.json"
    card = json.loads(card_path.read_text())
    from export.models.fcn import SCENE_PREPROCESSING

    resize = f"native, native_scale {SCENE_PREPROCESSING.native_scale:g}, stride {SCENE_PREPROCESSING.stride}"
    card["evaluation"] = {
        "scenes": args.scenes,
        "seed": args.seed,
        "split": "heldout",
        "resize": resize,
        "metric": "IoU = TP / (TP + FP + FN) per class over all pixels; mean over classes incl. background",
        "results": results,
    }
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    write_readme(BUNDLED)


if __name__ == "__main__":
    main()
