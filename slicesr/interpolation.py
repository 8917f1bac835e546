"""Resampling along the slice axis onto the HR grid (K*(n-1)+1 slices, or any target spacing); pure functions.

Slices come first: (num_slices, rows, cols). Output slice i*K is input slice i exactly; with a target
spacing, output slice j lies at input slice j * ratio^-1 (`target_positions`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def hr_num_slices(num_slices: int, k: int) -> int:
    return k * (num_slices - 1) + 1


def interpolation_weights(k: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """xi = 0, 1/K, ..., (K-1)/K: the positions of the K HR slices from one acquired slice to the next."""
    return torch.arange(k, dtype=dtype, device=device) / k


def lerp(a, b, xi):
    """(1 - xi) a + xi b: the one linear interpolation formula (slices, latent codes, arrays or tensors)."""
    return (1 - xi) * a + xi * b


def upsample_linear(x: torch.Tensor, k: int, dim: int = -3) -> torch.Tensor:
    """Linear interpolation along `dim` onto the HR grid (K*(n-1)+1 entries, entry i*K = input entry i).

    On (..., slices, rows, cols) tensors (the default `dim`) it is the generators' input; on stage I's
    (slices, tiles, Z) codes with dim=0 it is the latent interpolation of HR synthesis."""
    moved = x.movedim(dim, 0)
    n = moved.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 slices to interpolate, got {n}")
    xi = interpolation_weights(k, x.dtype, x.device).view(1, k, *([1] * (moved.dim() - 1)))
    between = lerp(moved[:-1].unsqueeze(1), moved[1:].unsqueeze(1), xi)  # (n-1, K, ...)
    out = torch.cat([between.reshape((n - 1) * k, *moved.shape[1:]), moved[-1:]])
    return out.movedim(0, dim)


def linear_slices(slices: np.ndarray, k: int) -> np.ndarray:
    """Linear interpolation between neighbouring slices (n, rows, cols) -> (K*(n-1)+1, rows, cols), float32."""
    slices = np.ascontiguousarray(slices, dtype=np.float32)
    tensor = torch.from_numpy(slices if slices.flags.writeable else slices.copy())
    return upsample_linear(tensor, k, dim=0).numpy()


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


# A spacing ratio within this relative tolerance of an integer K is K (the --k path, acquired slices copied);
# the output grid also ends at the last input slice when rounding puts it a hair beyond.
SPACING_RTOL = 1e-4


def integer_ratio(ratio: float) -> int | None:
    """K when `ratio` (input spacing / output spacing) is an integer K >= 1 within SPACING_RTOL, else None."""
    nearest = round(ratio)
    return int(nearest) if nearest >= 1 and abs(ratio - nearest) <= SPACING_RTOL * ratio else None


def target_positions(num_slices: int, ratio: float) -> np.ndarray:
    """Input-slice coordinates of the output slices at 1/ratio of the input spacing: 0, 1/ratio, 2/ratio, ...
    up to the last input slice: floor((n - 1) * ratio) + 1 slices."""
    if not ratio > 0:
        raise ValueError(f"the spacing ratio must be positive, got {ratio!r}")
    count = int(np.floor((num_slices - 1) * ratio + SPACING_RTOL)) + 1
    return np.minimum(np.arange(count, dtype=np.float64) / ratio, num_slices - 1)


def linear_at(slices: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Linear interpolation of (n, rows, cols) slices at input-slice coordinates `positions` (float32)."""
    slices = np.asarray(slices, dtype=np.float32)
    n = slices.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 slices to interpolate, got {n}")
    lower = np.clip(np.floor(positions).astype(np.int64), 0, n - 2)
    xi = (np.asarray(positions) - lower).astype(np.float32)[:, None, None]
    return lerp(slices[lower], slices[lower + 1], xi).astype(np.float32)


