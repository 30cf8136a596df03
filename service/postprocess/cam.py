"""Class activation maps as pure numpy functions: CAM, Score-CAM weighting, upsampling, overlays.

CAM (Zhou et al., 2016; the lecture's "CNN Class Activation Map"): for a network whose last
convolutional maps f_k [h, w] are global-average-pooled and fed to one linear layer with weights
W [C, K], the map of class c is CAM_c = ReLU(Σ_k W[c, k] · f_k).

Score-CAM (Wang et al., 2020) needs no classifier weights and no gradients, only forward passes:
each activation map A_k is upsampled to the input, min-max normalised to a mask H_k in [0, 1], the
masked input X ∘ H_k is scored, and the map is ReLU(Σ_k α_k Â_k) with α = softmax_k(S_c(X ∘ H_k))
and Â_k the min-max normalised A_k (see `score_cam_map` for why normalised).
The paper defines α from the class-score increase S_c(X ∘ H_k) − S_c(X_baseline); the baseline is
the same for every k, so it cancels inside the softmax and no baseline pass is needed.

Coordinates: a feature map [h, w] is taken to cover the whole model input [H_in, W_in] (cell j's
centre at (j + 0.5) · H_in / h), the convention of bilinear upsampling with align_corners=False;
`ResizeInfo` then maps model-input pixels back onto the original image.
"""

from __future__ import annotations

import cv2
import numpy as np

from service.config import PreprocessingConfig
from service.postprocess.draw import encode_image
from service.postprocess.resample import resample_rows, sample_axis
from service.preprocess import ResizeInfo


def class_activation_map(features: np.ndarray, weights: np.ndarray, class_index: int) -> np.ndarray:
    """features [K, h, w], weights [C, K] -> CAM of `class_index`: ReLU(Σ_k W[c, k] f_k), float32 [h, w]."""
    row = weights[class_index].astype(np.float64)
    cam = np.tensordot(row, features.astype(np.float64), axes=(0, 0))
    return np.maximum(cam, 0.0).astype(np.float32)


def upsample_map(raw: np.ndarray, info: ResizeInfo) -> np.ndarray:
    """raw [h, w] over the model input -> float32 [H, W] over the original image (bilinear, see
    service/postprocess/resample.py; 0 outside the part of the image the model saw, e.g. beyond a
    centre crop)."""
    (height, width), (in_h, in_w) = info.original_hw, info.input_hw
    rows = sample_axis(height, info.scale_yx[0], info.offset_yx[0], in_h, raw.shape[0])
    columns = sample_axis(width, info.scale_yx[1], info.offset_yx[1], in_w, raw.shape[1])
    heat = resample_rows(raw.astype(np.float32)[None], rows, columns)[0]
    heat[~rows.inside] = 0.0
    heat[:, ~columns.inside] = 0.0
    return heat


def min_max_normalise(values: np.ndarray) -> np.ndarray:
    """Any float array -> float32 in [0, 1] by (v − min) / (max − min); all zeros when constant."""
    low, high = float(values.min()), float(values.max())
    if not high > low:
        return np.zeros(values.shape, dtype=np.float32)
    with np.errstate(over="ignore"):
        span = np.float32(high) - np.float32(low)  # the same float32 subtraction as the maximum's below
    if not (np.isfinite(span) and span > 0):  # the range over- or underflows float32: use float64
        return np.clip((values.astype(np.float64) - low) / (high - low), 0.0, 1.0).astype(np.float32)
    out = values.astype(np.float32)  # a copy; then in place, so a large map is not copied again
    out -= np.float32(low)
    out /= span  # division, not a reciprocal: the maximum maps to exactly 1
    return np.clip(out, 0.0, 1.0, out=out)


