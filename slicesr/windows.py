"""Overlapping windows and seam-free blending, in any number of dimensions (pure functions).

Stage I tiles 2D slices with fixed-size windows (`covering_corners`, zero padding where an image is
smaller than a tile); stage II runs 3D generators over whole volumes with windows shrunk to fit evenly
(`fitted_windows`). Both blend overlapping results with the same ramp weights (`Blender`).
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable

import numpy as np
from tqdm import tqdm

Corner = tuple[int, ...]


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


def aligned_windows(length: int, window: int, overlap: float, margin: int, align: int) -> tuple[int, list[int]]:
    """Window size and starts along one axis for windows whose `margin` voxels at an inner edge are discarded:
    starts on multiples of `align`, size K*m + 1 when `align` = K (so a window starts and ends on an acquired
    slice), consecutive windows sharing at least 2 * margin + overlap * window voxels, so that every voxel
    lies outside the margins of some window. As `fit_windows`, the fewest windows of at most `window`
    voxels, then shrunk to the smallest size that still covers the axis (little is computed twice). A
    window too small for its margins is enlarged to the smallest that leaves `align` voxels between them."""
    shared = 2 * margin + int(round(window * overlap))
    window = max(window, shared + 2 * align)
    if length <= window:
        return length, [0]

    def plan(size: int) -> tuple[int, list[int]] | None:
        stride = (size - shared) // align * align
        if stride < align:
            return None
        units = (length - size) // align
        count = math.ceil(units * align / stride) + 1
        return count, [(i * units // (count - 1)) * align for i in range(count)]

    largest = ((window - 1) // align) * align + 1 if align > 1 else window
    count, starts = plan(largest)
    size = largest
    # shrink while the same number of windows still covers the axis
    while size - align >= shared + align:
        smaller = plan(size - align)
        if smaller is None or smaller[0] > count:
            break
        size, starts = size - align, smaller[1]
    return size, starts


def covering_corners(shape: tuple[int, ...], window: tuple[int, ...], overlap: float) -> list[Corner]:
    """Corners of fixed-size windows covering an array of `shape` (padded to at least `window`)."""
    return list(itertools.product(*(window_starts(n, w, overlap) for n, w in zip(shape, window))))


def fitted_windows(shape: tuple[int, ...], window: tuple[int, ...], overlap: float) -> tuple[tuple[int, ...], list[Corner]]:
    """The window size shrunk to fit `shape` evenly (`fit_windows` per axis) and the windows' corners."""
    fitted = [fit_windows(n, w, overlap) for n, w in zip(shape, window)]
    return tuple(size for size, _ in fitted), list(itertools.product(*(starts for _, starts in fitted)))


def pad_to(array: np.ndarray, window: tuple[int, ...]) -> np.ndarray:
    """float32 copy of `array`, zero-padded at the far end of each axis shorter than the window."""
    padded = np.zeros(tuple(max(n, w) for n, w in zip(array.shape, window)), dtype=np.float32)
    padded[tuple(slice(0, n) for n in array.shape)] = array
    return padded


def _index(corner: Corner, window: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(c, c + w) for c, w in zip(corner, window))


def extract_windows(array: np.ndarray, window: tuple[int, ...], corners: list[Corner]) -> np.ndarray:
    """(len(corners), *window): the windows of `array` at `corners`."""
    return np.stack([array[_index(corner, window)] for corner in corners])


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


def margin_weights(corner: Corner, window: tuple[int, ...], shape: tuple[int, ...], overlap: float,
                   margin: tuple[int, ...]) -> np.ndarray:
    """Blend weights of one window that are zero within `margin` of its inner edges (those not on the
    volume's border), where a network's output depends on the window's padding, and ramp inside them."""
    weights = np.ones((), dtype=np.float32)
    for start, size, length, cut in zip(corner, window, shape, margin):
        low = cut if start > 0 else 0
        high = cut if start + size < length else 0
        axis = np.zeros(size, dtype=np.float32)
        axis[low : size - high] = ramp(size - low - high, overlap)
        weights = np.multiply.outer(weights, axis)
    return weights.astype(np.float32)


class Blender:
    """Weighted average of overlapping window results: `add` each, then `result`. Memory: two float32
    arrays of the output's size."""

    def __init__(self, shape: tuple[int, ...], window: tuple[int, ...], overlap: float):
        self.window = tuple(window)
        self.weights = blend_weights(self.window, overlap)
        self.total = np.zeros(shape, dtype=np.float32)
        self.weight_sum = np.zeros(shape, dtype=np.float32)

    def add(self, corner: Corner, values: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Add one window's values; `weights` replaces the shared ramp for this window."""
        index = _index(corner, self.window)
        weights = self.weights if weights is None else weights
        self.total[index] += values * weights
        self.weight_sum[index] += weights

    def result(self) -> np.ndarray:
        return self.total / self.weight_sum


def sliding_window_apply(fn: Callable[[np.ndarray], np.ndarray], volume: np.ndarray, window: tuple[int, ...],
                         overlap: float, progress: bool = False, desc: str = "windows",
                         margin: tuple[int, ...] | None = None, align: tuple[int, ...] | None = None) -> np.ndarray:
    """Apply a shape-preserving `fn` to overlapping windows of `volume` and blend the results.

    Without `margin`, windows shrink to fit the volume evenly (`fitted_windows`) and blend with ramps.
    With `margin` (voxels per axis, e.g. a network's receptive-field radius) and `align` (start multiples
    per axis, e.g. K along the slice axis), windows are planned by `aligned_windows` and the margin at each
    inner window edge is discarded: the result away from the volume's border is what `fn` gives on the
    whole volume. Memory: the volume, two float32 accumulators of its size and one window's worth of work.
    """
    if margin is None:
        window, corners = fitted_windows(volume.shape, window, overlap)
    else:
        align = align or (1,) * volume.ndim
        planned = [aligned_windows(n, w, overlap, m, a) for n, w, m, a in zip(volume.shape, window, margin, align)]
        window = tuple(size for size, _ in planned)
        corners = list(itertools.product(*(starts for _, starts in planned)))
    blender = Blender(volume.shape, window, overlap)
    for corner in tqdm(corners, desc=desc, unit="window", disable=not progress, file=sys.stderr, leave=False):
        result = np.asarray(fn(volume[_index(corner, window)]), dtype=np.float32)
        if result.shape != window:
            raise ValueError(f"window function changed the shape {window} to {result.shape}")
        weights = None if margin is None else margin_weights(corner, window, volume.shape, overlap, margin)
        blender.add(corner, result, weights)
    return blender.result()
