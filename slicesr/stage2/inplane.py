"""Training pairs from the LR scans' own in-plane resolution (no HR volume, no stage I).

An LR scan's in-plane axes already have the resolution its slice axis lacks. Degrading one in-plane
axis with the operator T the slice axis went through (keep every K-th line) and learning to restore it
gives pairs whose targets are real anatomy (the idea behind SMORE and ECLARE). In-plane axes finer than
the target spacing (slice spacing / K) are first resampled to it (antialiased) along the degraded axis,
so that the pairs show the generator the scale it restores at inference while the other in-plane axis
keeps its own spacing, as it does at inference; coarser ones are used as they are.

Two shapes of pair, one per kind of generator:
- planes (N, 1, D, W) for the through-plane 2D generator: a line-length D (= sr.patch_size[0]) along
  the degraded in-plane axis, W (= sr.patch_size[2]) along the other; at inference its planes are
  (slices, rows) and (slices, cols), whose in-plane axis has the same resolution as here.
- volumes (B, 1, D, R, C) for the 3D generators: (degraded in-plane axis, other in-plane axis, LR
  slices). The third axis keeps the LR slice spacing, unlike at inference (a cost that is measured,
  not hidden).
Both in-plane axes serve as the degraded axis, with random flips along each axis.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from slicesr.intensity import foreground_fraction
from slicesr.sampling import WindowSampler, randint_below
from slicesr.stage2.data import MAX_REDRAWS, Degradation
from slicesr.store import ScanRecord, SliceStore

# LR slices read per draw of planes: each gives one plane per orientation (fewer, larger reads)
PLANE_DRAW_SLICES = 8
SPACING_RTOL = 0.02  # in-plane spacing within 2% of the target counts as equal (no resampling)


def inplane_scale(spacing_mm: tuple[float, float, float], k: int) -> tuple[float, float]:
    """(rows, cols) zoom that brings a slice-first scan's in-plane spacing to its slice spacing / K: below 1
    where the in-plane axis is finer than that target, 1 where it is equal or coarser (never up-sampled)."""
    target = spacing_mm[0] / k
    return tuple(min(1.0, s / target) if s < target * (1 - SPACING_RTOL) else 1.0 for s in spacing_mm[1:])  # type: ignore[return-value]


def resample_inplane(window: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(depth, rows, cols) -> (depth, *size), antialiased bilinear (a down-sampling)."""
    if window.shape[1:] == tuple(size):
        return window
    tensor = torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32)).unsqueeze(1)
    out = torch.nn.functional.interpolate(tensor, size=size, mode="bilinear", antialias=True, align_corners=False)
    return out.squeeze(1).numpy()


class ScanInMemory:
    """One scan's normalised slices as the part of a SliceStore that the samplers read (`records`, `slices`,
    `url`): per-scan adaptation draws pairs from the scan being inferred, which is in no store."""

    SCAN_ID = "scan"

    def __init__(self, slices: np.ndarray, spacing_mm: tuple[float, float, float]):
        self.url = "the scan in memory"
        self._slices = slices
        self._record = ScanRecord(self.SCAN_ID, {"shape": list(slices.shape),
                                                 "spacing_mm": [float(s) for s in spacing_mm]})

    def records(self, scan_ids=None) -> dict[str, ScanRecord]:
        return {self.SCAN_ID: self._record}

    def slices(self, scan_id: str) -> np.ndarray:
        return self._slices


