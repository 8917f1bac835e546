"""`slicesr infer --spacing MM`: an output slice spacing in millimetres instead of the factor K."""

import nibabel as nib
import numpy as np
import pytest
import torch

from slicesr.cli import main
from slicesr.geometry import scale_axis, world_coordinates
from slicesr.inference import output_grid
from tests.slicesr.test_inference import ORIENTATIONS, _lr_file
from tests.slicesr.test_inference_tta import model_dir


def test_output_grid_for_a_spacing():
    grid = output_grid(5, 4.0, spacing_mm=1.6)  # ratio 2.5
    assert grid.k is None and grid.ratio == pytest.approx(2.5)
    np.testing.assert_allclose(grid.positions, np.arange(11) * 0.4)
    kept, source = grid.acquired
    np.testing.assert_array_equal(kept, [0, 5, 10])
    np.testing.assert_array_equal(source, [0, 2, 4])
    assert output_grid(5, 4.0, spacing_mm=1.5).positions.size == 11  # floor(4 * 4 / 1.5) + 1: ends before slice 4
    assert output_grid(5, 4.0, spacing_mm=1.0).k == 4
    assert output_grid(5, 4.0, spacing_mm=4 / 3 + 1e-6).k == 3  # rounding of a spacing typed in mm
    for bad in (0.0, -1.0, 4.5):
        with pytest.raises(ValueError, match="--spacing"):
            output_grid(5, 4.0, spacing_mm=bad)


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_linear_at_a_spacing_keeps_geometry_and_acquired_slices(tmp_path, orientation, slice_axis):
    path, data, affine = _lr_file(tmp_path, orientation, slice_axis, n=5)  # slice spacing 4 mm
    out = tmp_path / "sr.nii.gz"
    assert main(["infer", path, "--output", str(out), "--model", "linear", "--spacing", "1.6"]) == 0
    image = nib.load(out)
    result = np.moveaxis(np.asarray(image.dataobj), slice_axis, 0)
    slices = np.moveaxis(data, slice_axis, 0)
    assert result.shape == (11, *slices.shape[1:])
    np.testing.assert_allclose(image.affine, scale_axis(affine, slice_axis, 0.4), atol=1e-6)
    assert np.linalg.norm(image.affine[:3, slice_axis]) == pytest.approx(1.6)
    np.testing.assert_allclose(world_coordinates(image.affine, np.zeros((1, 3))), world_coordinates(affine, np.zeros((1, 3))))
    np.testing.assert_array_equal(result[[0, 5, 10]], slices[[0, 2, 4]])  # acquired slices, bit for bit
    np.testing.assert_allclose(result[1], 0.6 * slices[0] + 0.4 * slices[1], rtol=1e-5)


def test_a_spacing_that_divides_by_k_is_k(tmp_path):
    path, _, _ = _lr_file(tmp_path, "ras", 2, n=5)
    assert main(["infer", path, "--output", str(tmp_path / "a.nii.gz"), "--model", "cubic", "--spacing", "1"]) == 0
    assert main(["infer", path, "--output", str(tmp_path / "b.nii.gz"), "--model", "cubic", "--k", "4"]) == 0
    np.testing.assert_array_equal(nib.load(tmp_path / "a.nii.gz").get_fdata(), nib.load(tmp_path / "b.nii.gz").get_fdata())


def test_vae_latent_interpolation_at_any_position():
    from slicesr.models.vae_gan import VaeGan, VaeGanSize
    from slicesr.stage1.synthesis import synthesize_slices

    torch.manual_seed(0)
    vae = VaeGan(VaeGanSize(image_size=16, channels=4, max_channels=8, num_blocks=2, latent_dim=8, disc_channels=4))
    slices = np.random.default_rng(0).random((3, 20, 18)).astype(np.float32)
    on_k = synthesize_slices(vae, slices, 2)
    at = synthesize_slices(vae, slices, 1, positions=np.array([0.0, 0.5, 1.0, 1.25, 2.0]))
    np.testing.assert_allclose(at[[0, 1, 2, 4]], on_k[[0, 1, 2, 4]], atol=1e-6)
    assert at.shape == (5, 20, 18)


def test_spacing_errors(tmp_path, capsys):
    path, _, _ = _lr_file(tmp_path, "ras", 2, n=5)
    out = str(tmp_path / "o.nii.gz")
    assert main(["infer", path, "--output", out, "--model", "linear", "--spacing", "5"]) == 2
    assert "over the input's slice spacing" in capsys.readouterr().err
    assert main(["infer", path, "--output", out, "--model", "linear", "--spacing", "-1"]) == 2
    assert main(["infer", path, "--output", out, "--model", "linear", "--spacing", "4"]) == 2
    assert "nothing to super-resolve" in capsys.readouterr().err
    assert main(["infer", path, "--output", out, "--model", "linear", "--spacing", "1", "--k", "4"]) == 2
    assert "not both" in capsys.readouterr().err
    generator = model_dir(tmp_path / "sr", "deepresolve")  # trained for K = 3
    assert main(["infer", path, "--output", out, "--model", generator, "--spacing", "1.6"]) == 1
    assert "integer factor K only (trained for K=3)" in capsys.readouterr().err
    assert main(["infer", path, "--output", out, "--model", generator, "--spacing", str(4 / 3)]) == 0


@pytest.mark.parametrize("orientation, slice_axis", [("ras", 2), ("pir", 0), ("oblique", 1)])
def test_labels_follow_the_spacing(tmp_path, orientation, slice_axis):
    from tests.slicesr.test_labels import disc_stack

    labels = np.moveaxis(disc_stack(), 0, slice_axis)  # 5 slices of discs that grow and move
    spacing = np.array([0.8, 0.8, 0.8])
    spacing[slice_axis] = 4.0
    affine = np.eye(4)
    affine[:3, :3] = ORIENTATIONS[orientation] @ np.diag(spacing)
    image = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image((labels * 10.0).astype(np.float32), affine), image)
    nib.save(nib.Nifti1Image(labels.astype(np.int16), affine), tmp_path / "seg.nii.gz")
    assert main(["infer", str(image), "--output", str(tmp_path / "sr.nii.gz"), "--model", "linear", "--spacing", "1.6",
                 "--labels", str(tmp_path / "seg.nii.gz")]) == 0
    out, carried = nib.load(tmp_path / "sr.nii.gz"), nib.load(tmp_path / "sr_labels.nii.gz")
    expected = list(labels.shape)
    expected[slice_axis] = 11  # ratio 2.5
    assert carried.shape == out.shape == tuple(expected)
    np.testing.assert_allclose(carried.affine, out.affine)
    result, source = np.moveaxis(np.asarray(carried.dataobj), slice_axis, 0), np.moveaxis(labels, slice_axis, 0)
    np.testing.assert_array_equal(result[[0, 5, 10]], source[[0, 2, 4]])  # acquired slices, as they were
    assert set(np.unique(result)) <= set(np.unique(source))  # no label invented
    for j in range(11):  # between two acquired slices each voxel takes one of its two bracketing labels
        below, above = source[int(np.floor(j / 2.5))], source[min(int(np.ceil(j / 2.5)), 4)]
        assert np.all((result[j] == below) | (result[j] == above)), j
