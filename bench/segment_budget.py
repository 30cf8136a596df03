"""`python -m bench.segment_budget`: what the large-image policy costs a native-resolution segmenter.

fcn8s serves images at their own size (x2, padded to a multiple of 32). An image whose input tensor
would exceed its share of `batching.max_request_bytes` is downscaled until it fits
(service/budget.py), and the mask is mapped back to the original size. This measures mean IoU,
with the serving path's own functions (service.budget, service.preprocess, service.postprocess),
on the held-out scenes of export/evaluate/segmenter.py:

* as generated (65-96 px; far inside the default 16 MiB budget, so nothing is downscaled), with
  and without the budget applied, to show the default leaves ordinary images untouched;
* enlarged `--enlarge` times (an 8x scene is a 520-768 px photo whose input would be up to 28 MB),
  served at full size (no budget), at the bundled default budget, and at a tighter one.

Needs the export extra (torch) only to generate the scenes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

import cv2
import numpy as np

from export.evaluate.segmenter import HELDOUT_SEED, heldout_scenes, score
from export.parity import cpu_session
from export.train.segmenter import LABELS
from service.budget import fit_to_budget
from service.config import load_model_config
from service.postprocess.segment import label_map_from_logits
from service.preprocess import preprocess_image

MODEL_DIR = "model_repo/fcn8s"


def enlarge(scene, factor: int):
    """The scene `factor` times larger: the image bilinearly, the labels nearest (they are classes)."""
    height, width = scene.label_map.shape
    size = (width * factor, height * factor)
    return replace(
        scene,
        image=cv2.resize(scene.image, size, interpolation=cv2.INTER_LINEAR),
        label_map=cv2.resize(scene.label_map, size, interpolation=cv2.INTER_NEAREST),
    )


def predict(session, spec, scenes, budget: int | None) -> tuple[list[np.ndarray], int]:
    """Label maps as the server makes them; returns them and how many images were downscaled."""
    maps, downscaled = [], 0
    for scene in scenes:
        fitted = spec
        if budget is not None:
            encoded = cv2.imencode(".png", scene.image)[1].tobytes()  # the budget reads the header
            fitted = fit_to_budget(encoded, spec, budget)
            downscaled += fitted is not spec
        tensor, info = preprocess_image(scene.image, fitted, source_order="rgb")
        logits = session.run(None, {"input": tensor[None]})[0][0]
        maps.append(label_map_from_logits(logits, info))
    return maps, downscaled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=240, help="held-out scenes as generated")
    parser.add_argument("--enlarged-scenes", type=int, default=60, help="of those, how many to enlarge")
    parser.add_argument("--enlarge", type=int, default=8)
    parser.add_argument("--tight-budget", type=int, default=4 * 2**20)
    args = parser.parse_args(argv)
    config = load_model_config(f"{MODEL_DIR}/config.yaml")
    spec, default = config.preprocessing, config.batching.max_request_bytes
    session = cpu_session(open(f"{MODEL_DIR}/1/model.onnx", "rb").read())
    scenes = heldout_scenes(args.scenes, HELDOUT_SEED)
    rows = []
    big = [enlarge(scene, args.enlarge) for scene in scenes[: args.enlarged_scenes]]
    for name, subset, budget in (
        ("as generated, no budget", scenes, None),
        (f"as generated, default budget {default}", scenes, default),
        (f"enlarged x{args.enlarge}, no budget", big, None),
        (f"enlarged x{args.enlarge}, default budget {default}", big, default),
        (f"enlarged x{args.enlarge}, budget {args.tight_budget}", big, args.tight_budget),
    ):
        started = time.perf_counter()
        maps, downscaled = predict(session, spec, subset, budget)
        result = score(maps, subset, LABELS)
        rows.append(
            {
                "case": name,
                "scenes": len(subset),
                "downscaled": downscaled,
                "mean_iou": result["mean_iou"],
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
