import numpy as np
import pytest

from slicesr.errors import InputError
from slicesr.nifti import load_volume, save_nifti_atomic, strip_nifti_suffix
from tests.conftest import write_nifti


def test_bad_inputs_give_readable_reasons(bad_inputs):
    folder, expected = bad_inputs
    for name, phrase in expected.items():
        with pytest.raises(InputError) as info:
            load_volume(folder / name)
        assert phrase in str(info.value), (name, str(info.value))


def test_scaled_int16_is_float32_with_slope_applied(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) * 0.37 - 3
    path = write_nifti(tmp_path / "a.nii.gz", data, dtype=np.int16)
    volume = load_volume(path)
    assert volume.data.dtype == np.float32
    assert volume.source_dtype == "int16"
    np.testing.assert_allclose(volume.data, data, atol=0.01)


def test_trailing_singleton_dimension_is_accepted(tmp_path):
    path = write_nifti(tmp_path / "a.nii", np.ones((4, 5, 6, 1), dtype=np.float32))
    assert load_volume(path).data.shape == (4, 5, 6)


def test_atomic_save_leaves_no_partial_file(tmp_path):
    import nibabel as nib

    image = nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), np.eye(4))
    save_nifti_atomic(image, tmp_path / "x.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.nii.gz"]


def test_strip_suffix():
    assert strip_nifti_suffix("a/b.NII.GZ") == "a/b"
    assert strip_nifti_suffix("c.nii") == "c"


def test_bids_sidecar_thickness_and_spacing(tmp_path):
    from slicesr.nifti import read_slice_sidecar, sidecar_path

    scan = tmp_path / "sub-01_T2w.nii.gz"
    assert sidecar_path(scan) == str(tmp_path / "sub-01_T2w.json")
    assert read_slice_sidecar(scan) is None  # no sidecar
    (tmp_path / "sub-01_T2w.json").write_text('{"RepetitionTime": 3.2}')
    assert read_slice_sidecar(scan) is None  # a sidecar that names neither
    (tmp_path / "sub-01_T2w.json").write_text('{"SliceThickness": 5, "SpacingBetweenSlices": 5.5}')
    sidecar = read_slice_sidecar(scan)
    assert (sidecar.thickness_mm, sidecar.spacing_between_slices_mm) == (5.0, 5.5)
    assert "slice thickness 5 mm" in sidecar.describe() and "sub-01_T2w.json" in sidecar.describe()
    for body, message in [("{not json", "not valid JSON"), ("[1, 2]", "not a JSON object"),
                          ('{"SliceThickness": -1}', "SliceThickness must be a positive"),
                          ('{"SpacingBetweenSlices": "5mm"}', "SpacingBetweenSlices must be a positive")]:
        (tmp_path / "sub-01_T2w.json").write_text(body)
        with pytest.raises(InputError, match=message) as raised:
            read_slice_sidecar(scan)
        assert "sub-01_T2w.json" in str(raised.value)
