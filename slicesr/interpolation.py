"""Resampling along the slice axis onto the HR grid (K*(n-1)+1 slices); pure functions.

Slices come first: (num_slices, rows, cols). Output slice i*K is input slice i exactly.
"""

from __future__ import annotations

import numpy as np
import torch


def hr_num_slices(num_slices: int, k: int) -> int:
    return k * (num_slices - 1) + 1


def _linear_weights(k: int) -> np.ndarray:
    return np.arange(k, dtype=np.float64) / k


def linear_slices(slices: np.ndarray, k: int) -> np.ndarray:
    """Linear interpolation between neighbouring slices: xi = 0, 1/K, ..., (K-1)/K, and the last."""
    slices = np.asarray(slices, dtype=np.float32)
    if slices.shape[0] < 2:
        raise ValueError(f"need at least 2 slices to interpolate, got {slices.shape[0]}")
    xi = _linear_weights(k).astype(np.float32)[None, :, None, None]
    between = (1 - xi) * slices[:-1, None] + xi * slices[1:, None]
    return np.concatenate([between.reshape(-1, *slices.shape[1:]), slices[-1:]]).astype(np.float32)


def upsample_linear(x: torch.Tensor, k: int) -> torch.Tensor:
    """Torch version on (..., slices, rows, cols) tensors: the generators' input on the HR grid."""
    n = x.shape[-3]
    if n < 2:
        raise ValueError(f"need at least 2 slices to interpolate, got {n}")
    xi = torch.arange(k, dtype=x.dtype, device=x.device) / k
    xi = xi.view(k, 1, 1)
    a, b = x[..., :-1, :, :].unsqueeze(-3), x[..., 1:, :, :].unsqueeze(-3)  # (..., n-1, 1, rows, cols)
    between = (1 - xi) * a + xi * b  # (..., n-1, K, rows, cols)
    between = between.reshape(*x.shape[:-3], (n - 1) * k, *x.shape[-2:])
    return torch.cat([between, x[..., -1:, :, :]], dim=-3)


def cubic_slices(slices: np.ndarray, k: int) -> np.ndarray:
    """Cubic spline through the acquired slices (scipy's not-a-knot CubicSpline along the slice axis);
    with 2 or 3 slices the spline degrades to the polynomial through them."""
    from scipy.interpolate import CubicSpline

    slices = np.asarray(slices, dtype=np.float32)
    n = slices.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 slices to interpolate, got {n}")
    spline = CubicSpline(np.arange(n, dtype=np.float64), slices.astype(np.float64), axis=0)
    out = spline(np.arange(hr_num_slices(n, k), dtype=np.float64) / k).astype(np.float32)
    out[::k] = slices  # exactly the acquired data, not the spline's rounding of it
    return out
