"""The degradation T: keep slice 0, K, 2K, ... along the slice axis (the paper), or any spacing ratio with a
slice profile (point, box or Gaussian of a given thickness)."""

from __future__ import annotations

import math

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


# Slice profiles of the degradation T: what one acquired LR slice integrates along the slice axis.
# point (the paper's): the value at the slice centre; box: the mean over the slice thickness; gaussian:
# a Gaussian whose FWHM is the thickness. A thickness below the spacing leaves gaps between slices.
PROFILES = ("point", "box", "gaussian")
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
RATIO_RTOL = 1e-6  # an LR centre within this fraction of a slice of the last HR slice still counts


def num_lr_slices(num_hr: int, ratio: float) -> int:
    """Acquired slices at HR positions 0, ratio, 2 ratio, ... up to the last HR slice."""
    return int(math.floor((num_hr - 1) / ratio + RATIO_RTOL)) + 1


def profile_weights(num_hr: int, ratio: float, profile: str = "point", thickness: float | None = None) -> np.ndarray:
    """(num_lr, num_hr) float64 weights of T: LR slice i = sum_j W[i, j] HR slice j, centred at HR position
    i * ratio. `ratio` (> 0, any real) and `thickness` are in HR slices; HR slice j stands for the interval
    [j - 1/2, j + 1/2]. Rows sum to 1 (a profile cut by the volume's end is renormalised over what is left).
    point: linear interpolation at the centre (an integer centre is that slice exactly)."""
    if not ratio > 0:
        raise ValueError(f"the spacing ratio must be positive, got {ratio!r}")
    if profile not in PROFILES:
        raise ValueError(f"unknown slice profile {profile!r} (one of {', '.join(PROFILES)})")
    if profile != "point" and not (thickness is not None and thickness > 0):
        raise ValueError(f"the {profile} profile needs a positive slice thickness, got {thickness!r}")
    centres = np.arange(num_lr_slices(num_hr, ratio)) * float(ratio)
    j = np.arange(num_hr, dtype=np.float64)
    if profile == "point":
        weights = np.clip(1.0 - np.abs(centres[:, None] - j[None, :]), 0.0, None)
    elif profile == "box":
        low, high = centres[:, None] - thickness / 2, centres[:, None] + thickness / 2
        weights = np.clip(np.minimum(high, j + 0.5) - np.maximum(low, j - 0.5), 0.0, None)
    else:
        from scipy.special import ndtr

        sigma = thickness / FWHM_PER_SIGMA
        weights = ndtr((j + 0.5 - centres[:, None]) / sigma) - ndtr((j - 0.5 - centres[:, None]) / sigma)
    return weights / weights.sum(axis=1, keepdims=True)


def degrade_profile(data: np.ndarray, affine: np.ndarray, ratio: float, slice_axis: int, profile: str = "point",
                    thickness: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """T with a slice profile: LR slices centred at HR slices 0, ratio, 2 ratio, ... (float32), and the affine
    whose slice step is `ratio` times longer (slice i at its centre's world position). With the point profile
    and an integer ratio this is `keep_every_kth` (bit-identical copies)."""
    if profile == "point" and float(ratio).is_integer():
        return keep_every_kth(data, affine, int(ratio), slice_axis)
    weights = profile_weights(data.shape[slice_axis], ratio, profile, thickness).astype(np.float32)
    moved = np.moveaxis(np.asarray(data, dtype=np.float32), slice_axis, 0)
    lr = np.tensordot(weights, moved, axes=(1, 0))
    return np.moveaxis(lr, 0, slice_axis), scale_axis(affine, slice_axis, float(ratio))
