"""Seeded synthetic scenes: real face crops and drawn shapes pasted onto real photo backgrounds.

One generator serves three tasks: detection (boxes + labels), class activation maps (one object per
image, its box and mask) and segmentation (several overlapping objects, a per-pixel label map).

Everything ships offline: faces and distractors are `skimage.data.lfw_subset()` (200 crops of
25x25; the first 100 are faces, the rest non-face distractors), backgrounds are `skimage.data`
photos and textures. Faces, distractors and backgrounds are split into "train" and "heldout" sets
that never share a source image, so held-out scenes measure generalisation, not memory.

Conventions:
- `labels` index `SCENE_CLASSES` (0 = face). `label_map` stores label + 1, so 0 is background.
- Faces and distractors are pasted through the same ellipse mask (full crop height, 82 % of its
  width, so it reads as a face outline and never as a circle); the mask's shape therefore says
  nothing about face vs distractor. A face's box is the tight box of its ellipse.
- Shapes are filled polygons/circles drawn with OpenCV in a colour that contrasts with the
  background under them; their box is the tight box of the drawn pixels.
- `boxes` are x1, y1, x2, y2 in pixel-edge coordinates (a pixel column c spans [c, c + 1)), of the
  whole object; later objects may hide up to `max_occlusion` of an earlier one. `masks` hold the
  visible pixels only, so `masks[i]` equals `label_map == labels[i] + 1` restricted to object i.
- Same generator state, same spec -> the identical scene (no global random state is touched).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

SCENE_CLASSES = ("face", "circle", "square", "triangle", "star")
MIN_CONTRAST = 90.0  # Euclidean RGB distance between a shape's colour and what it is drawn on

# "fit" and "validation" divide the train split's faces and distractors (same backgrounds), so a
# training run can validate on identities it never fits while "heldout" stays for the final figure
FACE_IDS = {"train": range(0, 80), "fit": range(0, 72), "validation": range(72, 80), "heldout": range(80, 100)}
DISTRACTOR_IDS = {
    "train": range(100, 180),
    "fit": range(100, 172),
    "validation": range(172, 180),
    "heldout": range(180, 200),
}
_TRAIN_BACKGROUNDS = ("grass", "brick", "coffee", "rocket", "hubble_deep_field", "moon", "retina", "clock", "page")
BACKGROUNDS = {
    "train": _TRAIN_BACKGROUNDS,
    "fit": _TRAIN_BACKGROUNDS,
    "validation": _TRAIN_BACKGROUNDS,
    "heldout": ("gravel", "immunohistochemistry"),
}
SPLITS = ("train", "fit", "validation", "heldout")


@dataclass(frozen=True)
class SceneSpec:
    """What a scene may contain. Ranges are inclusive (low, high) pairs.

    object_size is the object's longer side in pixels, drawn log-uniformly so small objects are
    as common as large ones. classes restricts which SCENE_CLASSES appear (labels still index
    SCENE_CLASSES). patch_jitter (training data only) also rotates, zooms, shifts and
    gamma-corrects each face and distractor crop, so 72-80 source crops show more variety; it
    draws extra random numbers, so the same seed gives other scenes with it on.
    """

    height: tuple[int, int] = (160, 160)
    width: tuple[int, int] = (160, 160)
    objects: tuple[int, int] = (1, 4)
    object_size: tuple[int, int] = (16, 64)
    classes: tuple[str, ...] = SCENE_CLASSES
    distractors: tuple[int, int] = (0, 2)
    clutter_lines: tuple[int, int] = (0, 4)
    max_occlusion: float = 0.4
    noise_std: float = 8.0
    blur_probability: float = 0.2
    patch_jitter: bool = False

    def __post_init__(self) -> None:
        for name in ("height", "width", "objects", "object_size", "distractors", "clutter_lines"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"SceneSpec.{name} must be 0 <= low <= high, got {(low, high)}")
        if self.object_size[0] < 4 or self.object_size[1] > min(self.height[0], self.width[0]):
            raise ValueError("SceneSpec.object_size must be >= 4 and fit in the smallest scene")
        unknown = set(self.classes) - set(SCENE_CLASSES)
        if not self.classes or unknown:
            raise ValueError(f"SceneSpec.classes must be a non-empty subset of {SCENE_CLASSES}")
        if not 0.0 <= self.max_occlusion < 1.0:
            raise ValueError("SceneSpec.max_occlusion must be in [0, 1)")


@dataclass(frozen=True)
class Scene:
    """image uint8 [H, W, 3] RGB; boxes float32 [N, 4]; labels int64 [N]; masks bool [N, H, W];
    label_map uint8 [H, W] (label + 1, 0 = background)."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    label_map: np.ndarray


