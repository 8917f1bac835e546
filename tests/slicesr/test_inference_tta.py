"""Test-time augmentation and uncertainty maps (`slicesr infer --tta / --uncertainty`)."""

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from slicesr.cli import main
from slicesr.cli_common import TTA_FLIP_NAMES
from slicesr.config import load_config
from slicesr.geometry import to_slice_first, voxel_spacing
from slicesr.inference import (
    FLIPS,
    TTA_FLIPS,
    UNCERTAINTY_SMOOTHING_MM,
    Method,
    flip,
    generator_upsample,
    load_method,
    predict,
    rotated_mean,
    rotated_predictions,
    uncertainty_path,
)
from slicesr.intensity import denormalize, normalize, robust_intensity_params
from slicesr.interpolation import InPlaneRotation, linear_slices
from slicesr.modeldir import write_model_dir
from slicesr.models.generators import ThroughPlane2D, build_generator
from slicesr.nifti import load_volume
from slicesr.stage2.train import generator_size
from tests.slicesr.test_inference import _lr_file


def model_dir(path, name: str, trained: bool = True, *overrides: str) -> str:
    """A generator model directory; `trained`: a random (not zero) last layer, so flips change its output."""
    config = load_config("configs/debug/stage2.yaml", [f"model.name={name}", "sr.k=3", "sr.patch_size=[7,12,12]",
                                                       *overrides])
    torch.manual_seed(1)
    model = build_generator(generator_size(config))
    if trained:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
    write_model_dir(path, model.state_dict(), config, {"stage": "sr", "k": 3, "method": f"test {name}"})
    return str(path)


def test_orientations_average_to_the_whole_through_plane_network():
    torch.manual_seed(0)
    model = ThroughPlane2D(3, 4)
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    x = torch.rand(2, 1, 7, 6, 5)
    with torch.no_grad():
        both = 0.5 * (model(x, orientation=0) + model(x, orientation=1))
        torch.testing.assert_close(both, model(x))
    with pytest.raises(ValueError, match="orientation"):
        model(x, orientation=2)


@pytest.mark.parametrize("name, overrides", [("throughplane2d", ()), ("throughplane2d", ("model.subpixel=true",)),
                                             ("deepresolve", ())])
def test_augmented_mean_is_flip_equivariant(tmp_path, name, overrides):
    # a sub-pixel network reads the acquired lines 0, K, 2K, ...: a flip of the slice axis keeps them there
    method = load_method(model_dir(tmp_path / "sr", name, True, *overrides))
    slices = np.random.default_rng(0).random((4, 10, 9)).astype(np.float32)
    predictions = list(method.augmented(slices, 3))
    assert len(predictions) == 8  # through-plane 2D: 4 flips x 2 orientations (below)
    mean = np.mean(predictions, axis=0)
    assert np.std(predictions, axis=0).max() > 1e-4  # the flips do change a trained network's output
    for flips in FLIPS[1:]:
        flipped = np.mean(list(method.augmented(np.ascontiguousarray(flip(slices, flips)), 3)), axis=0)
        np.testing.assert_allclose(flip(flipped, flips), mean, atol=1e-5)


def test_through_plane_augmentation_leaves_out_only_repeated_predictions(tmp_path):
    # a flip of the axis across an orientation's planes only reorders them: its prediction again, so the
    # 8 predictions kept have the mean and SD of all 16 flip x orientation predictions
    method = load_method(model_dir(tmp_path / "sr", "throughplane2d"))
    slices = np.random.default_rng(1).random((4, 10, 9)).astype(np.float32)
    every = [flip(generator_upsample(method.model, np.ascontiguousarray(flip(slices, flips)), 3, method.window,
                                     method.overlap, False, orientation), flips)
             for flips in FLIPS for orientation in method.model.orientations]
    kept = list(method.augmented(slices, 3))
    assert len(every) == 16 and len(kept) == 8
    np.testing.assert_allclose(np.mean(kept, axis=0), np.mean(every, axis=0), atol=1e-6)
    np.testing.assert_allclose(np.std(kept, axis=0), np.std(every, axis=0), atol=1e-6)
    assert np.std(kept, axis=0).max() > 1e-4