def cubic_at(slices: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The not-a-knot cubic spline of `cubic_slices` at input-slice coordinates `positions` (float32);
    integer positions are the input slices exactly."""
    from scipy.interpolate import CubicSpline

    slices = np.asarray(slices, dtype=np.float32)
    n = slices.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 slices to interpolate, got {n}")
    positions = np.asarray(positions, dtype=np.float64)
    out = CubicSpline(np.arange(n, dtype=np.float64), slices.astype(np.float64), axis=0)(positions).astype(np.float32)
    exact = positions == np.round(positions)
    out[exact] = slices[np.round(positions[exact]).astype(np.int64)]
    return out


@dataclass(frozen=True)
class InPlaneRotation:
    """A rotation of every slice's plane about the slice axis by `angle_deg`, in millimetres (a non-square
    in-plane pixel is rotated as the anatomy is, not as the index grid is), onto a canvas that holds the whole
    rotated field of view (`canvas_shape`, same pixel size), and back. Cubic splines; the canvas's corners
    outside the field of view are mirrored from it rather than left empty, so that no artificial edge
    reaches the method that runs on it."""

    shape: tuple[int, int]
    spacing_mm: tuple[float, float]
    angle_deg: float

    def __post_init__(self) -> None:
        if not np.isfinite(self.angle_deg):
            raise ValueError(f"a rotation angle must be a finite number of degrees, got {self.angle_deg!r}")
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"a slice's plane must have 2 axes of 1 pixel or more, got {self.shape}")
        if len(self.spacing_mm) != 2 or not all(np.isfinite(s) and s > 0 for s in self.spacing_mm):
            raise ValueError(f"in-plane spacing must be 2 positive numbers of mm, got {self.spacing_mm}")

    @property
    def _matrix(self) -> np.ndarray:
        """Index of the canvas -> index of the plane about their centres: S^-1 R^-1 S (S: the pixel size)."""
        theta = np.deg2rad(self.angle_deg)
        rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        scale = np.diag(np.asarray(self.spacing_mm, dtype=np.float64))
        return np.linalg.inv(scale) @ rotation.T @ scale

    @property
    def canvas_shape(self) -> tuple[int, int]:
        corners = (np.array([[0, 0], [0, 1], [1, 0], [1, 1]]) * (np.array(self.shape) - 1)
                   - (np.array(self.shape) - 1) / 2)
        reach = np.abs(corners @ np.linalg.inv(self._matrix).T).max(axis=0)
        return tuple(int(v) for v in np.ceil(2 * reach - 1e-6) + 1)

    def _centres(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.array(self.shape) - 1) / 2, (np.array(self.canvas_shape) - 1) / 2

    def canvas_support(self, margin: float = 16.0) -> np.ndarray:
        """A (canvas rows, canvas cols) mask of the canvas pixels that `backward` depends on: those within
        `margin` pixels of the field of view (its mirrored corners beyond that are read by nothing but the
        cubic spline's prefilter, whose weight falls by a factor of 3.7 a pixel: beyond 16 pixels, below 1e-8)."""
        if not margin >= 0:
            raise ValueError(f"margin must be 0 or more pixels, got {margin}")
        plane, canvas = self._centres()
        rows, cols = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in self.canvas_shape), indexing="ij")
        at = np.tensordot(self._matrix, np.stack([rows - canvas[0], cols - canvas[1]]), axes=1)
        inside = np.ones(self.canvas_shape, dtype=bool)
        for axis in range(2):
            position = at[axis] + plane[axis]
            inside &= (position >= -margin) & (position <= self.shape[axis] - 1 + margin)
        return inside

    def forward(self, slices: np.ndarray) -> np.ndarray:
        """(n, rows, cols) -> (n, *canvas_shape), float32."""
        from scipy.ndimage import affine_transform

        plane, canvas = self._centres()
        matrix = self._matrix
        offset = plane - matrix @ canvas
        out = np.empty((slices.shape[0], *self.canvas_shape), dtype=np.float32)
        for index, image in enumerate(np.asarray(slices, dtype=np.float32)):
            affine_transform(image, matrix, offset=offset, output_shape=self.canvas_shape, output=out[index],
                             order=3, mode="mirror")
        return out

    def backward(self, slices: np.ndarray) -> np.ndarray:
        """(n, *canvas_shape) -> (n, rows, cols), float32: the rotation undone."""
        from scipy.ndimage import affine_transform

        plane, canvas = self._centres()
        matrix = np.linalg.inv(self._matrix)
        offset = canvas - matrix @ plane
        out = np.empty((slices.shape[0], *self.shape), dtype=np.float32)
        for index, image in enumerate(np.asarray(slices, dtype=np.float32)):
            affine_transform(image, matrix, offset=offset, output_shape=self.shape, output=out[index], order=3,
                             mode="nearest")
        return out
