"""Overlapping windows and seam-free blending, in any number of dimensions (pure functions).

Stage I tiles 2D slices with them; stage II runs 3D generators over whole volumes with them.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable

import numpy as np
from tqdm import tqdm


def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """Start offsets covering [0, length) with windows of `window` voxels overlapping by about `overlap`."""
    if length <= window:
        return [0]
    stride = max(1, int(round(window * (1.0 - overlap))))
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def fit_windows(length: int, window: int, overlap: float) -> tuple[int, list[int]]:
    """The fewest windows of at most `window` voxels overlapping by at least `overlap` * window, then
    shrunk and spread evenly: less computed twice than a fixed size with a last window pushed to the end."""
    if length <= window:
        return length, [0]
    margin = int(round(window * overlap))
    count = math.ceil((length - margin) / (window - margin))
    size = min(window, math.ceil((length + (count - 1) * margin) / count))
    starts = [round(i * (length - size) / (count - 1)) for i in range(count)] if count > 1 else [0]
    return size, starts


def ramp(window: int, overlap: float) -> np.ndarray:
    """Positive 1D weights that fall towards both ends (all > 0, so any cover normalises)."""
    ramp_len = max(1, int(round(window * overlap / 2)))
    index = np.arange(window)
    return np.minimum(1.0, np.minimum(index + 1, window - index) / (ramp_len + 1)).astype(np.float32)


def blend_weights(shape: tuple[int, ...], overlap: float) -> np.ndarray:
    weights = np.ones((), dtype=np.float32)
    for size in shape:
        weights = np.multiply.outer(weights, ramp(size, overlap))
    return weights.astype(np.float32)


def sliding_window_apply(fn: Callable[[np.ndarray], np.ndarray], volume: np.ndarray, window: tuple[int, ...],
                         overlap: float, progress: bool = False, desc: str = "windows") -> np.ndarray:
    """Apply a shape-preserving `fn` to overlapping windows of `volume` and blend the results.

    Windows shrink to fit the volume evenly (`fit_windows`). Memory: the volume, two float32
    accumulators of its size and one window's worth of work in `fn`.
    """
    fitted = [fit_windows(n, w, overlap) for n, w in zip(volume.shape, window)]
    window = tuple(size for size, _ in fitted)
    starts = [axis_starts for _, axis_starts in fitted]
    weights = blend_weights(window, overlap)
    total = np.zeros(volume.shape, dtype=np.float32)
    weight_sum = np.zeros(volume.shape, dtype=np.float32)
    corners = list(itertools.product(*starts))
    for corner in tqdm(corners, desc=desc, unit="window", disable=not progress, file=sys.stderr, leave=False):
        index = tuple(slice(c, c + w) for c, w in zip(corner, window))
        result = np.asarray(fn(volume[index]), dtype=np.float32)
        if result.shape != window:
            raise ValueError(f"window function changed the shape {window} to {result.shape}")
        total[index] += result * weights
        weight_sum[index] += weights
    return total / weight_sum
