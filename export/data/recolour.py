"""Recolour the shapes of a synthetic scene in flat, saturated "product" colours.

Why: the scene generator paints each shape in a uniformly random RGB colour, so the corners of the
colour cube — white, black, pure primaries and secondaries, the colours of real packaging and of
the bundled sample clips — are almost never drawn (all three channels at 240 or more happens once in
about 4,000 shapes). The detector trained on such scenes saw a white disc so rarely that it
found one with the right box and class but with low objectness. Recolouring a share of the
shapes in those colours closes the gap without changing the scenes' geometry or their ground
truth: boxes, labels and masks stay valid, so held-out evaluation scenes are untouched.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from export.data.scenes import SCENE_CLASSES, Scene, contrasts, opposite_corner

FACE = SCENE_CLASSES.index("face")


def corner_colour(rng: np.random.Generator, under: np.ndarray, tries: int = 10) -> np.ndarray:
    """A colour near a corner of the RGB cube (each channel 0-40 or 215-255) that contrasts with
    `under` as the generator's own shape colours do (export.data.scenes.contrasts)."""
    for _ in range(tries):
        high = rng.random(3) < 0.5
        colour = np.where(high, rng.integers(215, 256, size=3), rng.integers(0, 41, size=3)).astype(np.float32)
        if contrasts(colour, under):
            return colour
    return opposite_corner(under).astype(np.float32)


def recolour_shapes(scene: Scene, rng: np.random.Generator, share: float, noise_std: float) -> Scene:
    """A copy of `scene` where each shape (never a face) is repainted, with probability `share`,
    in a corner colour plus sensor noise (std drawn up to `noise_std`, as the generator draws it);
    the background around it is unchanged."""
    if share <= 0 or not len(scene.labels):
        return scene
    image = scene.image.copy()
    for label, mask in zip(scene.labels, scene.masks):
        if int(label) == FACE or rng.random() >= share or not mask.any():
            continue
        ring = _surroundings(mask)
        colour = corner_colour(rng, image[ring] if ring.any() else image)
        noise = rng.standard_normal((int(mask.sum()), 3)).astype(np.float32) * np.float32(rng.uniform(0.0, noise_std))
        image[mask] = np.clip(colour + noise, 0, 255).astype(np.uint8)
    return replace(scene, image=image)


def _surroundings(mask: np.ndarray, margin: int = 3) -> np.ndarray:
    """Pixels within `margin` of the mask's box but outside the mask: what the shape is seen against."""
    rows, cols = np.nonzero(mask)
    top, bottom = max(0, rows.min() - margin), rows.max() + margin + 1
    left, right = max(0, cols.min() - margin), cols.max() + margin + 1
    ring = np.zeros_like(mask)
    ring[top:bottom, left:right] = True
    return ring & ~mask
