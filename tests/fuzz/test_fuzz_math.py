"""Fuzz the post-processing math on arbitrary finite inputs: NMS, CAM and softmax/top-k.

NMS: kept indices are valid, unique and in score order (ties: lower index first); no two kept
boxes of one class overlap by more than the threshold; and every dropped box overlaps a better
kept box of its class (greedy NMS keeps exactly what it should, not merely a valid subset). The
IoU used as the reference is the module's documented arithmetic (float32, inter / (a + b - inter),
NaN never suppresses), written out here independently, one pair at a time.

CAM: maps are finite, non-negative, and within [0, 1] after normalisation, for any finite features,
weights, class scores and any image geometry the preprocessing can produce.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.errors import InvalidArgument
from service.postprocess.cam import (
    class_activation_map,
    min_max_normalise,
    score_cam_map,
    select_maps,
    upsample_map,
)
from service.postprocess.classify import softmax, top_k
from service.postprocess.resample import sample_axis
from service.postprocess.nms import batched_nms, nms
from service.preprocess import preprocess_image

from .conftest import examples
from .strategies import preprocessing_specs

# Extreme finite boxes overflow float32 areas on purpose (inf, then NaN IoU): numpy warns, NMS copes.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

F32 = np.float32
finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
# Coordinates: mostly a small grid (many exact ties and touching/identical/degenerate boxes),
# sometimes any finite float32 (areas that overflow to inf, IoU inf/inf = NaN).
coordinate = st.integers(-4, 12).map(float) | st.floats(-1e4, 1e4, width=32) | finite32


@st.composite
def detections(draw):
    n = draw(st.integers(0, 24))
    boxes = draw(hnp.arrays(F32, (n, 4), elements=coordinate))
    if n and draw(st.booleans()):  # mostly proper boxes: x2 >= x1, y2 >= y1
        boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])], axis=1)
    scores = draw(hnp.arrays(F32, (n,), elements=st.sampled_from([0.0, 0.5, 0.5, 1.0]) | finite32))
    classes = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, 2)))
    threshold = draw(st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]) | st.floats(-0.5, 1.5))
    return boxes, scores, classes, threshold


def reference_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two x1y1x2y2 boxes in float32, in the documented order of operations."""
    with np.errstate(all="ignore"):
        w = max(F32(0), min(a[2], b[2]) - max(a[0], b[0]))
        h = max(F32(0), min(a[3], b[3]) - max(a[1], b[1]))
        inter = F32(w * h)
        area_a = F32((a[2] - a[0]) * (a[3] - a[1]))
        area_b = F32((b[2] - b[0]) * (b[3] - b[1]))
        return float(F32(inter / F32(F32(area_a + area_b) - inter)))


def check_greedy_nms(kept, boxes, scores, classes, threshold) -> None:
    n = len(scores)
    assert kept.dtype == np.int64 and kept.ndim == 1
    assert len(set(kept.tolist())) == len(kept) and all(0 <= i < n for i in kept)
    ranks = [(-float(scores[i]), int(i)) for i in kept]
    assert ranks == sorted(ranks)  # descending score, ties: lower index first
    kept_set = set(kept.tolist())
    order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
    position = {index: rank for rank, index in enumerate(order)}
    for j in range(n):
        better_kept = [i for i in kept_set if position[i] < position[j] and classes[i] == classes[j]]
        suppressed = any(reference_iou(boxes[i], boxes[j]) > threshold for i in better_kept)
        assert (j not in kept_set) == suppressed, (j, better_kept)


@given(case=detections())
@example(case=(np.zeros((0, 4), F32), np.zeros(0, F32), np.zeros(0, np.int64), 0.5))
@example(case=(np.array([[0, 0, 0, 0], [0, 0, 0, 0]], F32), np.array([1, 1], F32), np.zeros(2, np.int64), 0.0))
@example(
    case=((np.full((3, 4), 3e38) * [-1, -1, 1, 1]).astype(F32), np.array([3, 2, 1], F32), np.zeros(3, np.int64), 0.5)
)
def test_batched_nms_keeps_exactly_the_greedy_set(case):
    boxes, scores, classes, threshold = case
    kept = batched_nms(boxes, scores, classes, threshold)
    check_greedy_nms(kept, boxes, scores, classes, threshold)


@settings(max_examples=examples(0.5))
@given(case=detections())
def test_nms_is_batched_nms_with_one_class(case):
    boxes, scores, _, threshold = case
    kept = nms(boxes, scores, threshold)
    check_greedy_nms(kept, boxes, scores, np.zeros(len(scores), np.int64), threshold)


# --- CAM -----------------------------------------------------------------------------------------

moderate = st.floats(-1e6, 1e6, width=32)


