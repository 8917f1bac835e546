"""Random windows of stored scans (slicesr.sampling): the in-memory cache of decompressed scans."""

import numpy as np
import pytest
import torch

from slicesr.config import load_config
from slicesr.sampling import WindowSampler
from slicesr.stage2.inplane import InplanePairSampler
from slicesr.store import SliceStore

SHAPES = {"a": (6, 20, 20), "b": (7, 20, 24), "c": (5, 16, 20)}


@pytest.fixture
def store(tmp_path) -> SliceStore:
    store = SliceStore.create(str(tmp_path / "lr.zarr"))
    rng = np.random.default_rng(0)
    for scan_id, shape in SHAPES.items():
        store.write_scan(scan_id, rng.random(shape, dtype=np.float32),
                         {"spacing_mm": [4.0, 1.0, 1.0], "affine": np.diag([4.0, 1.0, 1.0, 1.0]).tolist()})
    return store


def draws(sampler: WindowSampler, n: int = 30) -> list[np.ndarray]:
    generator = torch.Generator().manual_seed(3)
    return [sampler.draw(sampler.pick_scans(1, generator)[0], generator) for _ in range(n)]


def test_cached_scans_give_the_same_windows(store):
    lazy = WindowSampler(store, list(SHAPES), (3, 8, 8))
    cached = WindowSampler(store, list(SHAPES), (3, 8, 8), cache_mb=1.0)
    for window, same in zip(draws(lazy), draws(cached)):
        np.testing.assert_array_equal(window, same)
    assert all(isinstance(array, np.ndarray) for array in cached.arrays.values()) and len(cached.arrays) == 3
    assert not any(isinstance(array, np.ndarray) for array in lazy.arrays.values())


def test_the_cache_holds_scans_until_its_budget_is_spent(store):
    one_scan = 6 * 20 * 20 * 4  # bytes of scan a: the budget holds it and not the next one
    sampler = WindowSampler(store, list(SHAPES), (3, 8, 8), cache_mb=(one_scan + 100) / 2**20)
    sampler.array("a")
    sampler.array("b")
    sampler.array("c")
    assert isinstance(sampler.arrays["a"], np.ndarray)
    assert not isinstance(sampler.arrays["b"], np.ndarray) and not isinstance(sampler.arrays["c"], np.ndarray)
    np.testing.assert_array_equal(np.asarray(sampler.array("b")[...]), np.asarray(store.slices("b")[...]))


def test_inplane_pairs_are_the_same_with_the_cache(store):
    pairs = []
    for cache_mb in (0.0, 1.0):
        sampler = InplanePairSampler(store, list(SHAPES), (9, 12, 12), 4, planes=True, cache_mb=cache_mb)
        pairs.append(sampler.sample(2, torch.Generator().manual_seed(5)))
    for lazy, cached in zip(*pairs):
        torch.testing.assert_close(lazy, cached, rtol=0, atol=0)


def test_a_negative_cache_is_refused():
    with pytest.raises(ValueError, match="data.cache_mb must be >= 0"):
        load_config("configs/debug/stage2.yaml", ["data.cache_mb=-1"])