@pytest.mark.parametrize("orientation, slice_axis", [("oblique", 0), ("lps", 2)])
def test_uncertainty_map_beside_the_output(tmp_path, orientation, slice_axis):
    path, data, affine = _lr_file(tmp_path, orientation, slice_axis, n=5)
    model = model_dir(tmp_path / "sr", "throughplane2d")
    out = tmp_path / "sr.nii.gz"
    assert main(["infer", path, "--output", str(out), "--model", model, "--uncertainty"]) == 0
    assert uncertainty_path(str(out)) == str(tmp_path / "sr_uncertainty.nii.gz")
    image, spread = nib.load(out), nib.load(tmp_path / "sr_uncertainty.nii.gz")
    assert spread.shape == image.shape and spread.get_data_dtype() == np.float32
    np.testing.assert_array_equal(spread.affine, image.affine)
    values = np.moveaxis(np.asarray(spread.dataobj), slice_axis, 0)
    assert np.all(values[::3] == 0) and np.all(values >= 0) and values[1::3].max() > 0
    # the SD of the augmented predictions, in the scan's intensity units, smoothed within each slice
    slices, _ = to_slice_first(data, affine, slice_axis)
    params = robust_intensity_params(slices)
    predictions = np.stack(list(load_method(model).augmented(normalize(slices, params), 3)))
    raw = predictions.std(axis=0) * params.scale
    # a Gaussian of UNCERTAINTY_SMOOTHING_MM millimetres: each in-plane axis in its own voxels (0.8 / 0.9 / 0.7 mm)
    in_plane_mm = np.delete(voxel_spacing(affine), slice_axis)
    assert len(set(in_plane_mm.round(3))) == 2  # not square: the two axes' sigmas differ
    expected = gaussian_filter(raw, (0, *(UNCERTAINTY_SMOOTHING_MM / in_plane_mm)), mode="nearest")
    np.testing.assert_allclose(values[1::3], expected[1::3], rtol=1e-3, atol=1e-3 * float(expected.max()))
    # without smoothing, the raw per-voxel SD
    volume = load_volume(path)
    unsmoothed = predict(volume, load_method(model), 3, slice_axis, uncertainty=True, uncertainty_smoothing_mm=0)
    values = np.moveaxis(unsmoothed.uncertainty, slice_axis, 0)
    np.testing.assert_allclose(values[1::3], raw[1::3], rtol=1e-3, atol=1e-3 * float(raw.max()))
    assert not np.allclose(raw[1::3], expected[1::3], rtol=1e-2)  # the smoothing is not a no-op here
    # --uncertainty's output is --tta's (the augmented mean), and --tta writes no map
    assert main(["infer", path, "--output", str(tmp_path / "tta.nii.gz"), "--model", model, "--tta"]) == 0
    np.testing.assert_allclose(np.asarray(nib.load(tmp_path / "tta.nii.gz").dataobj), np.asarray(image.dataobj))
    assert not (tmp_path / "tta_uncertainty.nii.gz").exists()


def test_an_earlier_runs_map_beside_a_new_output_is_named(tmp_path, caplog):
    path, _, _ = _lr_file(tmp_path, "ras", 2, n=5)
    model = model_dir(tmp_path / "sr", "throughplane2d")
    out = tmp_path / "sr.nii.gz"
    assert main(["infer", path, "--output", str(out), "--model", model, "--uncertainty"]) == 0
    assert "does not belong to it" not in caplog.text
    before = (tmp_path / "sr_uncertainty.nii.gz").read_bytes()
    assert main(["infer", path, "--output", str(out), "--model", model]) == 0  # no map this time
    assert "earlier run's uncertainty map lies beside this new output" in caplog.text
    assert (tmp_path / "sr_uncertainty.nii.gz").read_bytes() == before  # left as it was: nothing written is lost


def test_untrained_generator_has_no_uncertainty(tmp_path):
    path, _, _ = _lr_file(tmp_path, "ras", 2, n=4)
    model = model_dir(tmp_path / "sr", "deepresolve", trained=False)  # = linear interpolation under every flip
    assert main(["infer", path, "--output", str(tmp_path / "o.nii.gz"), "--model", model, "--uncertainty"]) == 0
    assert float(np.abs(nib.load(tmp_path / "o_uncertainty.nii.gz").get_fdata()).max()) < 1e-3


