import numpy as np
import pytest

from slicesr.intensity import IntensityParams, denormalize, normalize, robust_intensity_params


def _head(rng, background):
    data = np.full((30, 30, 10), background, dtype=np.float32)
    data[5:25, 5:25, 2:8] = rng.normal(100.0, 10.0, size=(20, 20, 6))
    return data


def test_zero_background_maps_to_zero_and_tissue_to_about_one():
    data = _head(np.random.default_rng(0), 0.0)
    params = robust_intensity_params(data)
    out = normalize(data, params)
    assert out[0, 0, 0] == 0.0
    tissue = out[5:25, 5:25, 2:8]
    assert 0.6 < np.median(tissue) < 0.95
    assert np.percentile(tissue, 99.5) == pytest.approx(1.0, abs=0.02)


def test_zscored_negative_constant_background_maps_to_zero():
    rng = np.random.default_rng(1)
    data = np.full((30, 30, 10), -3.5, dtype=np.float32)
    data[5:25, 5:25, 2:8] = rng.normal(0.0, 1.0, size=(20, 20, 6))
    out = normalize(data, robust_intensity_params(data))
    assert out[0, 0, 0] == pytest.approx(0.0)
    tissue = out[5:25, 5:25, 2:8]
    assert 0.3 < np.median(tissue) < 0.8
    assert out.max() < 1.5


def test_noisy_background_without_constant_value():
    rng = np.random.default_rng(2)
    data = np.abs(rng.normal(0, 3.0, size=(30, 30, 10))).astype(np.float32)
    data[5:25, 5:25, 2:8] += 200
    out = normalize(data, robust_intensity_params(data))
    assert abs(np.median(out[:3])) < 0.05
    assert np.percentile(out[5:25, 5:25, 2:8], 99.5) == pytest.approx(1.0, abs=0.03)


def test_round_trip_and_constant_image():
    data = _head(np.random.default_rng(3), 12.0)
    params = robust_intensity_params(data)
    np.testing.assert_allclose(denormalize(normalize(data, params), params), data, rtol=1e-5, atol=1e-3)
    constant = np.full((4, 4, 4), 7.0, dtype=np.float32)
    assert robust_intensity_params(constant).scale == 1.0
    assert IntensityParams.from_dict(params.to_dict()) == params


def test_non_finite_values_are_refused():
    data = np.ones((4, 4, 4), dtype=np.float32)
    data[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="finite"):
        robust_intensity_params(data)
