"""Triplets of consecutive slices (x_{n-1}, x_n, x_{n+1}) of one scan, read from a slice store."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from slicesr.store import SliceStore

TRIPLET_SLICES = 3  # a scan gives triplets (x_{n-1}, x_n, x_{n+1}) only with this many slices


def split_scans(scan_ids: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split by scan id (stable when scans are added): returns (train_ids, val_ids)."""
    ranked = sorted(scan_ids, key=lambda s: hashlib.sha1(f"{seed}:{s}".encode()).hexdigest())
    num_val = math.ceil(val_fraction * len(ranked)) if val_fraction > 0 and len(ranked) >= 2 else 0
    num_val = min(num_val, len(ranked) - 1)
    return sorted(ranked[num_val:]), sorted(ranked[:num_val])


class TripletSampler:
    """Random triplets with random in-plane crops of `image_size` (zero-padded when a slice is smaller)."""

    def __init__(self, store: SliceStore, scan_ids: list[str], image_size: int):
        self.store = store
        self.image_size = image_size
        self.arrays = {}
        self.scan_ids = []
        for scan_id in scan_ids:
            record = store.record(scan_id)
            if record is not None and record.shape[0] >= TRIPLET_SLICES:
                self.scan_ids.append(scan_id)
        if not self.scan_ids:
            raise ValueError(f"no scan with at least {TRIPLET_SLICES} slices among {len(scan_ids)} scans of {store.url}")
        shapes = [store.record(s).shape for s in self.scan_ids]
        self.shapes = dict(zip(self.scan_ids, shapes))
        centers = np.array([shape[0] - 2 for shape in shapes], dtype=np.float64)
        self.weights = torch.tensor(centers / centers.sum())

    def _array(self, scan_id: str):
        if scan_id not in self.arrays:
            self.arrays[scan_id] = self.store.slices(scan_id)
        return self.arrays[scan_id]

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """(B, 3, S, S) float32: channel 0 = x_{n-1}, 1 = x_n, 2 = x_{n+1}."""
        size = self.image_size
        out = np.zeros((batch_size, 3, size, size), dtype=np.float32)
        picks = torch.multinomial(self.weights, batch_size, replacement=True, generator=generator).tolist()
        for b, pick in enumerate(picks):
            scan_id = self.scan_ids[pick]
            num_slices, rows, cols = self.shapes[scan_id]
            center = 1 + int(torch.randint(0, num_slices - 2, (1,), generator=generator))
            top = int(torch.randint(0, max(1, rows - size + 1), (1,), generator=generator))
            left = int(torch.randint(0, max(1, cols - size + 1), (1,), generator=generator))
            patch = self._array(scan_id)[center - 1 : center + 2, top : top + size, left : left + size]
            out[b, :, : patch.shape[1], : patch.shape[2]] = patch
        return torch.from_numpy(out)