@pytest.mark.parametrize("option", ["--tta", "--uncertainty"])
def test_interpolation_refuses_augmentation(tmp_path, capsys, option):
    path, _, _ = _lr_file(tmp_path, "ras", 2, n=4)
    assert main(["infer", path, "--output", str(tmp_path / "o.nii.gz"), "--model", "linear", "--k", "2", option]) == 2
    assert "need a trained model" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()


@pytest.mark.parametrize("overrides", [(), ("model.subpixel=true",)])
def test_adaptation_fine_tunes_a_copy_per_scan(tmp_path, capsys, overrides):
    import hashlib

    path, _, _ = _lr_file(tmp_path, "oblique", 1, n=5)
    model = model_dir(tmp_path / "sr", "throughplane2d", True, *overrides)
    weights = tmp_path / "sr" / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert main(["infer", path, "--output", str(tmp_path / "plain.nii.gz"), "--model", model]) == 0
    capsys.readouterr()
    assert main(["infer", path, "--output", str(tmp_path / "adapted.nii.gz"), "--model", model,
                 "--adapt-steps", "3"]) == 0
    assert "adapted to each scan in 3 steps" in capsys.readouterr().out
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == digest  # the model on disk is unchanged
    plain, adapted = (nib.load(tmp_path / f"{name}.nii.gz") for name in ("plain", "adapted"))
    np.testing.assert_array_equal(plain.affine, adapted.affine)
    assert np.abs(plain.get_fdata() - adapted.get_fdata()).max() > 0  # a fine-tuned copy did the work
    method = load_method(model)
    before = {key: value.clone() for key, value in method.model.state_dict().items()}
    copy = method.adapted(np.random.default_rng(0).random((5, 10, 8)).astype(np.float32), (4.0, 0.5, 1.0), 3, 2)
    assert copy.model is not method.model
    for key, value in method.model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_adaptation_on_a_patch_of_its_own(tmp_path, capsys, monkeypatch):
    from slicesr.stage2.inplane import InplanePairSampler

    path, _, _ = _lr_file(tmp_path, "lps", 2, n=5)
    model = model_dir(tmp_path / "sr", "throughplane2d")  # trained on 7 x 12 x 12 patches
    patches = []
    from_scan = InplanePairSampler.from_scan.__func__

    def spy(cls, slices, spacing_mm, patch_size, *args, **kwargs):
        patches.append(tuple(patch_size))
        return from_scan(cls, slices, spacing_mm, patch_size, *args, **kwargs)

    monkeypatch.setattr(InplanePairSampler, "from_scan", classmethod(spy))
    outputs = {}
    for name, extra in (("own", []), ("short", ["--adapt-patch", "4,6,12"])):
        assert main(["infer", path, "--output", str(tmp_path / f"{name}.nii.gz"), "--model", model,
                     "--adapt-steps", "2", *extra]) == 0
        outputs[name] = np.asarray(nib.load(tmp_path / f"{name}.nii.gz").dataobj)
    assert patches == [(7, 12, 12), (4, 6, 12)]  # K + 1 = 4 lines: pairs start and end on kept lines
    assert np.abs(outputs["own"] - outputs["short"]).max() > 0
    capsys.readouterr()
    for extra, message in ((["--adapt-patch", "4,6,12"], "needs --adapt-steps"),
                           (["--adapt-steps", "2", "--adapt-patch", "3,6,12"], "at least K + 1 = 4 slices"),
                           (["--adapt-steps", "2", "--adapt-patch", "4,6"], "three positive whole numbers")):
        assert main(["infer", path, "--output", str(tmp_path / "bad.nii.gz"), "--model", model, *extra]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad.nii.gz").exists()


def test_a_thick_slice_model_adapts_on_its_own_slice_profile(tmp_path, monkeypatch):
    """The adaptation's pairs are degraded as the model's training pairs were (box of its thickness here), not
    with the point profile: a thick-slice model would otherwise learn to restore the wrong acquired lines."""
    from slicesr.inference import load_method
    from slicesr.stage2.inplane import InplanePairSampler

    config = load_config("configs/debug/stage2.yaml", ["model.name=throughplane2d", "sr.k=3", "sr.patch_size=[7,12,12]"])
    torch.manual_seed(1)
    write_model_dir(tmp_path / "thick", build_generator(generator_size(config)).state_dict(), config,
                    {"stage": "sr", "k": 3, "method": "thick", "slice_profile": "box", "slice_thickness_mm": 8.0})
    seen = []
    from_scan = InplanePairSampler.from_scan.__func__

    def spy(cls, *args, **kwargs):
        sampler = from_scan(cls, *args, **kwargs)
        seen.append(sampler.degradation)
        return sampler

    monkeypatch.setattr(InplanePairSampler, "from_scan", classmethod(spy))
    slices = np.random.default_rng(0).random((5, 12, 12)).astype(np.float32)
    for model in (str(tmp_path / "thick"), model_dir(tmp_path / "point", "throughplane2d")):
        load_method(model).adapted(slices, (12.0, 1.0, 1.0), 3, 1)
    assert [(d.profile, d.thickness_mm, d.k) for d in seen] == [("box", 8.0, 3), ("point", 0.0, 3)]
    hr = torch.rand(2, 1, 7, 12)
    thick, _ = seen[0].pair(hr, [4.0, 4.0], torch.Generator())
    point, _ = seen[1].pair(hr, [4.0, 4.0], torch.Generator())
    torch.testing.assert_close(point[:, :, ::3], hr[:, :, ::3])  # the point profile keeps the acquired lines ...
    assert (thick[:, :, 3] - hr[:, :, 3]).abs().max() > 0.05  # ... the box averages 2 lines about each


def test_only_generators_adapt(tmp_path, capsys):
    path, _, _ = _lr_file(tmp_path, "ras", 2, n=4)
    assert main(["infer", path, "--output", str(tmp_path / "o.nii.gz"), "--model", "linear", "--k", "2",
                 "--adapt-steps", "2"]) == 2
    assert "cannot be adapted" in capsys.readouterr().err
    assert main(["infer", path, "--output", str(tmp_path / "o.nii.gz"), "--model", model_dir(tmp_path / "sr", "dcsrn"),
                 "--adapt-steps", "-1"]) == 2


@pytest.mark.parametrize("orientation", [None, 0, 1])
def test_whole_planes_equal_the_network_on_the_volume(orientation):
    """Inference runs whole planes through a through-plane 2D generator, without windows: the same numbers
    as its forward on the whole volume (and as the windowed path, which any window cut must not change)."""
    from slicesr.inference import planes_on_grid, sliding_window_apply

    torch.manual_seed(0)
    model = ThroughPlane2D(4, 6).eval()
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    grid = np.random.default_rng(1).random((13, 20, 17)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(grid)[None, None], orientation=orientation)[0, 0].numpy()
    np.testing.assert_allclose(planes_on_grid(model, grid, orientation), expected, atol=1e-5)

    def run(part):
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(part))[None, None], orientation=orientation)[0, 0].numpy()

    windowed = sliding_window_apply(run, grid, (9, 12, 12), 0.25, margin=(4, 4, 4), align=(1, 1, 1))
    np.testing.assert_allclose(windowed, expected, atol=1e-5)


