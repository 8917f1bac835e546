"""Triplets of consecutive slices (x_{n-1}, x_n, x_{n+1}) of one scan, read from a slice store."""

from __future__ import annotations

import numpy as np
import torch

from slicesr.sampling import WindowSampler, place
from slicesr.store import SliceStore

TRIPLET_SLICES = 3  # a scan gives triplets (x_{n-1}, x_n, x_{n+1}) only with this many slices


class TripletSampler(WindowSampler):
    """Random triplets with random in-plane crops of `image_size` (zero-padded when a slice is smaller)."""

    def __init__(self, store: SliceStore, scan_ids: list[str], image_size: int, cache_mb: float = 0.0):
        super().__init__(store, scan_ids, (TRIPLET_SLICES, image_size, image_size),
                         too_short="stage I trains on triplets of consecutive slices", cache_mb=cache_mb)
        self.image_size = image_size

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """(B, 3, S, S) float32: channel 0 = x_{n-1}, 1 = x_n, 2 = x_{n+1}."""
        out = np.zeros((batch_size, *self.window), dtype=np.float32)
        for slot, scan_id in zip(out, self.pick_scans(batch_size, generator)):
            place(slot, self.draw(scan_id, generator))
        return torch.from_numpy(out)