def select_maps(activations: np.ndarray, max_maps: int) -> np.ndarray:
    """activations [K, h, w] -> indices of at most `max_maps` maps for Score-CAM, int64 [M].

    Constant maps are skipped (their normalised mask would be empty); the rest are ranked by mean
    activation, highest first (ties keep the lower index), so a cap keeps the most active maps.
    """
    flat = activations.reshape(activations.shape[0], -1)
    varying = np.flatnonzero(flat.max(axis=1) > flat.min(axis=1))
    order = varying[np.argsort(-flat[varying].mean(axis=1), kind="stable")]
    return order[:max_maps].astype(np.int64)


def score_cam_masks(activations: np.ndarray, indices: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """activations [K, h, w] -> masks float32 [M, H_in, W_in]: the chosen maps upsampled to the model
    input and each min-max normalised to [0, 1]."""
    identity = ResizeInfo(tuple(input_hw), (1.0, 1.0), (0.0, 0.0), tuple(input_hw))
    return np.stack([min_max_normalise(upsample_map(activations[k], identity)) for k in indices]).astype(np.float32)


def masked_inputs(tensor: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """tensor [C, H, W] (model input), masks [M, H, W] -> float32 [M, C, H, W] = tensor ∘ mask_m.

    In normalised input space 0 is the dataset mean colour, so masked-out pixels become "average".
    """
    return (tensor[None, :, :, :] * masks[:, None, :, :]).astype(np.float32)


def score_cam_map(activations: np.ndarray, indices: np.ndarray, class_scores: np.ndarray) -> np.ndarray:
    """activations [K, h, w], indices [M], class_scores [M] (the class's logit for each masked input)
    -> ReLU(Σ_m α_m Â_{indices[m]}) with α = softmax(class_scores), float32 [h, w].

    Â_k is A_k min-max normalised to [0, 1] (the mask before upsampling). The paper sums the raw
    A_k; normalising first keeps the map meaningful for signed activations (tanh, sigmoid + BN
    networks such as lenet5 and bn_cnn, whose convex combination of raw maps can be negative
    everywhere and vanish under the ReLU). For ReLU networks it only rescales each map by its max.
    """
    if len(indices) == 0:
        return np.zeros(activations.shape[1:], dtype=np.float32)
    scores = class_scores.astype(np.float64)
    alpha = np.exp(scores - scores.max())
    alpha /= alpha.sum()
    normalised = np.stack([min_max_normalise(activations[k]) for k in indices]).astype(np.float64)
    cam = np.tensordot(alpha, normalised, axes=(0, 0))
    return np.maximum(cam, 0.0).astype(np.float32)


def tensor_to_pixels(tensor: np.ndarray, spec: PreprocessingConfig | None) -> np.ndarray:
    """A model-input tensor [C, H, W] -> uint8 image to draw on (BGR [H, W, 3] or gray [H, W]),
    undoing the normalisation of `spec` (without a spec: min-max stretched to 0..255)."""
    values = tensor.astype(np.float32)
    if spec is None:
        pixels = min_max_normalise(values) * 255.0
    else:
        std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
        mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
        pixels = (values * std + mean) / spec.scale
    image = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    if image.shape[2] == 1:
        return np.ascontiguousarray(image[:, :, 0])
    image = image[:, :, :3]
    rgb = spec is None or spec.color_order != "bgr"
    return np.ascontiguousarray(image[:, :, ::-1] if rgb else image)


def render_overlay(image: np.ndarray, heat: np.ndarray, fmt: str = "jpeg", alpha: float = 0.45) -> bytes:
    """image uint8 BGR [H, W, 3] or gray [H, W], heat [H, W] in [0, 1] -> encoded JPEG/PNG of the
    jet-coloured heat map blended over the image (weight `alpha` on the colours)."""
    base = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image[:, :, :3]
    if base.shape[:2] != heat.shape:
        raise ValueError(f"heat map {heat.shape} does not match the image {base.shape[:2]}")
    colours = cv2.applyColorMap(np.clip(np.rint(heat * 255.0), 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    blended = cv2.addWeighted(np.ascontiguousarray(base), 1.0 - alpha, colours, alpha, 0.0)
    return encode_image(blended, fmt)
