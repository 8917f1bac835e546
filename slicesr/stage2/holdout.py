"""Validation without HR: drop every other acquired slice of an LR scan and score how the model restores them.

A model that reduces the slice spacing from K*h to h is applied to the scan's every-other-slice version
(spacing 2*K*h): its output lies on a grid of spacing 2*h, where the dropped LR slices sit at xi = 1/2 of
each gap (output index K/2; for an odd K the two nearest output slices are interpolated linearly). The
dropped slices are scored as `slicesr evaluate` scores missing slices (K' = 2). This is a 2K problem that
the LR data can check by itself: it picks `best/` and recipe choices without any HR volume.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from slicesr.evaluate import score

Upsample = Callable[[np.ndarray, int], np.ndarray]  # (n, rows, cols), K -> (K*(n-1)+1, rows, cols)
HOLDOUT_MIN_SLICES = 3  # two kept slices around one dropped one


def holdout_prediction(upsample: Upsample, lr: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(truth, prediction) on the LR grid: the LR slices from the first to the last kept one, and the
    model's restoration of them from every other slice (kept slices come back as the model returns them)."""
    if lr.shape[0] < HOLDOUT_MIN_SLICES:
        raise ValueError(f"{lr.shape[0]} slices: the hold-out needs at least {HOLDOUT_MIN_SLICES}")
    kept = lr[::2]
    out = upsample(kept, k)
    n = 2 * (kept.shape[0] - 1) + 1
    position = np.arange(n) * (k / 2.0)  # output index of LR slice j
    lower = np.minimum(np.floor(position).astype(int), out.shape[0] - 1)
    upper = np.minimum(lower + 1, out.shape[0] - 1)
    weight = (position - lower).astype(np.float32)[:, None, None]
    prediction = (1 - weight) * out[lower] + weight * out[upper]
    return np.asarray(lr[:n], dtype=np.float32), prediction.astype(np.float32)


def holdout_score(upsample: Upsample, lr: np.ndarray, k: int) -> dict[str, float]:
    """PSNR/SSIM of the restored dropped slices (`psnr_missing`, `ssim_missing`) and their mean absolute
    error in normalised intensity (`l1_missing`)."""
    truth, prediction = holdout_prediction(upsample, lr, k)
    result = score(truth, prediction, 2)
    result["l1_missing"] = float(np.abs(truth[1::2] - prediction[1::2]).mean())
    return result


def center_crop(slices: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The central (rows, cols) of every slice (the whole slice along an axis shorter than the crop)."""
    rows, cols = slices.shape[1:]
    top, left = max(0, (rows - size[0]) // 2), max(0, (cols - size[1]) // 2)
    return slices[:, top : top + size[0], left : left + size[1]]
