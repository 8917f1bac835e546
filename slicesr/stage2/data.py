"""3D training pairs: an HR patch from a slice store and its degraded version T(HR) on the HR grid."""

from __future__ import annotations

import numpy as np
import torch

from slicesr.degradation import keep_every_kth_tensor
from slicesr.interpolation import upsample_linear
from slicesr.store import SliceStore

MAX_REDRAWS = 20
FOREGROUND_LEVEL = 0.05  # normalised intensity (robust normalisation puts the background near 0)


class PatchSampler:
    """Random (input, target) pairs of shape (B, 1, slices, rows, cols).

    target = an HR patch; input = linear up-sampling of T(target), T keeping slices 0, K, 2K, ...
    With `aligned`, patches start on a multiple of K, where a synthetic HR volume holds its
    acquired slices: the generator then learns from the slice positions it sees at inference.
    """

    def __init__(self, store: SliceStore, scan_ids: list[str], patch_size: tuple[int, int, int], k: int,
                 aligned: bool, min_foreground: float = 0.0):
        self.store, self.patch_size, self.k, self.aligned = store, tuple(patch_size), k, aligned
        self.min_foreground = min_foreground
        depth = self.patch_size[0]
        self.shapes = {}
        for scan_id in scan_ids:
            record = store.record(scan_id)
            if record is not None and record.shape[0] >= depth:
                self.shapes[scan_id] = record.shape
        if not self.shapes:
            raise ValueError(f"no scan of {store.url} among {len(scan_ids)} has the {depth} slices a patch needs "
                             "(lower sr.patch_size[0])")
        self.scan_ids = sorted(self.shapes)
        self.arrays: dict = {}
        starts = np.array([self._num_starts(self.shapes[s][0]) for s in self.scan_ids], dtype=np.float64)
        self.weights = torch.tensor(starts / starts.sum())

    def _num_starts(self, num_slices: int) -> int:
        span = num_slices - self.patch_size[0]
        return span // self.k + 1 if self.aligned else span + 1

    def _array(self, scan_id: str):
        if scan_id not in self.arrays:
            self.arrays[scan_id] = self.store.slices(scan_id)
        return self.arrays[scan_id]

    def _draw(self, scan_id: str, generator: torch.Generator) -> np.ndarray:
        depth, size_r, size_c = self.patch_size
        num_slices, rows, cols = self.shapes[scan_id]
        start = int(torch.randint(0, self._num_starts(num_slices), (1,), generator=generator))
        start *= self.k if self.aligned else 1
        top = int(torch.randint(0, max(1, rows - size_r + 1), (1,), generator=generator))
        left = int(torch.randint(0, max(1, cols - size_c + 1), (1,), generator=generator))
        return np.asarray(self._array(scan_id)[start : start + depth, top : top + size_r, left : left + size_c])

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        depth, size_r, size_c = self.patch_size
        target = np.zeros((batch_size, 1, depth, size_r, size_c), dtype=np.float32)
        picks = torch.multinomial(self.weights, batch_size, replacement=True, generator=generator).tolist()
        for b, pick in enumerate(picks):
            scan_id = self.scan_ids[pick]
            for _ in range(MAX_REDRAWS):
                patch = self._draw(scan_id, generator)
                if np.mean(patch > FOREGROUND_LEVEL) >= self.min_foreground:
                    break
            target[b, 0, :, : patch.shape[1], : patch.shape[2]] = patch
        hr = torch.from_numpy(target)
        return upsample_linear(keep_every_kth_tensor(hr, self.k, dim=2), self.k), hr
