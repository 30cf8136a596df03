"""service/postprocess/segment.py against references: torch's bilinear interpolation, cv2 decoding."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from service.config import PreprocessingConfig
from service.postprocess import segment
from service.postprocess.segment import (
    class_pixel_counts,
    content_cells,
    encode_label_map,
    label_map_from_logits,
    overlay_png,
    palette,
    probability_maps,
)
from service.preprocess import ResizeInfo, resize_image


def torch_label_map(logits: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Reference: bilinear (align_corners=False) resize of the logits, argmax; plus the top-2 margin."""
    resized = F.interpolate(torch.from_numpy(logits)[None].double(), size=size, mode="bilinear", align_corners=False)[0]
    top2 = resized.topk(2, dim=0).values
    return resized.argmax(0).numpy(), (top2[0] - top2[1]).numpy()


def assert_same_labels(actual: np.ndarray, expected: np.ndarray, margin: np.ndarray) -> None:
    decided = margin > 1e-4  # float32 vs float64 may flip exact ties only
    assert decided.mean() > 0.99
    np.testing.assert_array_equal(actual[decided], expected[decided])


@pytest.mark.parametrize("original_hw", [(37, 53), (8, 5), (16, 16), (101, 64)])
def test_stretch_matches_torch_bilinear_then_argmax(original_hw):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 16, 16)).astype(np.float32)
    info = ResizeInfo(original_hw, (16 / original_hw[0], 16 / original_hw[1]), (0.0, 0.0), (16, 16))
    expected, margin = torch_label_map(logits, original_hw)
    actual = label_map_from_logits(logits, info)
    assert actual.shape == original_hw and actual.dtype == np.uint8
    assert_same_labels(actual, expected, margin)


def test_resizes_logits_not_labels():
    """Two classes whose logits cross between cells: bilinear logits put the boundary mid-way,
    where nearest-neighbour on a label map would put it on a cell edge."""
    logits = np.zeros((2, 1, 2), dtype=np.float32)
    logits[1] = [[-1.0, 3.0]]  # class 1 wins where the interpolated value > 0: x > 1/4 of the gap
    info = ResizeInfo((1, 8), (1.0, 0.25), (0.0, 0.0), (1, 2))
    assert label_map_from_logits(logits, info).tolist() == [[0, 0, 0, 1, 1, 1, 1, 1]]


def test_native_padding_is_removed_exactly():
    spec = PreprocessingConfig(resize="native", stride=32)
    image = np.zeros((70, 90, 3), dtype=np.uint8)
    _, info = resize_image(image, spec)
    assert info.input_hw == (96, 96)
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 96, 96)).astype(np.float32)
    logits[3, 70:, :] = logits[3, :, 90:] = 100.0  # padding votes loudly for class 3
    labels = label_map_from_logits(logits, info)
    assert labels.shape == (70, 90)
    np.testing.assert_array_equal(labels, logits[:, :70, :90].argmax(0))


def test_letterbox_equals_torch_on_the_content_crop():
    spec = PreprocessingConfig(resize="letterbox", size=(64, 64))
    _, info = resize_image(np.zeros((40, 100, 3), dtype=np.uint8), spec)
    top, left, bottom, right = info.content_window()
    assert (top, bottom) != (0, 64)  # letterboxed: rows of padding
    logits = np.random.default_rng(2).normal(size=(3, 64, 64)).astype(np.float32)
    logits[:, :top] = logits[:, bottom:] = 0.0
    logits[2, :top] = logits[2, bottom:] = 50.0
    expected, margin = torch_label_map(np.ascontiguousarray(logits[:, top:bottom, left:right]), (40, 100))
    assert_same_labels(label_map_from_logits(logits, info), expected, margin)


def test_strips_give_the_same_answer(monkeypatch):
    logits = np.random.default_rng(3).normal(size=(6, 24, 24)).astype(np.float32)
    info = ResizeInfo((97, 131), (24 / 97, 24 / 131), (0.0, 0.0), (24, 24))
    whole = label_map_from_logits(logits, info)
    monkeypatch.setattr(segment, "STRIP_ELEMENTS", 6 * 131 * 3)  # three rows per strip
    np.testing.assert_array_equal(label_map_from_logits(logits, info), whole)


