"""The shared loop's shard plan: split, disjoint shards of usable scans, clear refusals."""

import numpy as np
import pytest
import torch

from preprocessing.to_zarr import convert
from slicesr.config import load_config
from slicesr.store import SliceStore
from slicesr.training import plan_shards
from tests.conftest import write_synth


@pytest.fixture
def mixed_store(tmp_path):
    """Five scans of 6 slices and three of 2 slices (too short for a stage I triplet)."""
    write_synth(tmp_path / "in", 5, shape=(20, 18, 6), seed=1, prefix="long")
    write_synth(tmp_path / "in", 3, shape=(20, 18, 2), seed=2, prefix="short")
    report = convert([str(tmp_path / "in")], str(tmp_path / "s.zarr"), workers=0, progress=False)
    assert len(report.stored) == 8, report.failures
    return SliceStore.open(str(tmp_path / "s.zarr"))


def test_shards_hold_only_usable_scans_and_are_disjoint(mixed_store):
    config = load_config("configs/debug/stage1.yaml", ["train.val_fraction=0.25"])
    plan = plan_shards(mixed_store, config, 2, min_slices=3)
    assert len(plan.train_ids) == 6 and len(plan.val_ids) == 2  # the split is over every scan
    shards = [set(shard) for shard in plan.shards]
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    assert all(scan.startswith("long") for shard in shards for scan in shard)
    assert shards[0] | shards[1] == {s for s in plan.train_ids if s.startswith("long")}
    assert set(plan.usable_val_ids) == {s for s in plan.val_ids if s.startswith("long")}
    # one worker takes every usable training scan, in the split's order (what an in-process run samples)
    assert plan_shards(mixed_store, config, 1, min_slices=3).shards == [
        [s for s in plan.train_ids if s.startswith("long")]]


def test_too_few_usable_scans_for_the_workers(mixed_store, tmp_path):
    config = load_config("configs/debug/stage1.yaml", ["train.val_fraction=0.25"])
    usable = len([s for s in plan_shards(mixed_store, config, 1, 3).shards[0]])
    with pytest.raises(ValueError, match=f"has {usable} training scans with at least 3 slices \\(of 6\\) for "
                                         f"{usable + 1} workers"):
        plan_shards(mixed_store, config, usable + 1, min_slices=3)
    with pytest.raises(ValueError, match="holds no stored scans"):
        plan_shards(SliceStore.create(str(tmp_path / "empty.zarr")), config, 1, min_slices=3)


def test_devices_resolve_or_refuse():
    from slicesr.training import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no CUDA device")
def test_cli_device_cuda_without_a_gpu_is_a_usage_error(tmp_path, capsys):
    from slicesr.cli import main
    from tests.conftest import write_nifti

    path = write_nifti(tmp_path / "scan.nii.gz", np.ones((6, 6, 4), np.float32), np.diag([1.0, 1.0, 4.0, 1.0]))
    assert main(["infer", path, "--output", str(tmp_path / "o.nii.gz"), "--model", "linear", "--k", "2",
                 "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert main(["train-sr", "--config", "configs/debug/stage2.yaml", "--device", "cuda",
                 "--set", f"run.storage_path={tmp_path}"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_learning_rate_warms_up_holds_and_decays():
    from slicesr.config import TrainConfig
    from slicesr.training import learning_rate

    constant = TrainConfig(max_steps=10, lr=1e-3)
    assert [learning_rate(constant, s) for s in range(10)] == [1e-3] * 10
    both = TrainConfig(max_steps=10, lr=1e-3, lr_warmup_steps=4, lr_decay_steps=4)
    rates = [learning_rate(both, s) for s in range(10)]
    np.testing.assert_allclose(rates, np.array([1, 2, 3, 4, 4, 4, 4, 3, 2, 1]) / 4 * 1e-3)
    assert min(rates) > 0  # neither the first nor the last step is wasted at a zero rate


def test_a_run_shorter_than_its_schedule_still_trains():
    from slicesr.config import TrainConfig
    from slicesr.training import learning_rate

    # a short demo run (make demo DEMO_SR_STEPS=4) of a recipe with a 100-step warm-up and a decay
    short = TrainConfig(max_steps=4, lr=1e-3, lr_warmup_steps=100, lr_decay_steps=8)
    rates = [learning_rate(short, s) for s in range(4)]
    np.testing.assert_allclose(rates, [1e-3 * (s + 1) / 100 * (4 - s) / 8 for s in range(4)])


@pytest.mark.parametrize("key", ["train.lr_warmup_steps", "train.lr_decay_steps"])
def test_negative_schedules_are_refused(key):
    with pytest.raises(ValueError, match=key):
        load_config("configs/debug/stage2.yaml", [f"{key}=-1"])
