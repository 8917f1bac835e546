"""Random windows of stored scans: what every stage's training sampler is built on.

A window is `depth` consecutive slices of a scan and an in-plane crop of (rows, cols); where the scan is
smaller than the crop, the window is zero-padded at the far end. Window starts lie every `stride`
slices (stride K keeps a synthetic HR volume's acquired slices at the same positions in every window),
and scans are drawn in proportion to the number of starts they offer, so every start is equally likely.

A stage's sampler turns windows into its training samples: stage I takes triplets of slices as they
are; stage II degrades each window into an (input, target) pair. A new kind of training pair (e.g.
pairs built from a scan's own in-plane axes) is another sampler over the same windows.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from slicesr.store import SliceStore


def split_scans(scan_ids: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split by scan id (stable when scans are added): returns (train_ids, val_ids)."""
    ranked = sorted(scan_ids, key=lambda s: hashlib.sha1(f"{seed}:{s}".encode()).hexdigest())
    num_val = math.ceil(val_fraction * len(ranked)) if val_fraction > 0 and len(ranked) >= 2 else 0
    num_val = min(num_val, len(ranked) - 1)
    return sorted(ranked[num_val:]), sorted(ranked[:num_val])


def randint_below(high: int, generator: torch.Generator) -> int:
    """Uniform in [0, high) from the injected generator (one draw, whatever `high` is)."""
    return int(torch.randint(0, high, (1,), generator=generator))


class WindowSampler:
    """Random (depth, rows, cols) windows of the scans of a slice store that have at least `depth` slices.

    `too_short` completes the error raised when no scan is long enough (what the user can change).
    Arrays are opened once per scan and kept. With `cache_mb`, each scan first drawn is read whole into
    memory while that budget lasts: a draw then copies from memory instead of decompressing its slices
    again (a store keeps one slice per chunk; the reads were most of an in-plane training step,
    benchmarks/NOTES.md). Scans beyond the budget stay lazy (a window reads only its slices).
    """

    def __init__(self, store: SliceStore, scan_ids: list[str], window: tuple[int, int, int], stride: int = 1,
                 too_short: str = "", cache_mb: float = 0.0):
        self.store, self.window, self.stride = store, tuple(int(n) for n in window), int(stride)
        depth = self.window[0]
        records = store.records(scan_ids)
        self.shapes = {scan_id: records[scan_id].shape for scan_id in scan_ids
                       if scan_id in records and records[scan_id].shape[0] >= depth}
        if not self.shapes:
            raise ValueError(f"no scan of {store.url} among {len(scan_ids)} has the {depth} slices a sample needs"
                             + (f" ({too_short})" if too_short else ""))
        self.scan_ids = sorted(self.shapes)
        self.arrays: dict = {}
        self.cache_bytes_left = int(cache_mb * 2**20)
        starts = np.array([self.num_starts(self.shapes[s][0]) for s in self.scan_ids], dtype=np.float64)
        self.weights = torch.tensor(starts / starts.sum())

    def num_starts(self, num_slices: int) -> int:
        return (num_slices - self.window[0]) // self.stride + 1

    def array(self, scan_id: str):
        if scan_id not in self.arrays:
            array = self.store.slices(scan_id)
            size = math.prod(array.shape) * np.dtype(array.dtype).itemsize
            if size <= self.cache_bytes_left:
                array = np.asarray(array[...])
                self.cache_bytes_left -= size
            self.arrays[scan_id] = array
        return self.arrays[scan_id]

    def pick_scans(self, batch_size: int, generator: torch.Generator) -> list[str]:
        picks = torch.multinomial(self.weights, batch_size, replacement=True, generator=generator).tolist()
        return [self.scan_ids[pick] for pick in picks]

    def draw(self, scan_id: str, generator: torch.Generator) -> np.ndarray:
        """One window of `scan_id` as read: (depth, <= rows, <= cols) where the scan is smaller."""
        depth, size_r, size_c = self.window
        num_slices, rows, cols = self.shapes[scan_id]
        start = randint_below(self.num_starts(num_slices), generator) * self.stride
        top = randint_below(max(1, rows - size_r + 1), generator)
        left = randint_below(max(1, cols - size_c + 1), generator)
        return np.asarray(self.array(scan_id)[start : start + depth, top : top + size_r, left : left + size_c])


def place(out: np.ndarray, window: np.ndarray) -> None:
    """Copy a drawn window into a zeroed (depth, rows, cols) slot: zero padding where the scan was smaller."""
    out[:, : window.shape[1], : window.shape[2]] = window