@lru_cache(maxsize=1)
def _lfw() -> np.ndarray:
    """The 200 lfw_subset crops as uint8 [200, 25, 25]."""
    from skimage import data

    return np.round(data.lfw_subset() * 255.0).astype(np.uint8)


@lru_cache(maxsize=None)
def _background(name: str) -> np.ndarray:
    """One skimage.data image as uint8 RGB [H, W, 3]."""
    from skimage import data

    image = np.asarray(getattr(data, name)())
    if image.dtype != np.uint8:
        image = (image.astype(np.float64) * (255.0 / max(float(image.max()), 1e-9))).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def make_scene(rng: np.random.Generator, spec: SceneSpec = SceneSpec(), split: str = "train") -> Scene:
    """Draw one scene from `rng` (which it advances); see the module docstring for conventions."""
    _check_split(split)
    height = int(rng.integers(spec.height[0], spec.height[1] + 1))
    width = int(rng.integers(spec.width[0], spec.width[1] + 1))
    image = _background_crop(rng, height, width, split)
    _draw_clutter(rng, image, spec)
    for _ in range(int(rng.integers(spec.distractors[0], spec.distractors[1] + 1))):
        patch, alpha = _lfw_patch(rng, DISTRACTOR_IDS[split], _object_size(rng, spec), spec.patch_jitter)
        top, left = _position(rng, alpha.shape, image.shape)
        _paste(image, patch, alpha, top, left)
    owner = np.full((height, width), -1, dtype=np.int16)
    labels, areas, boxes = [], [], []
    for _ in range(int(rng.integers(spec.objects[0], spec.objects[1] + 1))):
        placed = _place_object(rng, image, owner, areas, spec, split)
        if placed is not None:
            labels.append(placed[0])
            boxes.append(placed[1])
            areas.append(placed[2])
    image = _finish(rng, image, spec)
    masks = owner[None, :, :] == np.arange(len(labels), dtype=np.int16)[:, None, None]
    label_map = np.zeros((height, width), dtype=np.uint8)
    for index, label in enumerate(labels):
        label_map[masks[index]] = label + 1
    return Scene(
        image=image,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        masks=masks,
        label_map=label_map,
    )


def make_scenes(seed: int, count: int, spec: SceneSpec = SceneSpec(), split: str = "train") -> list[Scene]:
    """`count` scenes; scene i depends only on (seed, i), so a prefix of a longer list is identical."""
    return [make_scene(np.random.default_rng([seed, index]), spec, split) for index in range(count)]


def _object_size(rng: np.random.Generator, spec: SceneSpec) -> int:
    low, high = spec.object_size
    return int(round(np.exp(rng.uniform(np.log(low), np.log(high + 0.49)))))


def _position(rng: np.random.Generator, patch_hw, image_shape) -> tuple[int, int]:
    """Top-left corner that keeps the whole patch inside the image."""
    top = int(rng.integers(0, image_shape[0] - patch_hw[0] + 1))
    left = int(rng.integers(0, image_shape[1] - patch_hw[1] + 1))
    return top, left


