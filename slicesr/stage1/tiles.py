"""Overlapping in-plane tiles of a fixed size and seam-free blending (pure functions)."""

from __future__ import annotations

import numpy as np

from slicesr.windows import blend_weights, window_starts

tile_starts = window_starts


def blend_window(tile: int, overlap: float) -> np.ndarray:
    """Positive 2D weights that ramp down towards tile borders (all > 0, so any cover normalises)."""
    return blend_weights((tile, tile), overlap)


def extract_tiles(image: np.ndarray, tile: int, overlap: float) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(T, tile, tile) tiles of a 2D image (zero-padded when smaller) and their (top, left) offsets."""
    rows, cols = image.shape
    padded = np.zeros((max(rows, tile), max(cols, tile)), dtype=np.float32)
    padded[:rows, :cols] = image
    offsets = [(t, c) for t in tile_starts(rows, tile, overlap) for c in tile_starts(cols, tile, overlap)]
    tiles = np.stack([padded[t : t + tile, c : c + tile] for t, c in offsets])
    return tiles, offsets


def merge_tiles(tiles: np.ndarray, offsets: list[tuple[int, int]], shape: tuple[int, int], overlap: float) -> np.ndarray:
    """Weighted average of overlapping tiles back into an image of `shape` (inverse of extract_tiles)."""
    tile = tiles.shape[-1]
    rows, cols = shape
    total = np.zeros((max(rows, tile), max(cols, tile)), dtype=np.float32)
    weight = np.zeros_like(total)
    window = blend_window(tile, overlap)
    for (t, c), values in zip(offsets, tiles):
        total[t : t + tile, c : c + tile] += values * window
        weight[t : t + tile, c : c + tile] += window
    return (total / weight)[:rows, :cols]
