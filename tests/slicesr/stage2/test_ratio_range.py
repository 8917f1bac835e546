"""One stage II model for a range of spacing ratios (sr.ratio_range)."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from slicesr.cli import main
from slicesr.config import load_config
from slicesr.stage2.data import degraded_pair, degraded_pair_ratios, draw_ratios, ratio_matrix
from slicesr.stage2.train import Stage2Trainer
from tests.slicesr.test_inference import _lr_file


def test_pairs_at_any_ratio():
    hr = torch.rand(3, 1, 17, 4, 5)
    exact, _ = degraded_pair(hr, 4)
    inputs, target = degraded_pair_ratios(hr, [4.0, 2.5, 6.0])
    torch.testing.assert_close(inputs[0], exact[0])
    torch.testing.assert_close(target[0], hr[0], rtol=0, atol=0)
    torch.testing.assert_close(inputs[1, :, [0, 5, 10, 15]], hr[1, :, [0, 5, 10, 15]])  # acquired lines
    torch.testing.assert_close(inputs[1, :, 1], 0.6 * hr[1, :, 0] + 0.4 * (0.5 * hr[1, :, 2] + 0.5 * hr[1, :, 3]))
    _, covered = ratio_matrix(17, 6.0)  # centres 0, 6, 12: lines past 12 are extrapolated, nothing to learn
    assert covered == 13
    torch.testing.assert_close(target[2, :, 13:], inputs[2, :, 13:], rtol=0, atol=0)
    torch.testing.assert_close(target[2, :, :13], hr[2, :, :13], rtol=0, atol=0)


def test_a_share_of_the_ratio_draw_at_the_integers_of_the_range():
    uniform = draw_ratios(4000, (2.0, 6.0), 0.0, torch.Generator().manual_seed(0))
    assert uniform == (2 + 4 * torch.rand(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)).tolist()
    assert sum(r == int(r) for r in uniform) == 0  # as earlier models drew
    mixed = draw_ratios(4000, (2.0, 6.0), 0.5, torch.Generator().manual_seed(0))
    integers = [r for r in mixed if r == int(r)]
    assert 0.45 < len(integers) / len(mixed) < 0.55
    assert {int(r) for r in integers} == {2, 3, 4, 5, 6}
    assert min(integers.count(i) for i in range(2, 7)) > 0.15 * len(integers)  # each integer equally likely
    assert all(2 <= r <= 6 for r in mixed) and len(set(mixed) - set(integers)) > 1000  # the rest stays uniform
    assert set(draw_ratios(50, (2.5, 3.5), 1.0, torch.Generator().manual_seed(1))) == {3.0}
    with pytest.raises(ValueError, match="needs an integer in the ratio range"):
        draw_ratios(4, (2.2, 2.8), 0.5, torch.Generator())


def test_the_trainer_draws_integer_ratios_when_asked(sr_config):
    """sr.ratio_integer_share reaches the pairs (an integer ratio's pair is degraded_pair's at that K), the
    model's metadata and the run's identity (a run of another draw does not resume from it)."""
    trainer = Stage2Trainer(sr_config("sr.ratio_range=[2, 4]", "sr.ratio_integer_share=1", "run.name=ints",
                                      "model.name=throughplane2d", "sr.patch_size=[13,8,8]"))
    inputs, target = trainer.sampler.sample(6, torch.Generator().manual_seed(0))
    exact = {k: degraded_pair(target, k)[0] for k in (2, 3, 4)}
    for index in range(inputs.shape[0]):  # every pair is one of the integer ratios' exact pairs
        assert min(float((inputs[index] - exact[k][index]).abs().max()) for k in exact) < 1e-5
    assert trainer.metadata()["ratio_integer_share"] == 1.0
    assert trainer.identity()["sr"]["ratio_integer_share"] == 1.0
    plain = Stage2Trainer(sr_config("sr.ratio_range=[2, 4]", "run.name=uniform", "model.name=throughplane2d"))
    assert "ratio_integer_share" not in plain.metadata() and "ratio_integer_share" not in plain.identity()["sr"]


@pytest.mark.parametrize("overrides, message", [
    (["sr.ratio_integer_share=0.5"], "needs an sr.ratio_range holding an integer ratio"),
    (["sr.ratio_range=[2.2, 2.8]", "sr.ratio_integer_share=0.5"], "needs an sr.ratio_range holding an integer"),
    (["sr.ratio_range=[2, 4]", "sr.ratio_integer_share=1.5"], r"sr.ratio_integer_share must be in \[0, 1\]"),
    (["sr.ratio_range=[1, 4]"], "1 < low <= high"),
    (["sr.ratio_range=[2, 9]"], "must span the largest ratio"),
    (["sr.ratio_range=[2, 4]", "sr.loss_slices=missing"], "sr.loss_slices: missing"),
    (["sr.ratio_range=[2.2, 2.8]", "sr.validation=lr_holdout"], "needs an integer ratio in sr.ratio_range"),
])
def test_bad_ratio_ranges(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config("configs/debug/stage2.yaml", overrides)


@pytest.mark.parametrize("k, ratio_range, expected", [(4, [], [4]), (4, [2, 6], [2, 3, 4, 5, 6]), (4, [2, 2], [2]),
                                                      (4, [2.5, 3.5], [3]), (2, [4.5, 6], [5, 6])])
def test_the_holdout_runs_the_model_at_the_ratios_it_was_trained_for(k, ratio_range, expected):
    # a model run at a ratio outside its range stays near linear whatever it learned (the hold-out would
    # keep the untrained model as best/); at one ratio of its range, best/ would suit that ratio alone
    config = load_config("configs/debug/stage2.yaml", [f"sr.k={k}", f"sr.ratio_range={ratio_range}",
                                                      "sr.validation=lr_holdout", "sr.patch_size=[9,8,8]"])
    assert config.sr.holdout_ratios() == expected


def test_one_model_for_a_range_of_ratios(sr_config, tmp_path, capsys):
    trainer = Stage2Trainer(sr_config("sr.ratio_range=[2, 5]", "run.name=range", "model.name=throughplane2d"))
    inputs, target = trainer.sampler.sample(8, torch.Generator().manual_seed(0))
    exact, _ = degraded_pair(target, 4)
    assert (inputs - exact).abs().amax(dim=(1, 3, 4)).max() > 1e-3  # not all at the ratio K
    trainer.fit()
    best = trainer.best_dir
    metadata = json.loads((best / "metadata.json").read_text())
    assert metadata["ratio_range"] == [2.0, 5.0]
    path, data, affine = _lr_file(tmp_path, "oblique", 2, n=5)  # 4 mm slices
    out = tmp_path / "sr.nii.gz"
    assert main(["infer", path, "--output", str(out), "--model", str(best), "--spacing", "1.6"]) == 0  # ratio 2.5
    image = nib.load(out)
    assert image.shape[2] == 11
    np.testing.assert_array_equal(np.asarray(image.dataobj)[..., [0, 5, 10]], data[..., [0, 2, 4]])
    assert main(["infer", path, "--output", str(out), "--model", str(best), "--k", "3"]) == 0
    capsys.readouterr()
    assert main(["infer", path, "--output", str(tmp_path / "x.nii.gz"), "--model", str(best), "--k", "6"]) == 2
    assert "trained for spacing ratios 2 to 5" in capsys.readouterr().err
    # refused before any work, naming the file (a usage error: exit 2)
    assert main(["infer", path, "--output", str(tmp_path / "x.nii.gz"), "--model", str(best), "--spacing", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "trained for spacing ratios 2 to 5" in err and path in err
    assert not (tmp_path / "x.nii.gz").exists()
    for options in (["--tta"], ["--uncertainty"], ["--adapt-steps", "1"]):
        assert main(["infer", path, "--output", str(tmp_path / "x.nii.gz"), "--model", str(best), "--spacing", "1.6",
                     *options]) == 2
        err = capsys.readouterr().err
        assert "divides the input's by an integer" in err and path in err and "ratio of 2.5" in err
    assert main(["infer", path, "--output", str(tmp_path / "x.nii.gz"), "--model", str(best)]) == 2  # no K of its own


def test_a_model_for_thick_slices(sr_config, tmp_path):
    """Pairs degraded with a box profile (acquired lines are averages over the thickness); the model's
    metadata says so, and inference then copies nothing back."""
    from slicesr.store import SliceStore

    config = sr_config("sr.slice_profile=box", "sr.slice_thickness=1e9", "run.name=thick")  # wider than a patch
    trainer = Stage2Trainer(config)
    inputs, target = trainer.sampler.sample(2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(inputs[:, :, 0], target.mean(dim=2))  # every line is the patch's mean
    spacing = SliceStore.open(config.data.store).records()
    assert trainer.sampler.line_spacing == {s: r.spacing_mm[0] for s, r in spacing.items() if s in trainer.shard_ids}
    trainer = Stage2Trainer(sr_config("sr.slice_profile=gaussian", "sr.slice_thickness=2", "run.name=gauss"))
    trainer.fit()
    metadata = json.loads((trainer.best_dir / "metadata.json").read_text())
    assert metadata["slice_profile"] == "gaussian" and metadata["slice_thickness_mm"] == 2.0
    path, data, _ = _lr_file(tmp_path, "ras", 2, n=5)
    assert main(["infer", path, "--output", str(tmp_path / "o.nii.gz"), "--model", str(trainer.best_dir)]) == 0
    out = np.asarray(nib.load(tmp_path / "o.nii.gz").dataobj)
    assert not np.array_equal(out[..., ::4], data)  # not copied back
    with pytest.raises(ValueError, match="sr.slice_thickness"):
        load_config("configs/debug/stage2.yaml", ["sr.slice_profile=box", "sr.slice_thickness=-1"])
    with pytest.raises(ValueError, match="sr.validation: lr_holdout needs the point profile"):
        load_config("configs/debug/stage2.yaml", ["sr.slice_profile=box", "sr.slice_thickness=2",
                                                  "sr.validation=lr_holdout"])


def test_thickness_from_the_scans_bids_sidecars(sr_config, tmp_path):
    """sr.slice_thickness 0 with a thick profile: the thickness the LR scans' sidecars gave at conversion,
    carried through synthesis; recorded in the model's metadata with where it came from."""
    from preprocessing.to_zarr import convert
    from slicesr.models.vae_gan import VaeGan, VaeGanSize
    from slicesr.stage1.synthesis import synthesize_store
    from slicesr.store import SliceStore
    from tests.conftest import write_synth

    paths = write_synth(tmp_path / "lr_sidecars", 4, shape=(22, 20, 5), seed=3)
    for path in paths:
        Path(path.replace(".nii.gz", ".json")).write_text(json.dumps({"SliceThickness": 3.0}))
    convert([str(tmp_path / "lr_sidecars")], str(tmp_path / "lr_sidecars.zarr"), workers=0, progress=False)
    torch.manual_seed(0)
    vae = VaeGan(VaeGanSize(image_size=16, channels=4, max_channels=8, num_blocks=2, latent_dim=8, disc_channels=4))
    synthesize_store(vae, SliceStore.open(str(tmp_path / "lr_sidecars.zarr")),
                     SliceStore.create(str(tmp_path / "hr_sidecars.zarr")), 4, progress=False)
    trainer = Stage2Trainer(sr_config("sr.slice_profile=box", "run.name=sidecar",
                                      store=str(tmp_path / "hr_sidecars.zarr")))
    assert trainer.degradation.thickness_mm == 3.0
    metadata = trainer.metadata()
    assert metadata["slice_thickness_mm"] == 3.0 and "sidecar" in metadata["slice_thickness_source"]
    # the fixture's scans have no sidecar: a clear error instead of a guess
    with pytest.raises(ValueError, match="no SliceThickness sidecar"):
        Stage2Trainer(sr_config("sr.slice_profile=box", "run.name=nosidecar"))


def test_infer_logs_the_sidecar_beside_the_models_thickness(sr_config, tmp_path, caplog):
    trainer = Stage2Trainer(sr_config("sr.slice_profile=box", "sr.slice_thickness=2", "run.name=box2",
                                      "train.max_steps=1"))
    trainer.fit()
    path, _, _ = _lr_file(tmp_path, "ras", 2, n=5)
    sidecar = Path(path.replace(".nii.gz", ".json"))
    sidecar.write_text(json.dumps({"SliceThickness": 5, "SpacingBetweenSlices": 5}))
    with caplog.at_level("INFO"):
        assert main(["infer", path, "--output", str(tmp_path / "o.nii.gz"), "--model", str(trainer.best_dir)]) == 0
    assert "slice thickness 5 mm" in caplog.text and "trained for box slices of 2 mm" in caplog.text
    assert "its slices are 5 mm thick" in caplog.text  # a warning: not the thickness it learnt
    sidecar.write_text("{")
    assert main(["infer", path, "--output", str(tmp_path / "p.nii.gz"), "--model", str(trainer.best_dir)]) == 1
    assert not (tmp_path / "p.nii.gz").exists()
