"""Overlapping windows and seam-free blending, in any number of dimensions (pure functions).

Stage I tiles 2D slices with them; stage II runs 3D generators over whole volumes with them.
"""

from __future__ import annotations

import itertools
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

    Windows larger than the volume shrink to it. Memory: the volume, two float32 accumulators of its
    size and one window's worth of work in `fn`.
    """
    window = tuple(min(w, n) for w, n in zip(window, volume.shape))
    starts = [window_starts(n, w, overlap) for n, w in zip(volume.shape, window)]
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
