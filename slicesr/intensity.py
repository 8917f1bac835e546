"""Robust intensity normalisation to about [0, 1], undoable from two stored numbers.

stored = (original - offset) / scale, original = stored * scale + offset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# A value held by at least this fraction of voxels is a constant background (skull-stripped,
# masked or z-scored scans); below it the background is noise and a mean threshold finds tissue.
_CONSTANT_BACKGROUND_FRACTION = 0.05
# Robust normalisation puts the background near 0 and the foreground's 99.5th percentile at 1: a
# normalised value above this level is taken for tissue (training samplers skip background-only patches).
FOREGROUND_LEVEL = 0.05
# Percentiles are taken on at most this many voxels (an even stride), which keeps the cost flat.
_MAX_SAMPLES = 250_000


@dataclass(frozen=True)
class IntensityParams:
    offset: float
    scale: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> IntensityParams:
        return cls(offset=float(values["offset"]), scale=float(values["scale"]))


def _sample(data: np.ndarray) -> np.ndarray:
    flat = np.ravel(np.asarray(data), order="K")  # no copy for transposed or Fortran-ordered arrays
    stride = max(1, flat.size // _MAX_SAMPLES)
    return flat[::stride].astype(np.float64, copy=False)


def foreground_values(data: np.ndarray) -> tuple[np.ndarray, float | None]:
    """Voxel values (a sample) that belong to the object, and the constant background value if any."""
    sample = _sample(data)
    # A constant background is the minimum (zero, or negative after z-scoring) or fills the corners.
    corners = np.asarray(data)[np.ix_(*[[0, n - 1] for n in np.shape(data)])].reshape(-1)
    candidates = {float(sample.min()), float(np.median(corners))}
    best, best_count = None, 0
    for candidate in sorted(candidates):
        count = int(np.count_nonzero(sample == candidate))
        if count > best_count:
            best, best_count = candidate, count
    if best is not None and best_count >= _CONSTANT_BACKGROUND_FRACTION * sample.size and best_count < sample.size:
        return sample[sample != best], best
    return sample[sample > sample.mean()], None


def robust_intensity_params(
    data: np.ndarray, lower_percentile: float = 0.5, upper_percentile: float = 99.5
) -> IntensityParams:
    """Parameters that map the foreground's `upper_percentile` to 1 and the background to about 0.

    Works for zero-background scans, z-scored scans whose background is a negative constant, and
    unmasked scans with a noisy background. A constant image gets scale 1.
    """
    if not np.all(np.isfinite(data)):
        raise ValueError("intensity normalisation needs finite values (found NaN or infinity)")
    foreground, background = foreground_values(data)
    if foreground.size == 0:
        foreground = _sample(data)
    if background is not None:
        offset = min(background, float(np.percentile(foreground, lower_percentile)))
    else:
        offset = float(np.percentile(_sample(data), lower_percentile))
    top = float(np.percentile(foreground, upper_percentile))
    scale = top - offset
    if not np.isfinite(scale) or scale <= 0:
        scale = 1.0
    return IntensityParams(offset=offset, scale=scale)


def normalize(data: np.ndarray, params: IntensityParams) -> np.ndarray:
    """float32 (data - offset) / scale, C-contiguous whatever the input's memory layout."""
    out = np.empty(np.shape(data), dtype=np.float32)
    np.subtract(data, np.float32(params.offset), out=out, dtype=np.float32)
    out /= np.float32(params.scale)
    return out


def denormalize(data: np.ndarray, params: IntensityParams) -> np.ndarray:
    """Inverse of :func:`normalize` (float32)."""
    out = np.asarray(data, dtype=np.float32) * np.float32(params.scale)
    out += np.float32(params.offset)
    return out


def foreground_fraction(normalised: np.ndarray) -> float:
    """Fraction of voxels of a normalised array above FOREGROUND_LEVEL (the object, not the background)."""
    return float(np.mean(np.asarray(normalised) > FOREGROUND_LEVEL))
