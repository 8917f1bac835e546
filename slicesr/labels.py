"""Label maps carried to the super-resolved grid by shape-based interpolation.

Each label's region is turned, slice by slice, into a signed distance map (positive inside, negative
outside, in millimetres of the in-plane spacing); the maps are interpolated linearly along the slice axis.
The union of all regions is interpolated the same way: inside it, every output voxel takes the label whose
interpolated distance is largest; outside it, the background (0). A region then morphs smoothly from one acquired slice to the next instead of jumping
halfway as with nearest-neighbour, at an acquired slice the labels are copied exactly, and no label value
is invented; beyond its last slice a region shrinks to nothing halfway to the next slice. Labels are processed one at a time within their bounding box, keeping only the running best
distance and label per output voxel: memory does not grow with the number of labels.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt, find_objects

BACKGROUND = 0
MARGIN = 2  # pixels around a label's bounding box, so that its outside distance is measured in the crop


def slice_positions(num_slices: int, k: int) -> np.ndarray:
    """Output slice j of the K-times finer grid lies at input slice j / K."""
    return np.arange(k * (num_slices - 1) + 1, dtype=np.float64) / k


def _signed_distance(inside: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Per slice of a (slices, rows, cols) mask: distance to the outside inside the region, minus the
    distance to the region outside it. A slice without the region is outside by the region's largest inner
    distance everywhere: towards it the region shrinks and vanishes halfway (as its nearest-neighbour
    extent would), instead of ending abruptly."""
    out = np.zeros(inside.shape, dtype=np.float32)
    present = [index for index, mask in enumerate(inside) if mask.any()]
    for index in present:
        mask = inside[index]
        out[index] = distance_transform_edt(mask, sampling=spacing) - distance_transform_edt(~mask, sampling=spacing)
    depth = max(float(out[present].max()), min(spacing)) if present else min(spacing)
    for index in set(range(inside.shape[0])) - set(present):
        out[index] = -depth
    return out


def carry_labels(labels: np.ndarray, positions: np.ndarray, spacing_mm: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Integer labels (slices, rows, cols) -> (len(positions), rows, cols) of the same dtype; `positions` are
    the output slices' coordinates in input slices (0 .. slices - 1, non-decreasing)."""
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.shape[0] < 2:
        raise ValueError(f"a label map needs (slices, rows, cols) with 2 slices or more, got {labels.shape}")
    num_slices = labels.shape[0]
    positions = np.asarray(positions, dtype=np.float64)
    if positions.size and (positions.min() < 0 or positions.max() > num_slices - 1):
        raise ValueError(f"output positions must lie within the {num_slices} input slices")
    lower = np.minimum(np.floor(positions).astype(np.int64), num_slices - 2)
    weight = (positions - lower).astype(np.float32)[:, None, None]
    out = np.full((positions.size, *labels.shape[1:]), BACKGROUND, dtype=labels.dtype)
    # Where some label is: the union of every region, shape-interpolated as one region. Inside it each voxel
    # takes the label of the largest interpolated distance (even if no single region reaches it, as on the
    # boundary between two touching labels that moves from slice to slice), outside it the background.
    union = _signed_distance(labels != BACKGROUND, spacing_mm)
    foreground = (1 - weight) * union[lower] + weight * union[lower + 1] > 0
    del union
    best = np.full(out.shape, -np.inf, dtype=np.float32)
    values = np.unique(labels)
    values = values[values != BACKGROUND]
    # one label image of consecutive ids for find_objects: bounding boxes of every label in one pass
    ids = np.searchsorted(values, labels) + 1
    ids[labels == BACKGROUND] = 0
    for value, box in zip(values, find_objects(ids, max_label=values.size)):
        if box is None:
            continue
        rows = slice(max(0, box[1].start - MARGIN), min(labels.shape[1], box[1].stop + MARGIN))
        cols = slice(max(0, box[2].start - MARGIN), min(labels.shape[2], box[2].stop + MARGIN))
        first, last = box[0].start, box[0].stop - 1
        # input slices around the region and the output slices between them
        low, high = max(0, first - 1), min(num_slices - 1, last + 1)
        window = (positions >= low) & (positions <= high)
        if not window.any():
            continue
        distance = _signed_distance(labels[low : high + 1, rows, cols] == value, spacing_mm)
        j = np.flatnonzero(window)
        below = lower[j] - low
        above = np.minimum(below + 1, distance.shape[0] - 1)
        w = weight[j]
        interpolated = (1 - w) * distance[below] + w * distance[above]
        target_best, target_out = best[j, rows, cols], out[j, rows, cols]
        wins = interpolated > target_best
        target_best[wins], target_out[wins] = interpolated[wins], value
        best[j, rows, cols], out[j, rows, cols] = target_best, target_out
    out[~foreground] = BACKGROUND
    return out