def test_bfloat16_planes_stay_close_to_float32(tmp_path):
    float32 = load_method(model_dir(tmp_path / "sr", "throughplane2d"))
    bfloat16 = load_method(str(tmp_path / "sr"), precision="bfloat16")
    slices = np.random.default_rng(0).random((4, 10, 9)).astype(np.float32)
    exact, fast = float32.upsample(slices, 3), bfloat16.upsample(slices, 3)
    residual = exact - load_method("linear").upsample(slices, 3)
    assert np.abs(residual).max() > 1e-3  # the network does change its input
    assert 0 < np.abs(fast - exact).max() < 0.05 * np.abs(residual).max()


def test_bfloat16_is_refused_for_3d_generators(tmp_path):
    with pytest.raises(ValueError, match="through-plane 2D"):
        load_method(model_dir(tmp_path / "sr", "deepresolve"), precision="bfloat16")
    with pytest.raises(ValueError, match="precision"):
        load_method(model_dir(tmp_path / "tp", "throughplane2d"), precision="float16")


def test_infer_precision_option(tmp_path):
    path, _, _ = _lr_file(tmp_path, "oblique", 0, n=5)
    tp2d = model_dir(tmp_path / "tp", "throughplane2d")
    assert main(["infer", path, "--output", str(tmp_path / "a.nii.gz"), "--model", tp2d]) == 0
    assert main(["infer", path, "--output", str(tmp_path / "b.nii.gz"), "--model", tp2d, "--precision", "bfloat16"]) == 0
    exact, fast = (np.asarray(nib.load(tmp_path / name).dataobj, dtype=np.float64) for name in ("a.nii.gz", "b.nii.gz"))
    assert not np.array_equal(exact, fast) and np.abs(fast - exact).max() < 0.05 * np.ptp(exact)
    assert main(["infer", path, "--output", str(tmp_path / "c.nii.gz"), "--model", model_dir(tmp_path / "dr", "deepresolve"),
                 "--precision", "bfloat16"]) == 2
    assert not (tmp_path / "c.nii.gz").exists()


