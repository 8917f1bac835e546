"""Label maps carried to the super-resolved grid (`slicesr infer --labels`)."""

import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from slicesr.cli import main
from slicesr.labels import carry_labels, slice_positions
from tests.conftest import write_nifti
from tests.slicesr.test_inference import ORIENTATIONS


def disc_stack(num_slices=5, size=40, radii=(6, 10, 14, 10, 6)) -> np.ndarray:
    """A label-3 disc whose radius changes from slice to slice, in a label-1 square background region."""
    y, x = np.mgrid[:size, :size] - size / 2
    out = np.zeros((num_slices, size, size), dtype=np.int16)
    for index, radius in enumerate(radii[:num_slices]):
        out[index, 2:-2, 2:-2] = 1
        out[index][np.hypot(y, x) < radius] = 3
    return out


def test_acquired_slices_are_copied_and_no_label_is_invented():
    labels = disc_stack()
    out = carry_labels(labels, slice_positions(5, 4))
    assert out.shape == (17, 40, 40) and out.dtype == labels.dtype
    np.testing.assert_array_equal(out[::4], labels)
    assert set(np.unique(out)) <= {0, 1, 3}


def test_regions_morph_smoothly_between_slices():
    labels = disc_stack()
    out = carry_labels(labels, slice_positions(5, 4))
    area = (out == 3).sum(axis=(1, 2))
    # radius 6 -> 10 over 4 output slices: the disc's area grows step by step, not in one jump halfway
    assert np.all(np.diff(area[:9]) > 0), area[:9]
    nearest = np.repeat(labels, 4, axis=0)[:17]  # what nearest-neighbour would give (jump at a slice)
    assert len(np.unique(area[:5])) == 5 and len(np.unique((nearest == 3).sum(axis=(1, 2))[:4])) == 1


def test_a_region_tapers_beyond_its_last_slice():
    labels = np.zeros((3, 30, 30), dtype=np.uint8)
    labels[1, 5:25, 5:25] = 7
    out = carry_labels(labels, slice_positions(3, 4))
    areas = (out == 7).sum(axis=(1, 2))
    assert areas[4] == 400 and areas[0] == areas[8] == 0
    assert 0 < areas[3] < 400 and areas[3] >= areas[2] >= areas[1]


def test_memory_does_not_grow_with_the_number_of_labels():
    rng = np.random.default_rng(0)

    def peak(num_labels: int) -> int:
        labels = np.zeros((64, 256, 256), dtype=np.int16)
        for value in range(1, num_labels + 1):  # small blobs at random places
            z, r, c = rng.integers(0, 60), rng.integers(0, 240), rng.integers(0, 240)
            labels[z : z + 4, r : r + 12, c : c + 12] = value
        tracemalloc.start()
        out = carry_labels(labels, slice_positions(64, 4))
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert out.shape == (253, 256, 256) and len(np.unique(out)) > 0.9 * num_labels
        return top

    few, many = peak(20), peak(200)
    assert many < 1.2 * few, (few, many)


@pytest.mark.parametrize("orientation", ["oblique", "lps"])
def test_infer_writes_the_labels_beside_the_output(tmp_path, orientation):
    affine = np.eye(4)
    affine[:3, :3] = ORIENTATIONS[orientation] @ np.diag([0.8, 0.9, 4.0])
    labels = np.moveaxis(disc_stack(), 0, 2)  # slice axis 2
    image = write_nifti(tmp_path / "scan.nii.gz", (labels * 40.0 + 5).astype(np.float32), affine)
    seg = tmp_path / "seg.nii.gz"
    nib.save(nib.Nifti1Image(labels.astype(np.int16), affine), seg)
    assert main(["infer", image, "--output", str(tmp_path / "sr.nii.gz"), "--model", "linear", "--k", "4",
                 "--labels", str(seg)]) == 0
    out, carried = nib.load(tmp_path / "sr.nii.gz"), nib.load(tmp_path / "sr_labels.nii.gz")
    assert carried.shape == out.shape and carried.get_data_dtype() == np.int16
    np.testing.assert_allclose(carried.affine, out.affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(carried.dataobj)[..., ::4], labels)


def test_labels_on_another_grid_are_refused(tmp_path, capsys):
    affine = np.diag([1.0, 1.0, 4.0, 1.0])
    image = write_nifti(tmp_path / "scan.nii.gz", np.ones((40, 40, 5), np.float32), affine)
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 6), np.int16), affine), tmp_path / "seg.nii.gz")
    assert main(["infer", image, "--output", str(tmp_path / "sr.nii.gz"), "--model", "linear", "--k", "4",
                 "--labels", str(tmp_path / "seg.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "seg.nii.gz" in err and "differs from the scan" in err
    assert not (tmp_path / "sr.nii.gz").exists() and not (tmp_path / "sr_labels.nii.gz").exists()
    shifted = affine.copy()
    shifted[:3, 3] = [0.0, 2.0, 0.0]  # the same shape, 2 mm away: not the scan's grid either
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 5), np.int16), shifted), tmp_path / "seg.nii.gz")
    assert main(["infer", image, "--output", str(tmp_path / "sr.nii.gz"), "--model", "linear", "--k", "4",
                 "--labels", str(tmp_path / "seg.nii.gz")]) == 2
    assert "differs from the scan" in capsys.readouterr().err
    assert not (tmp_path / "sr.nii.gz").exists() and not (tmp_path / "sr_labels.nii.gz").exists()


def test_touching_labels_leave_no_background_seam():
    labels = np.full((2, 6, 6), 1, dtype=np.int16)
    labels[0, :, 3:], labels[1, :, 4:] = 2, 2  # the boundary between 1 and 2 moves by one pixel
    out = carry_labels(labels, slice_positions(2, 4))
    assert not np.any(out == 0)  # labelled on both slices: labelled in between
    assert set(np.unique(out)) == {1, 2}


def test_labels_refused_where_they_would_be_overwritten(tmp_path, capsys):
    affine = np.diag([1.0, 1.0, 4.0, 1.0])
    image = write_nifti(tmp_path / "scan.nii.gz", np.ones((10, 10, 3), np.float32), affine)
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 3), np.int16), affine), tmp_path / "sr_labels.nii.gz")
    assert main(["infer", image, "--output", str(tmp_path / "sr.nii.gz"), "--model", "linear", "--k", "2",
                 "--labels", str(tmp_path / "sr_labels.nii.gz")]) == 2
    assert "where the carried labels would be written" in capsys.readouterr().err
    assert not (tmp_path / "sr.nii.gz").exists()
