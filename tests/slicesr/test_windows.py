import numpy as np
import pytest

from slicesr.windows import Blender, covering_corners, extract_windows, fitted_windows, pad_to, window_starts


def _merge(windows, corners, shape, window, overlap):
    blender = Blender(shape, window, overlap)
    for corner, values in zip(corners, windows):
        blender.add(corner, values)
    return blender.result()


@pytest.mark.parametrize("shape", [(16, 16), (40, 23), (9, 30), (100, 64)])
def test_fixed_tiles_round_trip_and_constant_stays_constant(shape):
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    tile = (16, 16)
    padded = pad_to(image, tile)
    assert padded.shape == (max(shape[0], 16), max(shape[1], 16))
    corners = covering_corners(shape, tile, 0.25)
    tiles = extract_windows(padded, tile, corners)
    merged = _merge(tiles, corners, padded.shape, tile, 0.25)[: shape[0], : shape[1]]
    np.testing.assert_allclose(merged, image, atol=1e-6)
    constant = _merge(np.full_like(tiles, 0.7), corners, padded.shape, tile, 0.25)
    np.testing.assert_allclose(constant, 0.7, atol=1e-6)


def test_window_starts_cover_the_whole_length():
    for length in (16, 17, 50, 64):
        starts = window_starts(length, 16, 0.25)
        assert starts[0] == 0 and starts[-1] + 16 >= length
        assert all(b - a <= 12 for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("shape", [(13, 21, 17), (4, 6, 40), (30, 8, 9)])
def test_fitted_windows_cover_every_voxel_with_the_overlap(shape):
    window, corners = fitted_windows(shape, (5, 8, 16), 0.25)
    assert all(w <= max(5, 8, 16) for w in window)
    covered = np.zeros(shape, dtype=int)
    for corner in corners:
        covered[tuple(slice(c, c + w) for c, w in zip(corner, window))] += 1
    assert covered.min() >= 1
