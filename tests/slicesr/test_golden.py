"""Pins of seeded sampler batches, synthesis, interpolation and windowing: bit for bit, the outputs decoded by a
network to float32 rounding (see golden_cases)."""

import numpy as np
import pytest

from tests.slicesr.golden_cases import CASES, DECODED_BY_A_NETWORK, DECODED_TOLERANCE, GOLDEN, run_case


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as stored:
        return {key: stored[key] for key in stored.files}


@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_equal_the_pinned_ones_bit_for_bit(case, golden, tmp_path):
    outputs = run_case(case, tmp_path)
    assert outputs, case
    for key, value in outputs.items():
        assert key in golden, f"{key} is not pinned in {GOLDEN.name}"
        expected = golden[key]
        assert value.dtype == expected.dtype and value.shape == expected.shape, key
        if np.array_equal(value, expected):
            continue
        diff = np.abs(value.astype(np.float64) - expected).max()
        if key in DECODED_BY_A_NETWORK and np.allclose(value, expected, rtol=DECODED_TOLERANCE, atol=DECODED_TOLERANCE):
            continue  # float32 rounding of another CPU's convolution kernels (golden_cases.DECODED_BY_A_NETWORK)
        pytest.fail(f"{key} differs from its pinned value (max |difference| {diff:.3g})")
