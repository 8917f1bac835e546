"""Overlapping in-plane tiles of a fixed size and seam-free blending (pure functions)."""

from __future__ import annotations

import numpy as np


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets covering [0, length) with tiles of `tile` pixels overlapping by about `overlap`."""
    if length <= tile:
        return [0]
    stride = max(1, int(round(tile * (1.0 - overlap))))
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def blend_window(tile: int, overlap: float) -> np.ndarray:
    """Positive 2D weights that ramp down towards tile borders (all > 0, so any cover normalises)."""
    ramp_len = max(1, int(round(tile * overlap / 2)))
    index = np.arange(tile)
    ramp = np.minimum(1.0, np.minimum(index + 1, tile - index) / (ramp_len + 1))
    return np.outer(ramp, ramp).astype(np.float32)


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
