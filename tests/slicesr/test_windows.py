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


@pytest.mark.parametrize("name", ["deepresolve", "throughplane2d", "dcsrn"])
def test_aligned_windows_with_discarded_margins_equal_one_pass(name):
    """Windows on multiples of K whose receptive-field margins are discarded give what the generator
    gives on the whole volume: no value depends on where a window was cut."""
    import torch

    from slicesr.models.generators import GeneratorSize, build_generator, receptive_radius
    from slicesr.windows import sliding_window_apply

    torch.manual_seed(0)
    model = build_generator(GeneratorSize(name, num_layers=3, num_filters=4, dense_units=2, growth_rate=3)).eval()
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)):
            torch.nn.init.normal_(module.weight, std=0.3)  # not the identity
    volume = np.random.default_rng(1).random((4 * 9 + 1, 40, 33)).astype(np.float32)
    radius = receptive_radius(model)
    assert radius == {"deepresolve": 3, "throughplane2d": 3, "dcsrn": 4}[name]

    def run(window):
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(window))[None, None])[0, 0].numpy()

    corners = []
    windowed = sliding_window_apply(lambda w: (corners.append(w.shape), run(w))[1], volume, (17, 20, 20), 0.1,
                                    margin=(radius,) * 3, align=(4, 1, 1))
    assert len(corners) > 4 and all(shape[0] % 4 == 1 for shape in corners)
    np.testing.assert_allclose(windowed, run(volume), atol=2e-5)


@pytest.mark.parametrize("length,window,margin,align", [(37, 17, 3, 4), (81, 9, 4, 4), (200, 64, 8, 1), (13, 9, 4, 4),
                                                       (97, 20, 0, 3), (41, 5, 6, 2)])
def test_aligned_windows_leave_every_voxel_outside_some_margin(length, window, margin, align):
    from slicesr.windows import aligned_windows

    size, starts = aligned_windows(length, window, 0.125, margin, align)
    assert all(start % align == 0 for start in starts) and starts[-1] + size == length
    useful = np.zeros(length, dtype=bool)
    for start in starts:
        low = start + (margin if start > 0 else 0)
        high = start + size - (margin if start + size < length else 0)
        useful[low:high] = True
    assert useful.all()
