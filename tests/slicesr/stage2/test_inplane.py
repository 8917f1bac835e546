import json

import numpy as np
import pytest
import torch

from preprocessing.to_zarr import convert
from slicesr.errors import StoreError
from slicesr.stage2.inplane import InplanePairSampler, inplane_scale
from slicesr.stage2.train import Stage2Trainer, load_generator, method_label
from slicesr.store import SliceStore
from tests.conftest import write_synth

ROW_STEP, COL_STEP, SLICE_STEP = 0.001, 0.01, 0.1


def ramp_store(path, spacing_mm, shape=(6, 40, 40)) -> SliceStore:
    """One scan whose value is a known ramp along each axis: a pair's geometry can be read off its values."""
    s, r, c = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    store = SliceStore.create(str(path))
    store.write_scan("ramp", 0.2 + SLICE_STEP * s + ROW_STEP * r + COL_STEP * c,
                     {"spacing_mm": list(spacing_mm), "affine": np.diag([*spacing_mm, 1.0]).tolist()})
    return store


def steps(t: torch.Tensor, dim: int) -> set[float]:
    return {round(float(v), 5) for v in torch.diff(t, dim=dim).flatten()}


def test_inplane_scale_resamples_only_finer_axes():
    assert inplane_scale((4.0, 1.0, 1.0), 4) == (1.0, 1.0)
    assert inplane_scale((6.0, 0.3125, 0.3125), 4) == pytest.approx((0.3125 / 1.5, 0.3125 / 1.5))
    assert inplane_scale((4.0, 1.5, 0.5), 4) == (1.0, 0.5)  # coarser rows stay as they are
    assert inplane_scale((4.0, 0.99, 1.0), 4) == (1.0, 1.0)  # within the 2% tolerance


def test_planes_are_in_plane_lines_degraded_like_the_slice_axis(tmp_path):
    store = ramp_store(tmp_path / "lr.zarr", (4.0, 1.0, 1.0))
    sampler = InplanePairSampler(store, ["ramp"], (9, 12, 12), 4, planes=True)
    inputs, target = sampler.sample(2, torch.Generator().manual_seed(0))
    assert inputs.shape == target.shape == (2 * 24, 1, 9, 12)
    # T keeps lines 0, 4, 8 of the degraded axis; the input is linear between them
    torch.testing.assert_close(inputs[:, :, ::4], target[:, :, ::4], rtol=0, atol=0)
    torch.testing.assert_close(inputs[:, :, 2], 0.5 * (target[:, :, 0] + target[:, :, 4]))
    # every plane lies in one LR slice (no step of the slice ramp), along rows or cols, both flips
    assert steps(target, 2) | steps(target, 3) <= {ROW_STEP, -ROW_STEP, COL_STEP, -COL_STEP}
    along = {round(float(p[0, 1, 0] - p[0, 0, 0]), 5) for p in target}
    assert along == {ROW_STEP, -ROW_STEP, COL_STEP, -COL_STEP}  # both in-plane axes degraded, both flips


def test_finer_in_plane_axes_are_resampled_to_the_target_spacing(tmp_path):
    # 0.5 mm in-plane, 4 mm slices, K = 4: the target is 1 mm, so every pixel of a pair spans two stored ones
    store = ramp_store(tmp_path / "lr.zarr", (4.0, 0.5, 0.5), shape=(6, 60, 60))
    sampler = InplanePairSampler(store, ["ramp"], (9, 12, 12), 4, planes=True)
    _, target = sampler.sample(1, torch.Generator().manual_seed(1))
    interior = target[:, :, 1:-1, 1:-1]  # the antialiasing filter is truncated at a read window's border
    # along the degraded axis every step spans two stored pixels; along the other the scan's own spacing
    assert steps(interior, 2) == {2 * ROW_STEP, -2 * ROW_STEP, 2 * COL_STEP, -2 * COL_STEP}
    assert steps(interior, 3) == {ROW_STEP, -ROW_STEP, COL_STEP, -COL_STEP}


def test_volumes_keep_the_lr_slices_on_their_last_axis(tmp_path):
    store = ramp_store(tmp_path / "lr.zarr", (4.0, 1.0, 1.0))
    sampler = InplanePairSampler(store, ["ramp"], (9, 12, 8), 4)
    inputs, target = sampler.sample(3, torch.Generator().manual_seed(2))
    assert inputs.shape == target.shape == (3, 1, 9, 12, 8)
    torch.testing.assert_close(inputs[:, :, ::4], target[:, :, ::4], rtol=0, atol=0)
    assert steps(target[..., :6], 4) <= {SLICE_STEP, -SLICE_STEP}  # 6 LR slices, zero-padded to 8
    assert float(target[..., 6:].abs().max()) == 0.0
    assert steps(target[..., :6], 2) | steps(target[..., :6], 3) <= {ROW_STEP, -ROW_STEP, COL_STEP, -COL_STEP}


