import numpy as np
import pytest

from slicesr.degradation import keep_every_kth, num_kept_slices
from slicesr.geometry import world_coordinates


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_keeps_every_kth_slice_bit_exactly_at_the_same_world_position(axis, k):
    rng = np.random.default_rng(k + 10 * axis)
    data = rng.random((9, 10, 11)).astype(np.float32)
    affine = np.eye(4)
    affine[:3, :3] = np.linalg.qr(rng.normal(size=(3, 3)))[0] * rng.uniform(0.5, 2, size=3)
    affine[:3, 3] = rng.normal(size=3) * 50
    kept, lr_affine = keep_every_kth(data, affine, k, axis)
    assert kept.shape[axis] == num_kept_slices(data.shape[axis], k)
    for lr_index in range(kept.shape[axis]):
        np.testing.assert_array_equal(np.take(kept, lr_index, axis), np.take(data, lr_index * k, axis))
        lr_voxel = np.zeros((1, 3))
        lr_voxel[0, axis] = lr_index
        hr_voxel = np.zeros((1, 3))
        hr_voxel[0, axis] = lr_index * k
        np.testing.assert_allclose(world_coordinates(lr_affine, lr_voxel), world_coordinates(affine, hr_voxel))


def test_bad_k():
    with pytest.raises(ValueError, match="K must be"):
        keep_every_kth(np.zeros((4, 4, 4)), np.eye(4), 0, 2)
