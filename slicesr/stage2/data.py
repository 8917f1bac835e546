"""3D training pairs: an HR patch from a slice store and its degraded version T(HR) on the HR grid."""

from __future__ import annotations

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


class PatchSampler(WindowSampler):
    """Random (input, target) pairs of shape (B, 1, slices, rows, cols), built by `degraded_pair`.

    With `aligned`, patches start on a multiple of K, where a synthetic HR volume holds its
    acquired slices: the generator then learns from the slice positions it sees at inference.
    With `min_foreground`, a patch whose foreground fraction is lower is drawn again (up to
    MAX_REDRAWS times), so that few batches are background only.
    """

    def __init__(self, store: SliceStore, scan_ids: list[str], patch_size: tuple[int, int, int], k: int,
                 aligned: bool, min_foreground: float = 0.0):
        super().__init__(store, scan_ids, tuple(patch_size), stride=k if aligned else 1,
                         too_short="lower sr.patch_size[0]")
        self.patch_size, self.k, self.aligned, self.min_foreground = self.window, k, aligned, min_foreground

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        target = np.zeros((batch_size, 1, *self.window), dtype=np.float32)
        for slot, scan_id in zip(target, self.pick_scans(batch_size, generator)):
            for _ in range(MAX_REDRAWS):
                patch = self.draw(scan_id, generator)
                if foreground_fraction(patch) >= self.min_foreground:
                    break
            place(slot[0], patch)
        return degraded_pair(torch.from_numpy(target), self.k)
