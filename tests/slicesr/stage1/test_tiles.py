import numpy as np
import pytest

from slicesr.stage1.tiles import extract_tiles, merge_tiles, tile_starts


@pytest.mark.parametrize("shape", [(16, 16), (40, 23), (9, 30), (100, 64)])
def test_tiles_round_trip_and_constant_stays_constant(shape):
    rng = np.random.default_rng(0)
    image = rng.random(shape).astype(np.float32)
    tiles, offsets = extract_tiles(image, 16, 0.25)
    np.testing.assert_allclose(merge_tiles(tiles, offsets, shape, 0.25), image, atol=1e-6)
    constant = np.full_like(tiles, 0.7)
    np.testing.assert_allclose(merge_tiles(constant, offsets, shape, 0.25), 0.7, atol=1e-6)


def test_tile_starts_cover_the_whole_length():
    for length in (16, 17, 50, 64):
        starts = tile_starts(length, 16, 0.25)
        assert starts[0] == 0 and starts[-1] + 16 >= length
        assert all(b - a <= 12 for a, b in zip(starts, starts[1:]))
