import nibabel as nib
import numpy as np
import pytest

from preprocessing.degrade import degrade_image, main
from preprocessing.synth import make_scan, to_image
from slicesr.geometry import world_coordinates
from tests.conftest import write_nifti


@pytest.mark.parametrize("seed", range(4))
def test_degrade_keeps_slices_bit_exactly_with_dtype_and_world_positions(tmp_path, seed):
    scan = make_scan(np.random.default_rng(seed), 10, 9, 13, oblique_fraction=0.5)
    hr_path = tmp_path / "hr" / "x.nii.gz"
    hr_path.parent.mkdir()
    nib.save(to_image(scan), hr_path)
    assert main(["--input", str(hr_path.parent), "--output", str(tmp_path / "lr"), "--k", "4"]) == 0
    hr = nib.load(hr_path)
    lr = nib.load(tmp_path / "lr" / "x.nii.gz")
    axis = scan.slice_axis
    assert lr.get_data_dtype() == hr.get_data_dtype()
    assert lr.shape[axis] == (hr.shape[axis] - 1) // 4 + 1
    hr_raw, lr_raw = hr.dataobj.get_unscaled(), lr.dataobj.get_unscaled()
    np.testing.assert_array_equal(lr.get_fdata(), np.take(hr.get_fdata(), range(0, hr.shape[axis], 4), axis))
    for i in range(lr.shape[axis]):
        np.testing.assert_array_equal(np.take(lr_raw, i, axis), np.take(hr_raw, 4 * i, axis))
        index = np.zeros((1, 3))
        index[0, axis] = i
        np.testing.assert_allclose(world_coordinates(lr.affine, index), world_coordinates(hr.affine, index * [4 if a == axis else 1 for a in range(3)]), atol=1e-4)
    np.testing.assert_allclose(lr.affine[:3, axis], hr.affine[:3, axis] * 4, atol=1e-4)


def test_degrade_image_refuses_too_few_slices():
    image = nib.Nifti1Image(np.zeros((6, 6, 3), np.float32), np.diag([1, 1, 3, 1]))
    with pytest.raises(ValueError, match="single slice"):
        degrade_image(image, 4)


def test_degrade_cli_exit_codes(tmp_path, capsys):
    write_nifti(tmp_path / "in" / "good.nii.gz", np.ones((6, 6, 9), np.float32), np.diag([1, 1, 2, 1]))
    (tmp_path / "in" / "bad.nii").write_text("not an image " * 40)
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--k", "2"]) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.nii.gz"]
    assert "not a NIfTI" in capsys.readouterr().err
    assert main(["--input", str(tmp_path / "none"), "--output", str(tmp_path / "out"), "--k", "2"]) == 2
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--k", "1"]) == 2
    assert main(["--input", str(tmp_path / "in")]) == 2


def test_degrade_with_a_thick_slice_profile(tmp_path, capsys, caplog):
    from slicesr.degradation import profile_weights

    rng = np.random.default_rng(1)
    data = (rng.random((6, 5, 13)) * 1000).astype(np.int16)
    affine = np.diag([0.9, 0.9, 1.5, 1.0])
    write_nifti(tmp_path / "in" / "knee.nii.gz", data, affine)
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--k", "4",
                 "--slice-profile", "box", "--slice-thickness", "4.5"]) == 0  # 3 HR slices: a gap of one
    lr = nib.load(tmp_path / "out" / "knee.nii.gz")
    assert lr.shape == (6, 5, 4) and lr.get_data_dtype() == np.float32
    np.testing.assert_allclose(lr.affine, np.diag([0.9, 0.9, 6.0, 1.0]))
    weights = profile_weights(13, 4, "box", 3.0)
    np.testing.assert_allclose(lr.get_fdata(), np.tensordot(data.astype(np.float64), weights.T, axes=(2, 0)), rtol=1e-5)
    np.testing.assert_allclose(lr.get_fdata()[..., 1], data[..., 3:6].mean(axis=2), rtol=1e-5)
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out2"), "--k", "4",
                 "--slice-profile", "gaussian"]) == 2
    assert "needs a positive --slice-thickness" in capsys.readouterr().err
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out3"), "--k", "4",
                 "--slice-thickness", "4.5"]) == 0  # the point profile: slices kept as they are, and said so
    np.testing.assert_array_equal(nib.load(tmp_path / "out3" / "knee.nii.gz").get_fdata(), data[..., ::4])
    assert "is not used with the point profile" in caplog.text