def _background_crop(rng: np.random.Generator, height: int, width: int, split: str) -> np.ndarray:
    """A random crop of a random background photo, resized, flipped and tinted."""
    names = BACKGROUNDS[split]
    source = _background(names[int(rng.integers(len(names)))])
    src_h, src_w = source.shape[:2]
    fraction = rng.uniform(0.35, 1.0)
    crop_h = max(8, int(min(src_h, src_w * height / width) * fraction))
    crop_w = max(8, min(src_w, int(round(crop_h * width / height))))
    top, left = _position(rng, (crop_h, crop_w), source.shape)
    crop = source[top : top + crop_h, left : left + crop_w]
    crop = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA if crop_w > width else cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    gain = rng.uniform(0.7, 1.3, size=3) * rng.uniform(0.6, 1.2)
    return np.clip(crop.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def _draw_clutter(rng: np.random.Generator, image: np.ndarray, spec: SceneSpec) -> None:
    """Thin random line segments: edges that are not objects."""
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(spec.clutter_lines[0], spec.clutter_lines[1] + 1))):
        p1 = (int(rng.integers(width)), int(rng.integers(height)))
        p2 = (int(rng.integers(width)), int(rng.integers(height)))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        cv2.line(image, p1, p2, colour, int(rng.integers(1, 3)), cv2.LINE_AA)


def _lfw_patch(rng: np.random.Generator, ids: range, size: int, jitter: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """An lfw crop scaled to `size`, flipped, brightness/contrast/tint-jittered; ellipse alpha."""
    crop = _lfw()[ids[int(rng.integers(len(ids)))]]
    if jitter:
        crop = _jitter_crop(rng, crop)
    crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR if size > 25 else cv2.INTER_AREA)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    gray = crop.astype(np.float32) * rng.uniform(0.7, 1.3) + rng.uniform(-35, 35)
    patch = np.clip(gray[:, :, None] * rng.uniform(0.85, 1.15, size=3), 0, 255).astype(np.uint8)
    alpha = np.zeros((size, size), dtype=np.uint8)
    centre = ((size - 1) / 2.0, (size - 1) / 2.0)
    cv2.ellipse(alpha, (centre, (size * 0.82, float(size)), 0.0), 1, -1)
    return patch, alpha.astype(bool)


def _jitter_crop(rng: np.random.Generator, crop: np.ndarray) -> np.ndarray:
    """The crop rotated by up to ±15°, zoomed 1-1.2× about a point up to 1.5 px off centre, and
    gamma-corrected (0.7-1.4): what a face looks like from another pose, distance or exposure."""
    side = crop.shape[0]
    centre = (side - 1) / 2.0
    matrix = cv2.getRotationMatrix2D((centre, centre), float(rng.uniform(-15, 15)), float(rng.uniform(1.0, 1.2)))
    matrix[:, 2] += rng.uniform(-1.5, 1.5, size=2)
    warped = cv2.warpAffine(crop, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    return np.clip(255.0 * (warped / 255.0) ** gamma, 0, 255).astype(np.uint8)


def _shape_alpha(rng: np.random.Generator, name: str, size: int) -> np.ndarray:
    """Filled shape mask [size, size] (bool) whose tight box spans most of the patch."""
    alpha = np.zeros((size, size), dtype=np.uint8)
    centre = np.array([(size - 1) / 2.0, (size - 1) / 2.0])
    radius = (size - 1) / 2.0
    if name == "circle":
        cv2.circle(alpha, (int(round(centre[0])), int(round(centre[1]))), int(round(radius)), 1, -1)
        return alpha.astype(bool)
    if name == "square":
        tilt = np.deg2rad(rng.uniform(-15, 15))  # side L rotated by tilt spans L(|cos|+|sin|)
        angles = tilt + np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.full(4, 2 * radius / (abs(np.cos(tilt)) + abs(np.sin(tilt))) / np.sqrt(2))
    elif name == "triangle":
        angles = rng.uniform(0, 2 * np.pi) + np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, radius)
    else:  # star: five points, inner radius 40-50 % of the outer
        angles = rng.uniform(0, 2 * np.pi) + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * rng.uniform(0.4, 0.5))
    points = centre + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None]
    cv2.fillPoly(alpha, [np.round(points).astype(np.int32)], 1)
    return alpha.astype(bool)


