import numpy as np
import pytest
import torch

from slicesr.degradation import keep_every_kth, keep_every_kth_tensor
from slicesr.interpolation import InPlaneRotation, cubic_slices, hr_num_slices, linear_slices, upsample_linear


def test_linear_numpy_and_torch_agree_and_keep_acquired_slices():
    slices = np.random.default_rng(0).random((5, 4, 3)).astype(np.float32)
    for k in (2, 3, 4):
        out = linear_slices(slices, k)
        assert out.shape == (hr_num_slices(5, k), 4, 3)
        np.testing.assert_array_equal(out[::k], slices)
        np.testing.assert_allclose(out[1], (1 - 1 / k) * slices[0] + slices[1] / k, rtol=1e-6)
        torch.testing.assert_close(upsample_linear(torch.from_numpy(slices)[None, None], k)[0, 0], torch.from_numpy(out))


def test_cubic_reproduces_a_cubic_polynomial():
    t = np.arange(6, dtype=np.float64)
    slices = (0.1 * t**3 - t**2 + 2 * t + 1)[:, None, None] * np.ones((1, 2, 2))
    out = cubic_slices(slices.astype(np.float32), 4)
    fine = np.arange(21) / 4
    np.testing.assert_allclose(out[:, 0, 0], 0.1 * fine**3 - fine**2 + 2 * fine + 1, rtol=1e-4, atol=1e-4)


def test_degradation_tensor_matches_numpy():
    hr = np.random.default_rng(1).random((3, 4, 13)).astype(np.float32)
    kept, _ = keep_every_kth(hr, np.eye(4), 4, 2)
    torch.testing.assert_close(keep_every_kth_tensor(torch.from_numpy(hr), 4, dim=2), torch.from_numpy(kept))


def _smooth_planes(shape, seed=0):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    return gaussian_filter(rng.normal(size=shape), (0, 3, 3)).astype(np.float32)


def test_in_plane_rotation_by_90_degrees_is_exact():
    planes = _smooth_planes((2, 12, 9))
    rotation = InPlaneRotation((12, 9), (1.0, 1.0), 90)
    assert rotation.canvas_shape == (9, 12)
    np.testing.assert_allclose(rotation.forward(planes), np.rot90(planes, 1, axes=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(rotation.backward(rotation.forward(planes)), planes, atol=1e-5)


def test_in_plane_rotation_there_and_back_keeps_a_smooth_image():
    planes = _smooth_planes((2, 40, 33), seed=1)
    rotation = InPlaneRotation((40, 33), (1.0, 1.0), 45)
    turned = rotation.forward(planes)
    # the whole rotated field of view: (39 + 32) / sqrt(2) = 50.2 pixels between the outer centres
    assert turned.shape == (2, 52, 52) and turned.dtype == np.float32
    back = rotation.backward(turned)
    assert back.shape == planes.shape
    inner = (slice(None), slice(6, -6), slice(6, -6))
    assert np.abs(back - planes)[inner].max() < 0.02 * np.abs(planes).max()


def test_in_plane_rotation_turns_a_line_about_the_centre():
    from scipy.ndimage import map_coordinates

    line = np.zeros((1, 41, 41), np.float32)
    line[0, 19:22, 5:36] = 1.0  # 3 pixels wide, along the columns, through the centre
    turned = InPlaneRotation((41, 41), (1.0, 1.0), 30).forward(line)[0]
    centre = (np.array(turned.shape) - 1) / 2
    t = np.linspace(-12, 12, 25)
    theta = np.deg2rad(30)
    along = centre[:, None] + t * np.array([[-np.sin(theta)], [np.cos(theta)]])
    across = centre[:, None] + np.r_[-12:-4, 5:13] * np.array([[np.cos(theta)], [np.sin(theta)]])
    assert map_coordinates(turned, along, order=1).min() > 0.8
    assert np.abs(map_coordinates(turned, across, order=1)).max() < 0.1


def test_in_plane_rotation_turns_millimetres_not_pixels():
    # 20 rows of 1 mm x 40 columns of 0.5 mm: a 19 x 19.5 mm plane; turned by 90 degrees it is 19.5 mm tall
    # (40 rows of 0.5 mm... on the canvas's own 1 x 0.5 mm pixels: 20.5 rows, 39 columns)
    rotation = InPlaneRotation((20, 40), (1.0, 0.5), 90)
    assert rotation.canvas_shape == (21, 39)
    planes = np.zeros((1, 20, 40), np.float32)
    planes[0, 10, :] = 1.0  # a row: a line along the columns through the middle
    turned = rotation.forward(planes)[0]
    column = np.argmax(np.abs(turned).sum(axis=0))
    assert abs(column - 19) <= 1  # now a line along the rows, through the middle column
    assert np.abs(turned[:, column]).min() > 0.5  # ... over the whole height: 19 mm of it


def test_canvas_support_holds_what_the_rotation_back_reads():
    rotation = InPlaneRotation((40, 33), (1.0, 0.8), 45)
    support = rotation.canvas_support(margin=4)
    assert support.shape == rotation.canvas_shape
    assert 0.45 < support.mean() < 0.8  # the corners of a 45-degree canvas are left out
    assert InPlaneRotation((12, 9), (1.0, 1.0), 90).canvas_support(0).all()  # a quarter turn fills its canvas
    # changing the canvas outside the support does not change what comes back, beyond the spline's tail
    turned = rotation.forward(_smooth_planes((1, 40, 33), seed=2))
    outside = turned.copy()
    outside[:, ~rotation.canvas_support(margin=16)] = 7.0
    np.testing.assert_allclose(rotation.backward(outside), rotation.backward(turned), atol=1e-6)
    with pytest.raises(ValueError, match="margin"):
        rotation.canvas_support(-1)


@pytest.mark.parametrize("angle, spacing, message", [(float("nan"), (1.0, 1.0), "finite"),
                                                     (45, (0.0, 1.0), "positive")])
def test_in_plane_rotation_refuses_bad_settings(angle, spacing, message):
    with pytest.raises(ValueError, match=message):
        InPlaneRotation((8, 8), spacing, angle)
