"""The seeded scene generator shared by detection, CAM and segmentation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from export.data.scenes import (
    BACKGROUNDS,
    DISTRACTOR_IDS,
    FACE_IDS,
    SCENE_CLASSES,
    SceneSpec,
    make_scene,
    make_scenes,
)

SPEC = SceneSpec(height=(96, 160), width=(96, 160), objects=(2, 6), object_size=(12, 48), distractors=(1, 3))
FIELDS = ("image", "boxes", "labels", "masks", "label_map")


def test_same_seed_gives_the_identical_scene_and_other_seeds_differ():
    first = make_scene(np.random.default_rng(7), SPEC)
    again = make_scene(np.random.default_rng(7), SPEC)
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(first, field), getattr(again, field))
    other = make_scene(np.random.default_rng(8), SPEC)
    assert first.image.shape != other.image.shape or not np.array_equal(first.image, other.image)


def test_make_scenes_prefix_is_stable():
    short, long = make_scenes(3, 2, SPEC), make_scenes(3, 4, SPEC)
    for a, b in zip(short, long):
        np.testing.assert_array_equal(a.image, b.image)


@pytest.mark.parametrize("split", ["train", "fit", "validation", "heldout"])
@pytest.mark.parametrize("patch_jitter", [False, True])
def test_scene_arrays_are_consistent(split, patch_jitter):
    spec = dataclasses.replace(SPEC, patch_jitter=patch_jitter)
    for scene in make_scenes(11, 12, spec, split):
        height, width = scene.image.shape[:2]
        assert scene.image.dtype == np.uint8 and scene.image.shape[2] == 3
        assert 96 <= height <= 160 and 96 <= width <= 160
        n = len(scene.labels)
        assert scene.boxes.shape == (n, 4) and scene.boxes.dtype == np.float32
        assert scene.masks.shape == (n, height, width) and scene.masks.dtype == bool
        assert scene.label_map.shape == (height, width) and scene.label_map.dtype == np.uint8
        assert np.all((scene.labels >= 0) & (scene.labels < len(SCENE_CLASSES)))
        assert (
            np.all(scene.boxes[:, :2] >= 0)
            and np.all(scene.boxes[:, 2] <= width)
            and np.all(scene.boxes[:, 3] <= height)
        )
        assert np.all(scene.boxes[:, 2:] > scene.boxes[:, :2])
        assert not np.any(scene.masks.sum(axis=0) > 1), "visible masks must not overlap"
        for box, label, mask in zip(scene.boxes.astype(int), scene.labels, scene.masks):
            assert mask.sum() > 0
            rows, cols = np.nonzero(mask)
            assert box[0] <= cols.min() and cols.max() < box[2] and box[1] <= rows.min() and rows.max() < box[3]
            assert np.all(scene.label_map[mask] == label + 1)
        covered = scene.masks.any(axis=0)
        assert np.all(scene.label_map[~covered] == 0)


def test_occlusion_is_bounded():
    spec = SceneSpec(height=(64, 64), width=(64, 64), objects=(6, 6), object_size=(24, 40), max_occlusion=0.3)
    for scene in make_scenes(5, 10, spec):
        for box, mask in zip(scene.boxes.astype(int), scene.masks):
            # shapes fill at least ~40 % of their tight box; 30 % occlusion leaves >= ~28 % visible
            assert mask.sum() >= 0.25 * (box[2] - box[0]) * (box[3] - box[1])


def test_single_object_scenes_for_cam():
    spec = SceneSpec(height=(64, 64), width=(64, 64), objects=(1, 1), object_size=(20, 40), distractors=(0, 0))
    for scene in make_scenes(9, 20, spec):
        assert len(scene.labels) == 1 and scene.masks.shape == (1, 64, 64)


def test_class_subset_is_respected():
    spec = SceneSpec(classes=("face", "star"), objects=(3, 3))
    labels = np.concatenate([scene.labels for scene in make_scenes(2, 10, spec)])
    assert set(labels.tolist()) <= {0, 4}


def test_train_and_heldout_sources_are_disjoint():
    assert SCENE_CLASSES[0] == "face"
    assert not set(FACE_IDS["train"]) & set(FACE_IDS["heldout"])
    assert not set(DISTRACTOR_IDS["train"]) & set(DISTRACTOR_IDS["heldout"])
    assert set(FACE_IDS["train"]) | set(FACE_IDS["heldout"]) == set(range(100))
    assert min(DISTRACTOR_IDS["train"]) >= 100 and min(DISTRACTOR_IDS["heldout"]) >= 100
    assert not set(BACKGROUNDS["train"]) & set(BACKGROUNDS["heldout"])


def test_fit_and_validation_divide_the_train_identities():
    for ids in (FACE_IDS, DISTRACTOR_IDS):
        assert not set(ids["fit"]) & set(ids["validation"])
        assert set(ids["fit"]) | set(ids["validation"]) == set(ids["train"])
    assert BACKGROUNDS["fit"] == BACKGROUNDS["validation"] == BACKGROUNDS["train"]


def test_patch_jitter_varies_the_lfw_crops_only_when_asked():
    """Off (the default), a crop is drawn exactly as before; on, each crop is a rotated, zoomed,
    shifted, gamma-corrected view of its source: different from it, still recognisably it."""
    from export.data.scenes import _jitter_crop, _lfw, _lfw_patch

    default = _lfw_patch(np.random.default_rng(5), range(0, 1), 25)[0]
    np.testing.assert_array_equal(default, _lfw_patch(np.random.default_rng(5), range(0, 1), 25, jitter=False)[0])
    source = _lfw()[0]
    views = [_jitter_crop(np.random.default_rng(seed), source) for seed in range(8)]
    for view in views:
        assert view.dtype == np.uint8 and view.shape == source.shape
        assert np.abs(view.astype(int) - source).mean() > 2.0
        assert np.corrcoef(view.ravel(), source.ravel())[0, 1] > 0.3
    assert len({view.tobytes() for view in views}) == len(views)
