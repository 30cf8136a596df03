"""Write the committed sample images in examples/images/ (developers only: needs the export extra).

    python -m examples.make_sample_images

Seeded, so a rerun rewrites identical pixels (JPEG bytes may differ across OpenCV versions). What
it writes, all small (the whole folder stays well under 500 KB):
- digit_<label>.png: 4 held-out MNIST digits (28x28 gray), one per class, never seen in training;
- astronaut.jpg, chelsea.jpg: two skimage photos, longer side 320 px;
- scene_<i>.jpg: 3 held-out synthetic scenes (160x160) of faces and shapes on photo backgrounds,
  for detection and segmentation;
- object_scene.jpg: one held-out scene with a single object, for class activation maps;
- manifest.json: what each file shows (digit label; scene boxes and labels), so the demo can
  print the expected answer next to the server's.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

OUT = Path(__file__).resolve().parent / "images"
SEED = 2024
DIGIT_CLASSES = (2, 3, 7, 9)
JPEG_QUALITY = 90


def write_digits(rng: np.random.Generator) -> dict:
    from export.data.mnist import heldout_digits

    images, labels = heldout_digits()
    manifest = {}
    for digit in DIGIT_CLASSES:
        index = int(rng.choice(np.flatnonzero(labels == digit)))
        name = f"digit_{digit}.png"
        cv2.imwrite(str(OUT / name), np.asarray(images[index], dtype=np.uint8).reshape(28, 28))
        manifest[name] = {"kind": "digit", "label": digit}
    return manifest


def write_photos() -> dict:
    from skimage import data

    manifest = {}
    for name in ("astronaut", "chelsea"):
        rgb = getattr(data, name)()
        scale = 320 / max(rgb.shape[:2])
        size = (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(OUT / f"{name}.jpg"), small[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        manifest[f"{name}.jpg"] = {"kind": "photo", "source": f"skimage.data.{name}"}
    return manifest


def _scene_entry(scene, classes) -> dict:
    return {
        "kind": "scene",
        "boxes": [[round(float(v), 1) for v in box] for box in scene.boxes],
        "labels": [classes[int(label)] for label in scene.labels],
    }


def write_scenes() -> dict:
    from export.data.scenes import SCENE_CLASSES, SceneSpec, make_scenes

    manifest = {}
    for index, scene in enumerate(make_scenes(SEED, 3, SceneSpec(objects=(2, 4)), split="heldout")):
        name = f"scene_{index}.jpg"
        cv2.imwrite(str(OUT / name), scene.image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        manifest[name] = _scene_entry(scene, SCENE_CLASSES)
    single = SceneSpec(height=(128, 128), width=(128, 128), objects=(1, 1), object_size=(40, 64), distractors=(0, 0))
    (scene,) = make_scenes(SEED + 1, 1, single, split="heldout")
    cv2.imwrite(str(OUT / "object_scene.jpg"), scene.image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    manifest["object_scene.jpg"] = _scene_entry(scene, SCENE_CLASSES)
    return manifest


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    manifest = {**write_digits(rng), **write_photos(), **write_scenes()}
    lines = [f"  {json.dumps(name)}: {json.dumps(entry)}" for name, entry in sorted(manifest.items())]
    (OUT / "manifest.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")
    total = sum(path.stat().st_size for path in OUT.iterdir())
    print(f"wrote {len(manifest)} images to {OUT} ({total / 1024:.0f} KB in all)")


if __name__ == "__main__":
    main()
