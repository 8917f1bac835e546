import numpy as np
import torch

from slicesr.degradation import keep_every_kth, keep_every_kth_tensor
from slicesr.interpolation import cubic_slices, hr_num_slices, linear_slices, upsample_linear


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