@st.composite
def feature_maps(draw, elements=moderate):
    k, h, w = draw(st.integers(1, 6)), draw(st.integers(1, 7)), draw(st.integers(1, 7))
    return draw(hnp.arrays(F32, (k, h, w), elements=elements))


@given(features=feature_maps(), data=st.data())
def test_class_activation_map_is_finite_and_non_negative(features, data):
    classes = data.draw(st.integers(1, 4))
    weights = data.draw(hnp.arrays(F32, (classes, features.shape[0]), elements=moderate))
    cam = class_activation_map(features, weights, data.draw(st.integers(0, classes - 1)))
    assert cam.shape == features.shape[1:] and cam.dtype == F32
    assert np.isfinite(cam).all() and (cam >= 0).all()
    normalised = min_max_normalise(cam)
    assert np.isfinite(normalised).all() and (normalised >= 0).all() and (normalised <= 1).all()


@given(values=hnp.arrays(F32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9), elements=finite32))
@example(values=np.array([-3.4e38, 3.4e38], F32))
@example(values=np.array([1e-45, 0.0], F32))
def test_min_max_normalise_is_in_unit_interval(values):
    normalised = min_max_normalise(values)
    assert normalised.shape == values.shape and normalised.dtype == F32
    assert np.isfinite(normalised).all() and (normalised >= 0).all() and (normalised <= 1).all()
    if values.max() > values.min():
        assert normalised.max() == 1 and normalised.min() == 0


@given(activations=feature_maps(), data=st.data())
def test_score_cam_map_is_a_convex_mix_of_unit_maps(activations, data):
    indices = select_maps(activations, data.draw(st.integers(1, 8)))
    assert len(set(indices.tolist())) == len(indices) and all(0 <= i < len(activations) for i in indices)
    scores = data.draw(hnp.arrays(F32, (len(indices),), elements=finite32))
    cam = score_cam_map(activations, indices, scores)
    assert cam.shape == activations.shape[1:]
    assert np.isfinite(cam).all() and (cam >= 0).all() and (cam <= 1 + 1e-6).all()


@given(spec=preprocessing_specs(), height=st.integers(1, 40), width=st.integers(1, 40), data=st.data())
def test_upsampled_map_covers_the_original_image(spec, height, width, data):
    image = np.zeros((height, width, 3), np.uint8)
    try:
        _, info = preprocess_image(image, spec, "bgr")
    except InvalidArgument:  # a centre crop larger than the resized image; preprocess fuzzing covers it
        return
    raw = data.draw(
        hnp.arrays(
            F32, (data.draw(st.integers(1, 8)), data.draw(st.integers(1, 8))), elements=st.floats(0, 1e6, width=32)
        )
    )
    heat = upsample_map(raw, info)
    assert heat.shape == (height, width) and np.isfinite(heat).all()
    assert (heat >= 0).all() and (heat <= raw.max() * (1 + 1e-5) + 1e-30).all()  # bilinear weights are convex
    unit = min_max_normalise(heat)
    assert (unit >= 0).all() and (unit <= 1).all()


@given(
    out_size=st.integers(1, 50),
    in_size=st.integers(1, 12),
    input_size=st.integers(1, 60),
    scale=st.floats(1e-3, 1e3),
    offset=st.floats(-100, 100),
)
def test_bilinear_taps_stay_on_the_map_with_convex_weights(out_size, in_size, input_size, scale, offset):
    taps = sample_axis(out_size, scale, offset, input_size, in_size)
    assert ((0 <= taps.first) & (taps.first <= taps.second) & (taps.second < in_size)).all()
    assert np.isfinite(taps.weight).all() and ((taps.weight >= 0) & (taps.weight <= 1)).all()
    centres = (np.arange(out_size) + 0.5) * scale + offset
    np.testing.assert_array_equal(taps.inside, (centres >= 0) & (centres < input_size))


# --- classification ------------------------------------------------------------------------------


@given(
    logits=hnp.arrays(F32, st.tuples(st.integers(1, 4), st.integers(1, 12)), elements=finite32), k=st.integers(1, 15)
)
@example(logits=np.array([[-3.4e38, 3.4e38, 0.0]], F32), k=3)
def test_softmax_and_top_k(logits, k):
    probabilities = softmax(logits)
    assert np.isfinite(probabilities).all() and (probabilities >= 0).all() and (probabilities <= 1).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    k = min(k, logits.shape[1])
    indices, scores = top_k(probabilities, k)
    assert indices.shape == scores.shape == (logits.shape[0], k)
    for row in range(logits.shape[0]):
        assert len(set(indices[row].tolist())) == k
        ranks = [(-float(probabilities[row, i]), int(i)) for i in indices[row]]
        assert ranks == sorted(ranks)
        assert scores[row, -1] >= np.sort(probabilities[row])[-k]
