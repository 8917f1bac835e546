import numpy as np
import pytest

from preprocessing.synth import random_rotation
from slicesr.geometry import (
    find_slice_axis,
    from_slice_first,
    resolve_slice_axis,
    to_slice_first,
    voxel_spacing,
    world_coordinates,
)


def _affine(spacing, directions=None, origin=(3.0, -7.0, 11.0)):
    affine = np.eye(4)
    affine[:3, :3] = (np.eye(3) if directions is None else directions) * np.asarray(spacing)
    affine[:3, 3] = origin
    return affine


@pytest.mark.parametrize(
    "spacing, expected",
    [((1, 1, 5), 2), ((5, 1, 1), 0), ((1, 4, 1), 1), ((3, 3, 1), 1), ((2, 2, 2), 2), ((4, 1, 4.00001), 2)],
)
def test_find_slice_axis_largest_spacing_last_on_tie(spacing, expected):
    assert find_slice_axis(_affine(spacing)) == expected


def test_slice_axis_of_oblique_affine_uses_column_norms():
    rotation = random_rotation(np.random.default_rng(3), 30)
    affine = _affine((0.8, 6.0, 0.8), rotation)
    np.testing.assert_allclose(voxel_spacing(affine), (0.8, 6.0, 0.8))
    assert find_slice_axis(affine) == 1


def test_resolve_slice_axis_rejects_bad_values():
    with pytest.raises(ValueError, match="slice axis"):
        resolve_slice_axis(np.eye(4), 3)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_stored_voxels_keep_their_world_position(seed, slice_axis):
    rng = np.random.default_rng(seed)
    directions = np.eye(3)[:, rng.permutation(3)] * rng.choice([-1, 1], size=3)
    if seed % 2:
        directions = random_rotation(rng, 40) @ directions
    affine = _affine(rng.uniform(0.3, 6, size=3), directions, rng.uniform(-100, 100, size=3))
    data = rng.random((5, 6, 7)).astype(np.float32)
    slices, stored_affine = to_slice_first(data, affine, slice_axis)
    others = [a for a in range(3) if a != slice_axis]
    for _ in range(20):
        stored_index = np.array([rng.integers(n) for n in slices.shape])
        source_index = np.zeros(3, dtype=int)
        source_index[slice_axis] = stored_index[0]
        source_index[others[0]] = stored_index[1]
        source_index[others[1]] = stored_index[2]
        assert slices[tuple(stored_index)] == data[tuple(source_index)]
        np.testing.assert_allclose(
            world_coordinates(stored_affine, stored_index[None]),
            world_coordinates(affine, source_index[None]),
            atol=1e-9,
        )
    back, back_affine = from_slice_first(slices, stored_affine, slice_axis)
    np.testing.assert_array_equal(back, data)
    np.testing.assert_allclose(back_affine, affine)
