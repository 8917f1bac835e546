import nibabel as nib
import numpy as np
import pytest
import torch

from slicesr.cli import main
from slicesr.geometry import scale_axis, world_coordinates
from slicesr.inference import Interpolation, infer_files, infer_volume, load_method, super_resolve
from slicesr.nifti import load_volume
from slicesr.windows import sliding_window_apply
from tests.conftest import write_nifti


def _rotation(seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q


ORIENTATIONS = {
    "ras": np.diag([1.0, 1.0, 1.0]),
    "lps": np.diag([-1.0, -1.0, 1.0]),
    "pir": np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),  # knee DESS
    "oblique": _rotation(3),
}


def _lr_file(tmp_path, orientation, slice_axis, dtype=np.float32, n=6):
    spacing = np.array([0.8, 0.9, 0.7])
    spacing[slice_axis] = 4.0
    affine = np.eye(4)
    affine[:3, :3] = ORIENTATIONS[orientation] @ np.diag(spacing)
    affine[:3, 3] = [12.0, -30.0, 7.5]
    shape = [10, 9, 8]
    shape[slice_axis] = n
    rng = np.random.default_rng(slice_axis)
    data = (rng.random(shape) * 200).astype(dtype)
    return write_nifti(tmp_path / f"{orientation}{slice_axis}.nii.gz", data, affine), data, affine


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_output_geometry_and_acquired_slices(tmp_path, orientation, slice_axis):
    path, data, affine = _lr_file(tmp_path, orientation, slice_axis)
    k = 3
    out = tmp_path / "out.nii.gz"
    report = infer_files([path], str(out), Interpolation("linear"), k, progress=False)
    assert report.written == [str(out)] and not report.failures
    image = nib.load(out)
    result = np.asarray(image.dataobj)
    expected_shape = list(data.shape)
    expected_shape[slice_axis] = k * (data.shape[slice_axis] - 1) + 1
    assert list(result.shape) == expected_shape
    assert result.dtype == np.float32  # float input stays float
    np.testing.assert_allclose(image.affine, scale_axis(affine, slice_axis, 1 / k), atol=1e-5)
    np.testing.assert_allclose(image.header.get_sform(), image.affine, atol=1e-5)
    assert image.header["sform_code"] > 0 and image.header["qform_code"] > 0
    np.testing.assert_allclose(image.header.get_qform(), image.affine, atol=1e-4)  # rotation only: qform holds it
    # acquired slice i lies at output slice i*K, at the same world position, bit for bit
    index = [slice(None)] * 3
    index[slice_axis] = slice(0, None, k)
    np.testing.assert_array_equal(result[tuple(index)], data)
    for i in range(data.shape[slice_axis]):
        voxel = np.zeros((1, 3))
        voxel[0, slice_axis] = i
        hr_voxel = voxel.copy()
        hr_voxel[0, slice_axis] = i * k
        np.testing.assert_allclose(world_coordinates(image.affine, hr_voxel), world_coordinates(affine, voxel), atol=1e-4)


def test_integer_input_keeps_its_type_and_range(tmp_path):
    data = np.zeros((12, 10, 5), dtype=np.uint8)
    data[:, :, ::2] = 255  # cubic overshoots between these: clipped to the input's range
    affine = np.diag([1.0, 1.0, 5.0, 1.0])
    path = write_nifti(tmp_path / "u8.nii.gz", data, affine, dtype=np.uint8)
    image = infer_volume(load_volume(path), Interpolation("cubic"), 4)
    result = np.asarray(image.dataobj)
    assert result.dtype == np.uint8 and result.shape == (12, 10, 17)
    np.testing.assert_array_equal(result[:, :, ::4], data)
    assert result.min() == 0 and result.max() == 255


def test_no_keep_acquired_takes_the_method_output(tmp_path):
    class Shift(Interpolation):
        def upsample(self, slices, k, progress=False):
            return super().upsample(slices, k) + 0.01

    path, data, _ = _lr_file(tmp_path, "ras", 2)
    volume = load_volume(path)
    kept, _ = super_resolve(volume, Shift("linear"), 2, keep_acquired=True)
    free, _ = super_resolve(volume, Shift("linear"), 2, keep_acquired=False)
    np.testing.assert_array_equal(kept[:, :, ::2], data)
    assert not np.array_equal(free[:, :, ::2], data)