def test_uncertainty_smoothing_must_not_be_negative(tmp_path):
    path, _, _ = _lr_file(tmp_path, "ras", 2, n=4)
    method = load_method(model_dir(tmp_path / "sr", "throughplane2d"))
    with pytest.raises(ValueError, match="uncertainty_smoothing_mm"):
        predict(load_volume(path), method, 3, 2, uncertainty=True, uncertainty_smoothing_mm=-1)


class _LinearPlus(Method):
    """Linear interpolation plus `departure` at the missing slices: what a method adds is known exactly."""

    label = "linear plus"

    def __init__(self, departure: float):
        self.departure = departure

    def upsample(self, slices, k, progress=False):
        out = linear_slices(slices, k)
        missing = np.ones(out.shape[0], bool)
        missing[::k] = False
        out[missing] += self.departure
        return out


def test_rotated_predictions_resample_only_what_the_method_adds():
    slices = np.random.default_rng(2).random((4, 14, 11)).astype(np.float32)  # sharp: a resampled copy would differ
    linear = linear_slices(slices, 3)
    rotation = InPlaneRotation((14, 11), (0.8, 0.9), 45)
    for sample in rotated_predictions(_LinearPlus(0.0), slices, 3, rotation):
        np.testing.assert_allclose(sample, linear, atol=1e-5)  # the acquired content is not resampled
    samples = list(rotated_predictions(_LinearPlus(0.25), slices, 3, rotation))
    assert len(samples) == 8  # the flips, on the rotated slices
    for sample in samples:
        np.testing.assert_allclose(sample[::3], slices, atol=1e-5)
        np.testing.assert_allclose(np.delete(sample - linear, np.s_[::3], axis=0), 0.25, atol=1e-4)


@pytest.mark.parametrize("orientation, slice_axis", [("oblique", 0), ("lps", 2)])
def test_tta_angles_add_rotated_augmentations(tmp_path, orientation, slice_axis):
    path, data, affine = _lr_file(tmp_path, orientation, slice_axis, n=5)
    model = model_dir(tmp_path / "sr", "throughplane2d")
    method = load_method(model)
    volume = load_volume(path)
    plain = predict(volume, method, 3, slice_axis, tta=True)
    rotated = predict(volume, method, 3, slice_axis, uncertainty=True, tta_angles=(45,))
    assert rotated.data.shape == plain.data.shape
    np.testing.assert_array_equal(rotated.affine, plain.affine)
    # the mean of the 8 flips and of the 8 flips of the slices turned by 45 degrees in millimetres
    slices, _ = to_slice_first(data, affine, slice_axis)
    params = robust_intensity_params(slices)
    normalised = normalize(slices, params)
    spacing = np.delete(np.array([0.8, 0.9, 0.7]), slice_axis)  # _lr_file's in-plane voxel sizes
    rotation = InPlaneRotation(normalised.shape[1:], tuple(spacing), 45)
    samples = [*method.augmented(normalised, 3), *rotated_predictions(method, normalised, 3, rotation)]
    assert len(samples) == 16
    expected = np.clip(denormalize(np.mean(samples, axis=0), params), slices.min(), slices.max())
    got = np.moveaxis(rotated.data, slice_axis, 0)
    np.testing.assert_allclose(got[1::3], expected[1::3], rtol=1e-4, atol=1e-4 * float(np.ptp(slices)))
    np.testing.assert_array_equal(got[::3], slices)  # acquired slices bit-exact
    assert np.abs(got - np.moveaxis(plain.data, slice_axis, 0)).max() > 1e-3  # the rotations changed the mean
    spread = np.moveaxis(rotated.uncertainty, slice_axis, 0)
    assert np.all(spread[::3] == 0) and spread[1::3].max() > 0
    # without a map the turned predictions' mean departure is turned back once: the same mean
    fast = predict(volume, method, 3, slice_axis, tta_angles=(45,))
    assert fast.uncertainty is None
    np.testing.assert_allclose(fast.data, rotated.data, rtol=1e-5, atol=1e-5 * float(np.ptp(slices)))


