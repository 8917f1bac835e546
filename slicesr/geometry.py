"""Voxel-to-world geometry: slice-axis detection and the stored (slice, row, col) index frame.

Every function here is pure: arrays and 4x4 affines in, arrays and affines out.
"""

from __future__ import annotations

import numpy as np

# Spacings that differ by less than this fraction count as a tie (rounding noise in headers).
_SPACING_TIE_RTOL = 1e-4


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel spacing in mm along each array axis (column norms of the 3x3 part)."""
    affine = np.asarray(affine, dtype=np.float64)
    return np.sqrt((affine[:3, :3] ** 2).sum(axis=0))


def find_slice_axis(affine: np.ndarray) -> int:
    """The axis with the largest voxel spacing; on a tie, the last of the tied axes."""
    spacing = voxel_spacing(affine)
    largest = spacing.max()
    tied = [axis for axis in range(3) if spacing[axis] >= largest * (1.0 - _SPACING_TIE_RTOL)]
    return tied[-1]


def resolve_slice_axis(affine: np.ndarray, slice_axis: int | str | None) -> int:
    """`auto`/None -> detected axis; otherwise validate 0, 1 or 2."""
    if slice_axis is None or slice_axis == "auto":
        return find_slice_axis(affine)
    axis = int(slice_axis)
    if axis not in (0, 1, 2):
        raise ValueError(f"slice axis must be auto, 0, 1 or 2, got {slice_axis!r}")
    return axis


def in_plane_axes(slice_axis: int) -> tuple[int, int]:
    """The two source axes other than the slice axis, in source order."""
    return tuple(axis for axis in range(3) if axis != slice_axis)  # type: ignore[return-value]


def to_slice_first(data: np.ndarray, affine: np.ndarray, slice_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Move `slice_axis` first without flipping; return the array and the affine of the new index.

    The stored index (i, j, k) maps to the source index with source[slice_axis] = i and the other
    two axes j, k in their source order, so every voxel keeps its world position exactly.
    """
    if data.ndim != 3:
        raise ValueError(f"expected a 3D array, got shape {data.shape}")
    rows_axis, cols_axis = in_plane_axes(slice_axis)
    permuted = np.transpose(data, (slice_axis, rows_axis, cols_axis))
    return permuted, permute_affine(affine, (slice_axis, rows_axis, cols_axis))


def from_slice_first(slices: np.ndarray, affine: np.ndarray, slice_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`to_slice_first`: back to the source axis order and its affine."""
    order = (slice_axis, *in_plane_axes(slice_axis))
    inverse = tuple(int(i) for i in np.argsort(order))
    return np.transpose(slices, inverse), permute_affine(affine, inverse)


def permute_affine(affine: np.ndarray, order: tuple[int, int, int]) -> np.ndarray:
    """Affine of an array whose axis n is axis `order[n]` of the array described by `affine`."""
    affine = np.asarray(affine, dtype=np.float64)
    permutation = np.zeros((4, 4))
    for new_axis, old_axis in enumerate(order):
        permutation[old_axis, new_axis] = 1.0
    permutation[3, 3] = 1.0
    return affine @ permutation


def scale_axis(affine: np.ndarray, axis: int, factor: float) -> np.ndarray:
    """Affine whose voxel step along `axis` is `factor` times longer; index 0 stays in place."""
    scaled = np.array(affine, dtype=np.float64, copy=True)
    scaled[:3, axis] *= factor
    return scaled


def world_coordinates(affine: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """World mm of voxel indices (N, 3) under `affine`."""
    indices = np.asarray(indices, dtype=np.float64)
    return indices @ np.asarray(affine, dtype=np.float64)[:3, :3].T + np.asarray(affine)[:3, 3]
