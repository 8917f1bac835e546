"""3D training pairs: an HR patch from a slice store and its degraded version T(HR) on the HR grid."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from slicesr.degradation import keep_every_kth_tensor
from slicesr.intensity import foreground_fraction
from slicesr.interpolation import upsample_linear
from slicesr.sampling import WindowSampler, place
from slicesr.store import SliceStore

MAX_REDRAWS = 20


def degraded_pair(hr: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target) of eq. 12 for HR patches (B, 1, slices, rows, cols), or planes (B, 1, slices, cols):
    the input is T(target), keeping slices 0, K, 2K, ..., linearly up-sampled back onto the HR grid."""
    return upsample_linear(keep_every_kth_tensor(hr, k, dim=2), k, dim=2), hr


def ratio_matrix(length: int, ratio: float, profile: str = "point", thickness: float | None = None) -> tuple[np.ndarray, int]:
    """(length x length) matrix M with input = M @ target along the slice axis for a spacing ratio of any
    real `ratio`: T (slicesr.degradation.profile_weights: the point profile takes the lines at 0, ratio,
    2 ratio, ..., linear between grid lines; box and gaussian average `thickness` lines around them), then
    linear interpolation back onto lines 0 .. length-1; and the number of lines up to the last acquired
    centre (the ones a pair covers: beyond it the input would be an extrapolation)."""
    from slicesr.degradation import profile_weights
    from slicesr.interpolation import linear_at

    degrade = profile_weights(length, ratio, profile, thickness)  # (m, length)
    m = degrade.shape[0]
    covered = int(np.floor((m - 1) * ratio + 1e-6)) + 1
    positions = np.minimum(np.arange(length, dtype=np.float64) / ratio, m - 1)  # lines past the last centre: flat
    # the interpolation weights: linear interpolation of the identity's rows at the positions
    upsample = linear_at(np.eye(m, dtype=np.float32)[:, :, None], positions)[:, :, 0].astype(np.float64)
    return upsample @ degrade, covered


def degraded_pair_ratios(hr: torch.Tensor, ratios: list[float], profile: str = "point",
                         thicknesses: list[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target) for patches or planes (B, 1, slices, ...), each degraded at its own spacing ratio
    (`ratio_matrix`; with a box or Gaussian `profile` of `thicknesses` lines, one per pair). Past a pair's
    last acquired centre the input is an extrapolation, so the target there is the input itself (nothing
    to learn, like at the acquired slices). At an integer ratio K whose grid ends on a centre and the point
    profile this is `degraded_pair`'s pair."""
    length = hr.shape[2]
    inputs, target = torch.empty_like(hr), hr.clone()
    for index, ratio in enumerate(ratios):
        matrix, lines = ratio_matrix(length, ratio, profile, None if thicknesses is None else thicknesses[index])
        inputs[index] = torch.tensordot(torch.from_numpy(matrix).to(hr.dtype), hr[index].movedim(1, 0),
                                        dims=1).movedim(0, 1)
        target[index, :, lines:] = inputs[index, :, lines:]
    return inputs, target


def draw_ratios(count: int, ratio_range: tuple[float, float], integer_share: float, generator: torch.Generator
                ) -> list[float]:
    """`count` spacing ratios from [low, high]: uniform, except that a share `integer_share` of them (each
    with that probability) is one of the range's integers, equally likely. At a fractional ratio the point
    profile takes its acquired lines linearly between two grid lines, slightly blurred, while at an integer
    ratio they are sharp grid lines, as a scan's acquired slices are at inference: a range model drawn
    uniformly almost never sees sharp ones (benchmarks/NOTES.md, sixteenth and seventeenth sessions).
    With no integer share the draw (and the generator's use) is the uniform one of earlier models."""
    low, high = ratio_range
    ratios = (low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64)).tolist()
    if integer_share <= 0:
        return ratios
    integers = list(range(math.ceil(low), math.floor(high) + 1))
    if not integers:
        raise ValueError(f"an integer share of the ratio draw needs an integer in the ratio range {list(ratio_range)}")
    pick = torch.rand(count, generator=generator, dtype=torch.float64).tolist()
    which = torch.randint(0, len(integers), (count,), generator=generator).tolist()
    return [float(integers[i]) if p < integer_share else r for r, p, i in zip(ratios, pick, which)]


@dataclass(frozen=True)
class Degradation:
    """How stage II degrades its training pairs: the ratio K or a range of ratios, and the slice profile
    (`thickness_mm` for box and gaussian)."""

    k: int
    ratio_range: tuple[float, float] | None = None
    profile: str = "point"
    thickness_mm: float = 0.0
    integer_share: float = 0.0  # of the pairs of a range drawn at an integer ratio (`draw_ratios`)

    def pair(self, hr: torch.Tensor, line_spacing_mm: list[float], generator: torch.Generator
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (input, target) of HR patches or planes whose lines are `line_spacing_mm` apart (one per
        pair): at the ratio K, or at a ratio drawn from `ratio_range` per pair (`draw_ratios`)."""
        if not self.ratio_range and self.profile == "point":
            return degraded_pair(hr, self.k)
        if self.ratio_range:
            ratios = draw_ratios(hr.shape[0], self.ratio_range, self.integer_share, generator)
        else:
            ratios = [float(self.k)] * hr.shape[0]
        thicknesses = None if self.profile == "point" else [self.thickness_mm / s for s in line_spacing_mm]
        return degraded_pair_ratios(hr, ratios, self.profile, thicknesses)


class PatchSampler(WindowSampler):
    """Random (input, target) pairs of shape (B, 1, slices, rows, cols), built by `degraded_pair`.

    With `aligned`, patches start on a multiple of K, where a synthetic HR volume holds its
    acquired slices: the generator then learns from the slice positions it sees at inference.
    With `min_foreground`, a patch whose foreground fraction is lower is drawn again (up to
    MAX_REDRAWS times), so that few batches are background only.
    """

    def __init__(self, store: SliceStore, scan_ids: list[str], patch_size: tuple[int, int, int], k: int,
                 aligned: bool, min_foreground: float = 0.0, degradation: Degradation | None = None,
                 cache_mb: float = 0.0):
        super().__init__(store, scan_ids, tuple(patch_size), stride=k if aligned else 1,
                         too_short="lower sr.patch_size[0]", cache_mb=cache_mb)
        self.patch_size, self.k, self.aligned, self.min_foreground = self.window, k, aligned, min_foreground
        self.degradation = degradation or Degradation(k)
        self.line_spacing = ({s: r.spacing_mm[0] for s, r in store.records(self.scan_ids).items()}
                             if self.degradation.profile != "point" else {})

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        target = np.zeros((batch_size, 1, *self.window), dtype=np.float32)
        scans = self.pick_scans(batch_size, generator)
        for slot, scan_id in zip(target, scans):
            for _ in range(MAX_REDRAWS):
                patch = self.draw(scan_id, generator)
                if foreground_fraction(patch) >= self.min_foreground:
                    break
            place(slot[0], patch)
        return self.degradation.pair(torch.from_numpy(target), [self.line_spacing.get(s, 1.0) for s in scans], generator)