@pytest.mark.parametrize("subpixel_k", [0, 3])
def test_planes_on_grid_runs_only_where_the_support_needs_it(subpixel_k, monkeypatch):
    """With a support mask each batch of planes runs on the stretch of its width that its needed positions
    and the network's reach cover: the same values there, the input elsewhere."""
    from slicesr.inference import planes_on_grid

    torch.manual_seed(0)
    model = ThroughPlane2D(3, 6, subpixel_k).eval()
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    grid = np.random.default_rng(4).random((13, 30, 26)).astype(np.float32)
    support = np.zeros((30, 26), bool)
    support[8:20, 5:14] = True
    support[22, 20] = True
    monkeypatch.setattr("slicesr.inference.PLANE_WIDTH_STEP", 1)  # stretches not widened to multiples of 32
    for orientation in (None, 0, 1):
        whole = planes_on_grid(model, grid, orientation)
        part = planes_on_grid(model, grid, orientation, support=support)
        np.testing.assert_allclose(part[:, support], whole[:, support], atol=1e-5)
        # beyond the reach of the needed rows and columns (planes of one batch share a stretch): the input
        far = np.s_[:, :4, 24:]
        assert np.array_equal(part[far], grid[far])
        assert not np.allclose(whole[far], grid[far])
    with pytest.raises(ValueError, match="support"):
        planes_on_grid(model, grid, support=support.T)


def test_rotated_mean_is_the_same_with_the_support(tmp_path, monkeypatch):
    """The rotated copies run only where the rotation back reads: the same mean as over the whole canvas."""
    slices = np.random.default_rng(5).random((4, 90, 81)).astype(np.float32)
    rotation = InPlaneRotation((90, 81), (0.9, 1.0), 45)
    assert not rotation.canvas_support().all()  # the canvas's corners are left out here
    method = load_method(model_dir(tmp_path / "sr", "throughplane2d", True, "model.num_layers=3"))
    mean, count = rotated_mean(method, slices, 3, rotation)
    monkeypatch.setattr(InPlaneRotation, "canvas_support", lambda self, margin=16.0: np.ones(self.canvas_shape, bool))
    whole, _ = rotated_mean(method, slices, 3, rotation)
    assert count == 8
    np.testing.assert_allclose(mean, whole, atol=1e-5)


def test_rotated_mean_is_the_mean_of_the_rotated_predictions():
    slices = np.random.default_rng(3).random((5, 13, 10)).astype(np.float32)
    rotation = InPlaneRotation((13, 10), (0.7, 1.1), 30)
    method = _LinearPlus(0.25)
    mean, count = rotated_mean(method, slices, 2, rotation)
    samples = list(rotated_predictions(method, slices, 2, rotation))
    assert count == len(samples) == 8
    np.testing.assert_allclose(mean, np.mean(samples, axis=0), atol=1e-5)


@pytest.mark.parametrize("name, overrides, count", [("throughplane2d", (), 4),
                                                    ("throughplane2d", ("model.subpixel=true",), 4),
                                                    ("deepresolve", (), 2)])
def test_slice_flips_are_the_augmentations_without_an_in_plane_flip(tmp_path, name, overrides, count):
    method = load_method(model_dir(tmp_path / "sr", name, True, *overrides))
    slices = np.random.default_rng(4).random((4, 10, 9)).astype(np.float32)
    every = list(method.augmented(slices, 3))
    few = list(method.augmented(slices, 3, flips="slice"))
    assert len(few) == count and count < len(every)
    # for a through-plane 2D generator: the identity and the slice flip, in each orientation
    orientations = getattr(method.model, "orientations", (None,))
    kept = [sample for (axes, _), sample in zip([(f, o) for f in FLIPS for o in orientations
                                                 if o is None or not f[method.model.axis_across_planes[o]]]
                                                if orientations != (None,) else [(f, None) for f in FLIPS], every)
            if not (axes[1] or axes[2])]
    assert len(kept) == count
    for got, expected in zip(few, kept):
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="all, slice"):
        list(method.augmented(slices, 3, flips="inplane"))


