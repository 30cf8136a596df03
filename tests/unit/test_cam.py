"""Class activation map math (service/postprocess/cam.py) against torch references."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from service.api.convserve.v1 import vision_pb2 as vpb
from service.config import PreprocessingConfig
from service.errors import InvalidArgument
from service.postprocess import cam
from service.preprocess import ResizeInfo, normalize, resize_image
from service.servicers.vision_convert import explain_options_from_proto
from service.pipelines.explain import ExplainOptions, check_options


def test_cam_matches_torch_gap_network():
    """A conv → GAP → linear network: the CAM's spatial mean before ReLU is logit − bias, and
    the CAM equals ReLU(Σ_k w_ck f_k) computed by torch."""
    torch.manual_seed(0)
    conv, fc = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Linear(8, 4)
    x = torch.randn(1, 3, 9, 7)
    with torch.no_grad():
        features = torch.relu(conv(x))[0]
        logits = fc(features.mean(dim=(1, 2)))
        reference = torch.relu(torch.einsum("ck,khw->chw", fc.weight, features)).numpy()
    weights = fc.weight.detach().numpy()
    for c in range(4):
        raw = cam.class_activation_map(features.numpy(), weights, c)
        assert raw.shape == (9, 7) and raw.dtype == np.float32
        np.testing.assert_allclose(raw, reference[c], atol=1e-6)
        unrectified = np.tensordot(weights[c].astype(np.float64), features.numpy().astype(np.float64), axes=(0, 0))
        assert unrectified.mean() == pytest.approx(float((logits[c] - fc.bias[c]).detach()), abs=1e-5)


@pytest.mark.parametrize(
    "raw_hw, out_hw", [((16, 16), (97, 61)), ((2, 2), (64, 64)), ((7, 5), (3, 4)), ((1, 3), (5, 9))]
)
def test_upsample_matches_torch_bilinear_for_a_stretched_image(raw_hw, out_hw):
    rng = np.random.default_rng(1)
    raw = rng.random(raw_hw).astype(np.float32)
    input_hw = (32, 48)  # a stretch: original (H, W) -> input (32, 48)
    info = ResizeInfo(out_hw, (input_hw[0] / out_hw[0], input_hw[1] / out_hw[1]), (0.0, 0.0), input_hw)
    expected = F.interpolate(torch.from_numpy(raw)[None, None], size=out_hw, mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(cam.upsample_map(raw, info), expected.numpy(), atol=1e-5)


def _grid_sample_reference(raw: np.ndarray, info: ResizeInfo) -> np.ndarray:
    """torch.grid_sample of `raw` at each original pixel's model coordinate; 0 outside the input."""
    height, width = info.original_hw
    ys = (np.arange(height) + 0.5) * info.scale_yx[0] + info.offset_yx[0]
    xs = (np.arange(width) + 0.5) * info.scale_yx[1] + info.offset_yx[1]
    gy, gx = np.meshgrid(2 * ys / info.input_hw[0] - 1, 2 * xs / info.input_hw[1] - 1, indexing="ij")
    grid = torch.from_numpy(np.stack([gx, gy], axis=-1)[None].astype(np.float32))
    sampled = F.grid_sample(
        torch.from_numpy(raw)[None, None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )[0, 0].numpy()
    inside = ((ys >= 0) & (ys < info.input_hw[0]))[:, None] & ((xs >= 0) & (xs < info.input_hw[1]))[None, :]
    return np.where(inside, sampled, 0.0)


@pytest.mark.parametrize("resize", ["letterbox", "center_crop"])
def test_upsample_follows_the_resize_policy(resize):
    """Letterbox padding and centre-crop margins map back exactly (reference: torch grid_sample)."""
    spec = PreprocessingConfig(color_order="rgb", resize=resize, size=(64, 64))
    image = np.zeros((90, 150, 3), dtype=np.uint8)
    _, info = resize_image(image, spec)
    raw = np.random.default_rng(2).random((8, 8)).astype(np.float32) + 0.5
    up = cam.upsample_map(raw, info)
    assert up.shape == (90, 150)
    np.testing.assert_allclose(up, _grid_sample_reference(raw, info), atol=1e-5)
    if resize == "center_crop":  # the crop drops the left and right margins: no evidence there
        assert np.all(up[:, :5] == 0) and np.all(up[:, -5:] == 0) and np.all(up[:, 70:80] > 0)
    else:
        assert np.all(up > 0)


def test_hot_cell_lands_on_the_matching_image_region():
    raw = np.zeros((4, 4), dtype=np.float32)
    raw[0, 3] = 1.0  # top-right cell
    info = ResizeInfo((200, 100), (64 / 200, 64 / 100), (0.0, 0.0), (64, 64))
    row, col = np.unravel_index(np.argmax(cam.upsample_map(raw, info)), (200, 100))
    assert row < 50 and col >= 75


def test_min_max_normalise():
    values = np.array([[2.0, 4.0], [6.0, 3.0]], dtype=np.float32)
    out = cam.min_max_normalise(values)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(out, [[0.0, 0.5], [1.0, 0.25]])
    assert not cam.min_max_normalise(np.full((3, 3), 7.0)).any()


def test_select_maps_ranks_by_mean_and_skips_constant_maps():
    activations = np.zeros((5, 2, 2), dtype=np.float32)
    activations[0] = 9.0  # constant: skipped
    activations[1, 0, 0] = 1.0  # mean 0.25
    activations[2] = [[1.0, 2.0], [3.0, 4.0]]  # mean 2.5
    activations[4, 1, 1] = 2.0  # mean 0.5
    np.testing.assert_array_equal(cam.select_maps(activations, 10), [2, 4, 1])
    np.testing.assert_array_equal(cam.select_maps(activations, 2), [2, 4])


def test_score_cam_masks_are_normalised_upsampled_maps():
    activations = np.random.default_rng(3).random((6, 4, 4)).astype(np.float32)
    masks = cam.score_cam_masks(activations, np.array([3, 1]), (16, 16))
    assert masks.shape == (2, 16, 16) and masks.dtype == np.float32
    for mask, k in zip(masks, (3, 1)):
        up = F.interpolate(
            torch.from_numpy(activations[k])[None, None], size=(16, 16), mode="bilinear", align_corners=False
        )[0, 0].numpy()
        np.testing.assert_allclose(mask, (up - up.min()) / (up.max() - up.min()), atol=1e-5)
    tensor = np.random.default_rng(4).standard_normal((3, 16, 16)).astype(np.float32)
    batch = cam.masked_inputs(tensor, masks)
    assert batch.shape == (2, 3, 16, 16)
    np.testing.assert_allclose(batch[1, 2], tensor[2] * masks[1], rtol=1e-6)


def test_score_cam_weights_are_softmax_of_the_class_score_increase():
    rng = np.random.default_rng(5)
    activations = rng.random((4, 3, 3)).astype(np.float32)
    indices, scores, baseline = np.array([2, 0, 3]), np.array([1.5, -0.5, 3.0], dtype=np.float32), 0.7
    increase = scores - baseline  # the paper's CIC; the baseline cancels in the softmax
    alpha = np.exp(increase) / np.exp(increase).sum()
    normalised = [(a - a.min()) / (a.max() - a.min()) for a in activations[indices]]
    expected = np.maximum(np.tensordot(alpha, normalised, axes=(0, 0)), 0)
    np.testing.assert_allclose(cam.score_cam_map(activations, indices, scores), expected, atol=1e-6)
    np.testing.assert_allclose(cam.score_cam_map(activations, indices, scores + 100.0), expected, atol=1e-6)
    assert not cam.score_cam_map(activations, np.array([], dtype=np.int64), np.array([])).any()


def test_score_cam_map_of_signed_activations_does_not_vanish():
    """tanh-like activations, all below zero: the raw convex combination would be ReLU'd to 0."""
    activations = -1.0 - np.random.default_rng(7).random((3, 5, 5)).astype(np.float32)
    raw = cam.score_cam_map(activations, np.array([0, 1, 2]), np.array([0.1, 0.2, 0.3], dtype=np.float32))
    assert np.isfinite(raw).all() and raw.max() > raw.min() >= 0


@pytest.mark.parametrize("fmt, magic", [("jpeg", b"\xff\xd8"), ("png", b"\x89PNG")])
@pytest.mark.parametrize("gray", [False, True])
def test_overlay_encodes_the_image_size(fmt, magic, gray):
    image = np.full((30, 50) if gray else (30, 50, 3), 128, dtype=np.uint8)
    heat = np.zeros((30, 50), dtype=np.float32)
    heat[:, 25:] = 1.0
    data = cam.render_overlay(image, heat, fmt)
    assert data[: len(magic)] == magic
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (30, 50, 3)
    cold, hot = decoded[15, 5].astype(int), decoded[15, 45].astype(int)  # BGR: jet 0 is blue, 1 is red
    assert cold[0] > cold[2] and hot[2] > hot[0]


def test_overlay_rejects_bad_arguments():
    with pytest.raises(ValueError):
        cam.render_overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.float32), "gif")
    with pytest.raises(ValueError):
        cam.render_overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4), np.float32), "png")