class InplanePairSampler(WindowSampler):
    """In-plane (input, target) pairs from a slice store of LR scans (see the module docstring).

    `patch_size` is stage II's (D, R, C). `sample(batch_size, generator)` gives volumes, or with `planes`
    the batch's worth of planes: batch_size * (R + C), as many as the planes of batch_size volumes. With
    `min_foreground`, a window whose foreground fraction is lower is drawn again (up to MAX_REDRAWS times).
    """

    def __init__(self, store: SliceStore | ScanInMemory, scan_ids: list[str], patch_size: tuple[int, int, int], k: int,
                 min_foreground: float = 0.0, planes: bool = False, degradation: Degradation | None = None,
                 cache_mb: float = 0.0):
        super().__init__(store, scan_ids, (1, 1, 1), too_short="", cache_mb=cache_mb)
        self.patch_size, self.k, self.min_foreground = tuple(int(n) for n in patch_size), int(k), min_foreground
        self.planes, self.degradation = planes, degradation or Degradation(int(k))
        records = store.records(self.scan_ids)
        self.scales = {scan_id: inplane_scale(records[scan_id].spacing_mm, k) for scan_id in self.scan_ids}
        # the degraded lines are at the target spacing (slice spacing / K) after resampling
        self.line_spacing = {scan_id: records[scan_id].spacing_mm[0] / k for scan_id in self.scan_ids}

    @classmethod
    def from_scan(cls, slices: np.ndarray, spacing_mm: tuple[float, float, float], patch_size: tuple[int, int, int],
                  k: int, min_foreground: float = 0.0, planes: bool = False,
                  degradation: Degradation | None = None) -> InplanePairSampler:
        """Pairs from one scan in memory (normalised slices, slice axis first): per-scan adaptation."""
        return cls(ScanInMemory(slices, spacing_mm), [ScanInMemory.SCAN_ID], patch_size, k, min_foreground, planes,
                   degradation)

    def read(self, scan_id: str, depth: int, size: tuple[int, int], degraded_axis: int,
             generator: torch.Generator) -> np.ndarray:
        """A (<= depth, <= size[0], <= size[1]) window (slices, rows, cols) whose `degraded_axis` (1: rows,
        2: cols) is at the target spacing: the store crop along it is larger by 1 / scale where the scan is
        finer, and resampled. The other in-plane axis keeps its own spacing, as at inference (a through-plane
        plane is (slices at the target spacing, an in-plane axis as acquired)). Redrawn while below
        `min_foreground`."""
        num_slices, rows, cols = self.shapes[scan_id]
        scale = self.scales[scan_id][degraded_axis - 1]
        crop = [min(rows, size[0]), min(cols, size[1])]
        crop[degraded_axis - 1] = min((rows, cols)[degraded_axis - 1], math.ceil(size[degraded_axis - 1] / scale))
        depth = min(depth, num_slices)
        for _ in range(MAX_REDRAWS):
            start = randint_below(num_slices - depth + 1, generator)
            top, left = randint_below(rows - crop[0] + 1, generator), randint_below(cols - crop[1] + 1, generator)
            window = np.asarray(self.array(scan_id)[start : start + depth, top : top + crop[0], left : left + crop[1]],
                                dtype=np.float32)
            if foreground_fraction(window) >= self.min_foreground:
                break
        out = list(window.shape[1:])
        out[degraded_axis - 1] = min(size[degraded_axis - 1], max(1, round(crop[degraded_axis - 1] * scale)))
        return resample_inplane(window, tuple(out))

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.planes:
            return self.sample_planes(batch_size * (self.patch_size[1] + self.patch_size[2]), generator)
        return self.sample_volumes(batch_size, generator)

    def sample_planes(self, num_planes: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`num_planes` pairs of (D, W) planes: (num_planes, 1, D, W), degraded along D. Each draw reads a
        few LR slices and gives one plane per slice, all degraded along rows or all along cols."""
        length, width = self.patch_size[0], self.patch_size[2]
        planes = np.zeros((num_planes, 1, length, width), dtype=np.float32)
        spacing = [0.0] * num_planes
        filled = 0
        while filled < num_planes:
            scan_id = self.pick_scans(1, generator)[0]
            transpose = bool(randint_below(2, generator))  # degraded along cols (planes transposed) or rows
            size = (width, length) if transpose else (length, width)
            window = self.read(scan_id, PLANE_DRAW_SLICES, size, 2 if transpose else 1, generator)
            for image in window[: num_planes - filled]:
                plane = image.T if transpose else image
                flips = torch.randint(0, 2, (2,), generator=generator).tolist()
                plane = plane[:: -1 if flips[0] else 1, :: -1 if flips[1] else 1]
                planes[filled, 0, : plane.shape[0], : plane.shape[1]] = plane
                spacing[filled] = self.line_spacing[scan_id]
                filled += 1
        return self.degradation.pair(torch.from_numpy(planes), spacing, generator)

    def sample_volumes(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`batch_size` pairs of (D, R, C) volumes (degraded in-plane axis, other in-plane axis, LR slices)."""
        length, other, depth = self.patch_size
        volumes = np.zeros((batch_size, 1, length, other, depth), dtype=np.float32)
        scans = self.pick_scans(batch_size, generator)
        for slot, scan_id in zip(volumes, scans):
            transpose = bool(randint_below(2, generator))
            size = (other, length) if transpose else (length, other)
            window = self.read(scan_id, depth, size, 2 if transpose else 1, generator)  # (slices, rows, cols)
            volume = window.transpose(2, 1, 0) if transpose else window.transpose(1, 2, 0)  # (degraded, other, slices)
            flips = torch.randint(0, 2, (3,), generator=generator).tolist()
            volume = volume[tuple(slice(None, None, -1 if flip else 1) for flip in flips)]
            slot[0][tuple(slice(0, n) for n in volume.shape)] = volume  # zero padding where the scan is smaller
        return self.degradation.pair(torch.from_numpy(volumes), [self.line_spacing[s] for s in scans], generator)