def test_sampling_is_reproducible_from_the_generator(tmp_path):
    store = ramp_store(tmp_path / "lr.zarr", (4.0, 1.0, 1.0))
    sampler = InplanePairSampler(store, ["ramp"], (9, 12, 12), 4, planes=True)
    first = sampler.sample(1, torch.Generator().manual_seed(5))
    again = sampler.sample(1, torch.Generator().manual_seed(5))
    torch.testing.assert_close(first, again, rtol=0, atol=0)


@pytest.fixture
def lr_store(tmp_path):
    write_synth(tmp_path / "lr_nifti", 4, shape=(22, 20, 5), seed=3, prefix="lr")
    convert([str(tmp_path / "lr_nifti")], str(tmp_path / "lr_only.zarr"), workers=0, progress=False)
    return str(tmp_path / "lr_only.zarr")


@pytest.mark.parametrize("generator", ["throughplane2d", "deepresolve"])
def test_inplane_training_from_lr_scans_alone(sr_config, lr_store, generator):
    trainer = Stage2Trainer(sr_config(f"model.name={generator}", "sr.supervision=inplane", "run.name=inplane",
                                      "sr.validation=lr_holdout", "sr.holdout_crop=[16,16]", store=lr_store))
    inputs, _ = trainer.training_source().sample(2, torch.Generator().manual_seed(0))
    assert inputs.dim() == (4 if generator == "throughplane2d" else 5)
    result = trainer.fit()
    assert np.isfinite(result["best_val_holdout_l1"])
    model, config, metadata = load_generator(trainer.best_dir)
    assert metadata["method"] == method_label(generator, "inplane") and metadata["supervision"] == "inplane"
    assert metadata["inplane"] == {"lr_store": lr_store, "fraction": 1.0}
    with torch.no_grad():  # the model directory infers volumes like any other
        assert model(torch.rand(1, 1, 9, 12, 12)).shape == (1, 1, 9, 12, 12)


def test_both_sources_draw_each_and_find_the_lr_store(sr_config, tmp_path):
    trainer = Stage2Trainer(sr_config("sr.supervision=both", "sr.inplane_fraction=0.5", "run.name=both",
                                      "model.name=throughplane2d"))
    assert trainer.lr_store_url == str(tmp_path / "lr.zarr")  # named by the synthetic volumes' records
    kinds = [trainer.training_source() is trainer.inplane for _ in range(40)]
    assert 5 < sum(kinds) < 35
    trainer.fit()
    metadata = json.loads((trainer.best_dir / "metadata.json").read_text())
    assert metadata["method"] == "Proposed with through-plane 2D + in-plane pairs"
    assert metadata["inplane"]["fraction"] == 0.5


def test_a_moved_lr_store_is_found_through_data_lr_store(sr_config, tmp_path):
    # the synthetic volumes' records name the LR store where it was when they were made; moved, data.lr_store
    # names it for the in-plane pairs and the LR hold-out alike
    import shutil

    moved = tmp_path / "moved" / "lr.zarr"
    moved.parent.mkdir()
    shutil.move(str(tmp_path / "lr.zarr"), moved)
    settings = ("sr.supervision=both", "model.name=throughplane2d", "sr.validation=lr_holdout",
                "sr.holdout_crop=[16,16]", "run.name=moved")
    with pytest.raises(StoreError, match="lr.zarr"):
        Stage2Trainer(sr_config(*settings))
    trainer = Stage2Trainer(sr_config(*settings, f"data.lr_store={moved}"))
    assert trainer.lr_store_url == str(moved)
    assert trainer.fit()["step"] == trainer.config.train.max_steps


def test_sources_are_checked_against_the_store(sr_config, lr_store, real_hr_store):
    with pytest.raises(ValueError, match="holds synthetic HR volumes but sr.supervision is inplane"):
        Stage2Trainer(sr_config("sr.supervision=inplane"))
    with pytest.raises(ValueError, match="sr.supervision=inplane"):
        Stage2Trainer(sr_config("sr.supervision=both", store=real_hr_store))
    with pytest.raises(ValueError, match="lacks the LR scans"):
        Stage2Trainer(sr_config("sr.supervision=both", f"data.lr_store={lr_store}"))
    with pytest.raises(ValueError, match="sr.inplane_fraction"):
        sr_config("sr.supervision=both", "sr.inplane_fraction=1")
