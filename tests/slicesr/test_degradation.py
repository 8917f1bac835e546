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


def test_profile_weights_point_box_gaussian():
    from slicesr.degradation import num_lr_slices, profile_weights

    point = profile_weights(9, 4)
    np.testing.assert_array_equal(point, np.eye(9)[::4])  # integer ratio: the kept slices themselves
    half = profile_weights(11, 2.5)
    assert half.shape == (num_lr_slices(11, 2.5), 11) == (5, 11)
    np.testing.assert_allclose(half[1, 2:4], [0.5, 0.5])  # centre 2.5: between slices 2 and 3
    box = profile_weights(13, 4, "box", 3.0)  # 3 HR slices thick, a gap of one between acquired slices
    np.testing.assert_allclose(box[1, 3:6], [1 / 3] * 3)
    assert box[1, 2] == box[1, 6] == 0
    contiguous = profile_weights(13, 4, "box", 4.0)
    np.testing.assert_allclose(contiguous[1, 2:7], [0.125, 0.25, 0.25, 0.25, 0.125])
    gauss = profile_weights(13, 4, "gaussian", 4.0)
    np.testing.assert_allclose(gauss.sum(axis=1), 1.0)
    np.testing.assert_allclose(gauss[1, 4 - 2], gauss[1, 4 + 2])  # symmetric about the centre
    assert gauss[1, 4] > gauss[1, 5] > gauss[1, 6] > 0
    np.testing.assert_allclose(box[0, :3], [0.5, 0.5, 0])  # cut by the volume's start: renormalised
    for bad in ({"ratio": 0}, {"profile": "sinc"}, {"profile": "box"}):
        with pytest.raises(ValueError):
            profile_weights(9, **{"ratio": 4, **bad})


def test_degrade_profile_geometry_and_point_identity():
    from slicesr.degradation import degrade_profile, keep_every_kth

    rng = np.random.default_rng(0)
    data = rng.random((6, 7, 17)).astype(np.float32)
    affine = np.diag([0.9, 0.8, 1.0, 1.0])
    kept, kept_affine = degrade_profile(data, affine, 4, 2)
    reference, reference_affine = keep_every_kth(data, affine, 4, 2)
    np.testing.assert_array_equal(kept, reference)
    np.testing.assert_array_equal(kept_affine, reference_affine)
    lr, lr_affine = degrade_profile(data, affine, 2.5, 2, "box", 2.5)
    assert lr.shape == (6, 7, 7) and lr.dtype == np.float32
    np.testing.assert_allclose(lr_affine[:3, 2], [0, 0, 2.5])
    # centre 5, thickness 2.5: [3.75, 6.25] covers 3/4 of slice 4, slice 5 and 3/4 of slice 6
    np.testing.assert_allclose(lr[..., 2], (0.75 * data[..., 4] + data[..., 5] + 0.75 * data[..., 6]) / 2.5, rtol=1e-5)