def test_the_command_lines_offer_the_librarys_flip_sets():
    # the CLIs list the names without importing the torch-heavy module: a new set must be named there too
    assert TTA_FLIP_NAMES == tuple(TTA_FLIPS)


def test_predict_with_slice_flips(tmp_path):
    path, data, affine = _lr_file(tmp_path, "oblique", 0, n=5)
    method = load_method(model_dir(tmp_path / "sr", "throughplane2d"))
    volume = load_volume(path)
    slices, _ = to_slice_first(data, affine, 0)
    params = robust_intensity_params(slices)
    normalised = normalize(slices, params)
    rotation = InPlaneRotation(normalised.shape[1:], (0.9, 0.7), 45)  # _lr_file's in-plane voxel sizes
    samples = [*method.augmented(normalised, 3, flips="slice"),
               *rotated_predictions(method, normalised, 3, rotation, flips="slice")]
    assert len(samples) == 8  # half of --tta-angles 45's 16
    expected = np.clip(denormalize(np.mean(samples, axis=0), params), slices.min(), slices.max())
    # tta implied; the mean of the slice flips, with and without their map, with the rotations
    for kwargs in ({}, {"uncertainty": True}):
        got = predict(volume, method, 3, 0, tta_angles=(45,), tta_flips="slice", **kwargs)
        values = got.data  # slice axis 0
        np.testing.assert_allclose(values[1::3], expected[1::3], rtol=1e-4, atol=1e-4 * float(np.ptp(slices)))
        np.testing.assert_array_equal(values[::3], slices)
    full = predict(volume, method, 3, 0, tta_angles=(45,))
    assert np.abs(full.data - got.data).max() > 1e-4  # another set of augmentations
    alone = predict(volume, method, 3, 0, tta_flips="slice").data
    flat = np.clip(denormalize(np.mean(list(method.augmented(normalised, 3, flips="slice")), axis=0), params),
                   slices.min(), slices.max())
    np.testing.assert_allclose(alone[1::3], flat[1::3], rtol=1e-4, atol=1e-4 * float(np.ptp(slices)))
    with pytest.raises(ValueError, match="TTA flips"):
        predict(volume, method, 3, 0, tta_flips="none")


@pytest.mark.parametrize("options, kwargs, printed", [
    (["--tta-angles", "45"], {"tta_angles": (45,)}, "rotations 45"),
    (["--tta-flips", "slice"], {"tta_flips": "slice"}, "test-time augmentation (slice flips)"),
    (["--tta-angles", "45", "--tta-flips", "slice"], {"tta_angles": (45,), "tta_flips": "slice"}, "(slice flips) (rotations 45)")])
def test_augmentation_options_on_the_command_line(tmp_path, capsys, options, kwargs, printed):
    path, _, _ = _lr_file(tmp_path, "ras", 2, n=4)
    model = model_dir(tmp_path / "sr", "throughplane2d")
    out = tmp_path / "o.nii.gz"
    assert main(["infer", path, "--output", str(out), "--model", model, *options]) == 0  # --tta implied
    assert printed in capsys.readouterr().out
    expected = predict(load_volume(path), load_method(model), 3, **kwargs).data
    np.testing.assert_allclose(np.asarray(nib.load(out).dataobj), expected, rtol=1e-6, atol=1e-5)
    assert main(["infer", path, "--output", str(tmp_path / "bad.nii.gz"), "--model", "linear", "--k", "3",
                 *options]) == 2
    assert "need a trained model" in capsys.readouterr().err
    assert not (tmp_path / "bad.nii.gz").exists()


def test_bad_augmentation_options_are_usage_errors(tmp_path, capsys):
    path, _, _ = _lr_file(tmp_path, "ras", 2, n=4)
    model = model_dir(tmp_path / "sr", "throughplane2d")
    for option, value, message in [("--tta-angles", "abc", "degrees separated by commas"),
                                   ("--tta-angles", "360", "multiple of 360"), ("--tta-angles", "45,405", "repeat"),
                                   ("--tta-flips", "some", "invalid choice")]:
        assert main(["infer", path, "--output", str(tmp_path / "bad.nii.gz"), "--model", model, option, value]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad.nii.gz").exists()