def test_coarse_logits_content_cells():
    info = ResizeInfo((70, 90), (1.0, 1.0), (0.0, 0.0), (96, 96))
    assert content_cells(info, (96, 96)) == (0, 0, 70, 90)
    assert content_cells(info, (12, 12)) == (0, 0, 9, 12)  # stride-8 map: ceil(70 / 8), ceil(90 / 8)


def test_many_classes_give_a_16_bit_png():
    logits = np.full((300, 4, 4), -1.0, dtype=np.float32)
    logits[299, :2] = logits[7, 2:] = 1.0
    labels = label_map_from_logits(logits, ResizeInfo((4, 4), (1.0, 1.0), (0.0, 0.0), (4, 4)))
    assert labels.dtype == np.uint16
    decoded = cv2.imdecode(np.frombuffer(encode_label_map(labels), np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, labels)
    assert set(np.unique(decoded)) == {7, 299}


def test_label_png_roundtrip_and_counts():
    labels = np.random.default_rng(4).integers(0, 5, size=(13, 29)).astype(np.uint8)
    decoded = cv2.imdecode(np.frombuffer(encode_label_map(labels), np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == (13, 29) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, labels)
    counts = class_pixel_counts(labels, 6)
    assert counts.tolist() == [int((labels == c).sum()) for c in range(6)]
    assert counts.sum() == labels.size


def test_probabilities_are_softmax_of_the_unpadded_logits():
    logits = np.random.default_rng(5).normal(size=(3, 32, 32)).astype(np.float32)
    info = ResizeInfo((20, 30), (1.0, 1.0), (0.0, 0.0), (32, 32))
    probs = probability_maps(logits, info)
    assert probs.shape == (3, 20, 30) and probs.dtype == np.float32
    expected = torch.from_numpy(logits[:, :20, :30]).softmax(0).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    full = torch.from_numpy(logits).softmax(0).numpy()  # a model that outputs probabilities: crop only
    np.testing.assert_array_equal(probability_maps(full, info, apply_softmax=False), full[:, :20, :30])


def test_overlay_paints_classes_and_keeps_background():
    image = np.full((10, 12, 3), 100, dtype=np.uint8)  # BGR
    labels = np.zeros((10, 12), dtype=np.uint8)
    labels[2:5, 3:9] = 1
    decoded = cv2.imdecode(np.frombuffer(overlay_png(image, labels, 2), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (10, 12, 3)
    np.testing.assert_array_equal(decoded[labels == 0], image[labels == 0])
    red, green, blue = palette(2)[1]
    expected_bgr = np.rint(np.array([blue, green, red]) * 0.5 + 50).astype(np.uint8)
    np.testing.assert_array_equal(decoded[3, 4], expected_bgr)
    gray = cv2.imdecode(np.frombuffer(overlay_png(image[:, :, 0], labels, 2), np.uint8), cv2.IMREAD_COLOR)
    assert gray.shape == (10, 12, 3)


def test_palette_is_distinct_for_many_classes():
    colours = palette(300)
    assert colours.shape == (300, 3) and colours.dtype == np.uint8
    assert len({tuple(c) for c in colours[:60]}) == 60


def test_counts_are_summed_over_strips(monkeypatch):
    """A mask taller than one strip is counted strip by strip (never cast to int64 whole) to the same counts."""
    monkeypatch.setattr(segment, "STRIP_ELEMENTS", 64)
    labels = np.random.default_rng(6).integers(0, 6, size=(41, 29)).astype(np.uint8)
    counts = class_pixel_counts(labels, 6)
    assert counts.tolist() == np.bincount(labels.ravel(), minlength=6).tolist()


def test_overlay_in_strips_equals_one_pass(monkeypatch):
    """Blending strip by strip (bounded float32 work) gives the same PNG as one strip over the whole image."""
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, size=(37, 23, 3)).astype(np.uint8)
    labels = rng.integers(0, 4, size=(37, 23)).astype(np.uint8)
    whole = overlay_png(image, labels, 4)
    monkeypatch.setattr(segment, "STRIP_ELEMENTS", 100)
    assert overlay_png(image, labels, 4) == whole
