"""The degradation T of the paper: keep slice 0, K, 2K, ... along the slice axis."""

from __future__ import annotations

import numpy as np
import torch

from slicesr.geometry import scale_axis


def keep_every_kth(data: np.ndarray, affine: np.ndarray, k: int, slice_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Slices 0, K, 2K, ... of `slice_axis` and the affine whose slice step is K times longer.

    No thickness change (no averaging): every kept slice is bit-identical and keeps its world
    position, as in the paper.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"K must be a positive integer, got {k!r}")
    if slice_axis not in range(data.ndim):
        raise ValueError(f"slice axis {slice_axis} out of range for a {data.ndim}D array")
    index = [slice(None)] * data.ndim
    index[slice_axis] = slice(0, None, int(k))
    return data[tuple(index)], scale_axis(affine, slice_axis, float(k))


def num_kept_slices(num_slices: int, k: int) -> int:
    return (num_slices - 1) // k + 1


def keep_every_kth_tensor(hr: torch.Tensor, k: int, dim: int = -3) -> torch.Tensor:
    """T on a torch tensor: slices 0, K, 2K, ... along `dim` (bit-identical copies)."""
    index = torch.arange(0, hr.shape[dim], int(k), device=hr.device)
    return hr.index_select(dim, index)