def test_sliding_windows_have_no_seams():
    volume = np.random.default_rng(0).random((13, 30, 27)).astype(np.float32)
    pointwise = sliding_window_apply(lambda w: 2 * w + 1, volume, (5, 8, 7), 0.3)
    np.testing.assert_allclose(pointwise, 2 * volume + 1, rtol=1e-6)
    # a 3D generator on overlapping windows: a constant volume stays constant
    from slicesr.models.generators import DeepResolve

    torch.manual_seed(0)
    model = DeepResolve(num_layers=4, num_filters=4).eval()
    run = lambda w: model(torch.from_numpy(np.ascontiguousarray(w))[None, None])[0, 0].detach().numpy()  # noqa: E731
    constant = np.full((13, 30, 27), 0.7, dtype=np.float32)
    out = sliding_window_apply(run, constant, (5, 8, 7), 0.3)
    assert np.ptp(out) < 1e-5
    # and on real content the windowed result is close to one pass over the whole volume
    whole = run(volume)
    windowed = sliding_window_apply(run, volume, (9, 16, 16), 0.5)
    assert np.abs(windowed - whole).mean() < 0.1 * np.abs(whole - volume).mean() + 1e-6


def test_generator_refuses_another_k_and_bad_inputs(tmp_path, capsys):
    from slicesr.config import load_config
    from slicesr.modeldir import write_model_dir
    from slicesr.models.generators import DeepResolve

    config = load_config("configs/debug/stage2.yaml")
    model = DeepResolve(config.model.num_layers, config.model.num_filters)
    write_model_dir(tmp_path / "sr", model.state_dict(), config, {"stage": "sr", "k": 4, "method": "Proposed with DeepResolve"})
    path, _, _ = _lr_file(tmp_path, "ras", 2)
    assert main(["infer", path, "--output", str(tmp_path / "o.nii.gz"), "--model", str(tmp_path / "sr"), "--k", "3"]) == 2
    assert "trained for K=4" in capsys.readouterr().err
    assert main(["infer", path, "--output", str(tmp_path / "o.nii.gz"), "--model", str(tmp_path / "sr")]) == 0
    assert nib.load(tmp_path / "o.nii.gz").shape == (10, 9, 21)
    assert main(["infer", path, "--output", str(tmp_path / "x"), "--model", "nearest"]) == 2
    assert "not linear, cubic or a model directory" in capsys.readouterr().err
    assert main(["infer", path, "--output", str(tmp_path / "x"), "--model", "models:/slicesr-sr@champion"]) == 2
    capsys.readouterr()
    assert main(["infer", path, "--output", path, "--model", "linear", "--k", "2"]) == 2
    assert main(["infer", str(tmp_path), "--output", str(tmp_path), "--model", "linear", "--k", "2"]) == 2
    assert "overwrite" in capsys.readouterr().err


def test_folder_inputs_some_bad(tmp_path, bad_inputs, capsys):
    folder, expected = bad_inputs
    out = tmp_path / "out"
    assert main(["infer", str(folder), "--output", str(out), "--model", "linear", "--k", "2"]) == 1
    err = capsys.readouterr().err
    for name, phrase in expected.items():
        assert name in err and phrase in err.split(name, 1)[1].splitlines()[0]
    written = sorted(p.name for p in out.iterdir())
    assert written == ["good.nii.gz"]  # nothing half-written, no temporary files left
    assert load_method("cubic").label == "cubic"


def test_scaled_integer_input_keeps_its_values(tmp_path):
    data = np.random.default_rng(3).random((12, 10, 5)).astype(np.float32) * 0.85
    image = nib.Nifti1Image(data, np.diag([1.0, 1.0, 4.0, 1.0]))
    image.set_data_dtype(np.int16)  # nibabel stores it as int16 with a small scl_slope
    nib.save(image, tmp_path / "scaled.nii.gz")
    assert main(["infer", str(tmp_path / "scaled.nii.gz"), "--output", str(tmp_path / "out.nii.gz"),
                 "--model", "linear", "--k", "4"]) == 0
    out = nib.load(tmp_path / "out.nii.gz")
    assert out.get_data_dtype() == np.int16
    values = out.get_fdata()
    stored = nib.load(tmp_path / "scaled.nii.gz").get_fdata()
    np.testing.assert_allclose(values[..., ::4], stored, atol=2 * 0.85 / 32767)  # not rounded to 0/1
    assert len(np.unique(values)) > 100