@pytest.mark.parametrize("order", ["rgb", "bgr", "gray"])
def test_tensor_to_pixels_undoes_normalisation(order):
    spec = PreprocessingConfig(color_order=order, resize="stretch", size=(8, 8), mean=(0.4,), std=(0.2,))
    image = np.random.default_rng(6).integers(0, 256, (8, 8) if order == "gray" else (8, 8, 3), dtype=np.uint8)
    pixels = cam.tensor_to_pixels(normalize(image, spec), spec)
    expected = image if order in ("gray", "bgr") else image[:, :, ::-1]  # drawn as BGR
    np.testing.assert_array_equal(pixels, expected)


def test_explain_options_from_proto():
    options = explain_options_from_proto(vpb.ExplainOptions())
    assert options == ExplainOptions(class_index=None, overlay=False, overlay_format="jpeg")
    options = explain_options_from_proto(vpb.ExplainOptions(class_index=0, overlay=True, overlay_format="png"))
    assert options == ExplainOptions(class_index=0, overlay=True, overlay_format="png")
    for bad in (vpb.ExplainOptions(class_index=-1), vpb.ExplainOptions(overlay_format="gif")):
        with pytest.raises(InvalidArgument):  # conversion keeps them; the explain pipeline's one check refuses them
            check_options(explain_options_from_proto(bad), num_classes=5)
    with pytest.raises(InvalidArgument, match="out of range"):
        check_options(ExplainOptions(class_index=5), num_classes=5)
    check_options(ExplainOptions(class_index=4), num_classes=5)