def contrasts(colour: np.ndarray, under: np.ndarray) -> bool:
    """Is `colour` at least MIN_CONTRAST levels (Euclidean RGB) from the mean colour of `under`?"""
    return bool(np.linalg.norm(colour - under.reshape(-1, 3).mean(axis=0)) >= MIN_CONTRAST)


def opposite_corner(under: np.ndarray) -> np.ndarray:
    """The corner of the RGB cube farthest from the mean colour of `under` (always contrasts)."""
    return np.where(under.reshape(-1, 3).mean(axis=0) > 127, 0, 255)


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random RGB colour at least MIN_CONTRAST levels from the mean colour under the shape."""
    colour = rng.integers(0, 256, size=3)
    for _ in range(20):
        if contrasts(colour, under):
            break
        colour = rng.integers(0, 256, size=3)
    else:
        colour = opposite_corner(under)
    return colour.astype(np.uint8)


def _render(rng, image, label: int, size: int, split: str, top_left, jitter: bool = False):
    """Patch RGB [h, w, 3] and alpha [h, w] of one object of class SCENE_CLASSES[label]."""
    name = SCENE_CLASSES[label]
    if name == "face":
        return _lfw_patch(rng, FACE_IDS[split], size, jitter)
    alpha = _shape_alpha(rng, name, size)
    top, left = top_left
    under = image[top : top + size, left : left + size][alpha]
    colour = _contrasting_colour(rng, under if under.size else image)
    patch = np.empty((size, size, 3), dtype=np.uint8)
    patch[:] = colour
    return patch, alpha


def _place_object(rng, image, owner, areas, spec: SceneSpec, split: str):
    """Try a few positions for one new object; paste it and return (label, box, area) or None."""
    for _ in range(20):
        label = SCENE_CLASSES.index(spec.classes[int(rng.integers(len(spec.classes)))])
        size = _object_size(rng, spec)
        top, left = _position(rng, (size, size), image.shape)
        patch, alpha = _render(rng, image, label, size, split, (top, left), spec.patch_jitter)
        if not alpha.any():
            continue
        window = owner[top : top + size, left : left + size]
        covered = np.bincount(window[alpha].astype(np.int64) + 1, minlength=len(areas) + 1)[1:]
        visible_before = np.bincount(owner.ravel().astype(np.int64) + 1, minlength=len(areas) + 1)[1:]
        if np.any(visible_before - covered < (1.0 - spec.max_occlusion) * np.asarray(areas, dtype=np.int64)):
            continue
        _paste(image, patch, alpha, top, left)
        window[alpha] = len(areas)
        rows, cols = np.nonzero(alpha)
        box = [left + cols.min(), top + rows.min(), left + cols.max() + 1, top + rows.max() + 1]
        return label, box, int(alpha.sum())
    return None


def _paste(image: np.ndarray, patch: np.ndarray, alpha: np.ndarray, top: int, left: int) -> None:
    height, width = alpha.shape
    region = image[top : top + height, left : left + width]
    region[alpha] = patch[alpha]


def _finish(rng: np.random.Generator, image: np.ndarray, spec: SceneSpec) -> np.ndarray:
    """Sensor effects on the finished scene: optional slight blur, then Gaussian noise."""
    if rng.random() < spec.blur_probability:
        image = cv2.GaussianBlur(image, (3, 3), 0)
    sigma = rng.uniform(0.0, spec.noise_std)
    noisy = image.astype(np.float32) + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(noisy, 0, 255).astype(np.uint8)
