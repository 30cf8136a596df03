"""The tracker's motion model: a constant-velocity Kalman filter per track, batched over tracks.

State (cx, cy, w, h, vcx, vcy, vw, vh) in pixels and pixels per frame, with noise proportional to
the box size (the ByteTrack / BoT-SORT weights: 1/20 of the box for position, 1/160 for velocity).
Pure numpy functions over arrays of N tracks; service/postprocess/tracking.py uses them.
"""

from __future__ import annotations

import numpy as np

_STD_POSITION = 1.0 / 20
_STD_VELOCITY = 1.0 / 160
_PROCESS_STD = np.array([_STD_POSITION] * 4 + [_STD_VELOCITY] * 4)  # per step, times w or h
_MEASUREMENT_STD = np.array([_STD_POSITION] * 4)
_INITIAL_STD = np.array([2 * _STD_POSITION] * 4 + [10 * _STD_VELOCITY] * 4)  # a new track: velocity unknown
_DIAG8, _DIAG4 = np.arange(8), np.arange(4)


def xyxy_to_cxcywh(boxes: np.ndarray) -> np.ndarray:
    """[N, 4] x1, y1, x2, y2 -> [N, 4] cx, cy, w, h (float64)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    wh = boxes[:, 2:] - boxes[:, :2]
    return np.concatenate([boxes[:, :2] + wh / 2, wh], axis=1)


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """[N, 4] cx, cy, w, h -> [N, 4] x1, y1, x2, y2."""
    half = boxes[:, 2:4] / 2
    return np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)


def _size_std(mean: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[N, 8] -> [N, len(weights)] standard deviations: weights[i] times each track's w (even i) or h (odd i)."""
    wh = np.maximum(mean[:, None, 2:4], 1.0)  # [N, 1, 2]
    return (wh * weights.reshape(-1, 2)).reshape(len(mean), len(weights))


def kalman_initiate(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New tracks from [N, 4] cxcywh boxes: mean [N, 8] (zero velocity), covariance [N, 8, 8]."""
    mean = np.concatenate([boxes, np.zeros_like(boxes)], axis=1)
    std = _size_std(mean, _INITIAL_STD)
    cov = np.zeros((len(mean), 8, 8))
    cov[:, _DIAG8, _DIAG8] = std**2
    return mean, cov


def kalman_predict(mean: np.ndarray, cov: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """`steps` >= 0 constant-velocity steps of every track: mean [N, 8], cov [N, 8, 8] -> new arrays, same shapes."""
    if steps == 0:
        return mean.copy(), cov.copy()
    for _ in range(steps):
        std = _size_std(mean, _PROCESS_STD)
        mean = np.concatenate([mean[:, :4] + mean[:, 4:], mean[:, 4:]], axis=1)
        cov = _transition_cov(cov)
        cov[:, _DIAG8, _DIAG8] += std**2
    return mean, cov


def _transition_cov(cov: np.ndarray) -> np.ndarray:
    """F P F^T for the constant-velocity F = [[I, I], [0, I]] (4x4 blocks), by blocks instead of two
    8x8 products: [[P11 + P12 + P21 + P22, P12 + P22], [P21 + P22, P22]]."""
    top, bottom = cov[:, :4, :] + cov[:, 4:, :], cov[:, 4:, :]  # F P: rows
    out = np.empty_like(cov)
    out[:, :4, :4] = top[:, :, :4] + top[:, :, 4:]
    out[:, :4, 4:] = top[:, :, 4:]
    out[:, 4:, :4] = bottom[:, :, :4] + bottom[:, :, 4:]
    out[:, 4:, 4:] = bottom[:, :, 4:]
    return out


def kalman_update(mean: np.ndarray, cov: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Correct N tracks with their matched [N, 4] cxcywh boxes -> mean [N, 8], cov [N, 8, 8].

    The four coordinates never mix (diagonal noise, each position moved only by its own velocity),
    so on covariances made by kalman_initiate / kalman_predict / kalman_update the projected
    covariance S = P[:4, :4] + R is diagonal and the gain P H^T S^-1 is a division, not a solve."""
    std = _size_std(mean, _MEASUREMENT_STD)
    projected_var = cov[:, _DIAG4, _DIAG4] + std**2  # [N, 4]: the diagonal of S
    gain = cov[:, :, :4] / projected_var[:, None, :]  # [N, 8, 4]
    innovation = boxes - mean[:, :4]
    mean = mean + np.einsum("nij,nj->ni", gain, innovation)
    cov = cov - gain @ cov[:, :4, :]
    return mean, cov
