import nibabel as nib
import numpy as np

from preprocessing.synth import main, make_scan
from slicesr.geometry import find_slice_axis


def test_synth_cli_writes_loadable_varied_scans(tmp_path):
    assert main(["--count", "12", "--output", str(tmp_path), "--shape", "16,14,5"]) == 0
    files = sorted(tmp_path.glob("*.nii.gz"))
    assert len(files) == 12
    orientations, dtypes, obliques = set(), set(), 0
    for path in files:
        image = nib.load(path)
        assert sorted(image.shape) == [5, 14, 16]
        assert image.shape[find_slice_axis(image.affine)] == 5
        orientations.add(nib.aff2axcodes(image.affine))
        dtypes.add(str(image.get_data_dtype()))
        directions = image.affine[:3, :3] / np.linalg.norm(image.affine[:3, :3], axis=0)
        obliques += not np.allclose(np.abs(directions).max(axis=0), 1.0)
        assert np.isfinite(image.get_fdata()).all()
    assert len(orientations) >= 6 and len(dtypes) >= 2 and obliques >= 1


def test_synth_is_deterministic_per_seed_and_index():
    a = make_scan(np.random.default_rng([0, 3]), 8, 8, 4)
    b = make_scan(np.random.default_rng([0, 3]), 8, 8, 4)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.affine, b.affine)


def test_synth_bad_arguments():
    assert main(["--count", "0", "--output", "/tmp/x"]) == 2
    assert main(["--count", "1", "--output", "/tmp/x", "--shape", "4,4"]) == 2
