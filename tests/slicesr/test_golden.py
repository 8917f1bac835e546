"""Bit-for-bit pins of seeded sampler batches, synthesis, interpolation and windowing (see golden_cases)."""

import numpy as np
import pytest

from tests.slicesr.golden_cases import CASES, GOLDEN, run_case


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
        if not np.array_equal(value, expected):
            diff = np.abs(value.astype(np.float64) - expected).max()
            pytest.fail(f"{key} differs from its pinned value (max |difference| {diff:.3g})")
