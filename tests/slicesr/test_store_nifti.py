"""slicesr.store_nifti: NIfTI -> slice store (preprocessing.to_zarr) -> the volume rebuilt -> NIfTI again."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from preprocessing.to_zarr import convert
from slicesr.errors import InputError
from slicesr.inference import output_image
from slicesr.nifti import image_from_bytes, load_volume, strip_nifti_suffix
from slicesr.store import SliceStore
from slicesr.store_nifti import volume_from_store
from tests.conftest import write_nifti

KINDS = ("int16", "uint8", "float32", "int16_scaled")
ORIENTATIONS = {
    "lps": np.diag([-1.0, -1.0, 1.0]),
    "pir": np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
    "oblique": np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))[0],
}


def _write(folder, kind: str, orientation: str, slice_axis: int) -> str:
    """A small scan of `kind` whose largest spacing (the detected slice axis) is `slice_axis`."""
    spacing = np.array([0.9, 0.8, 1.1])
    spacing[slice_axis] = 3.5
    affine = np.eye(4)
    affine[:3, :3] = ORIENTATIONS[orientation] @ np.diag(spacing)
    affine[:3, 3] = [-20.5, 13.25, 40.0]
    shape = [9, 8, 7]
    shape[slice_axis] = 5
    rng = np.random.default_rng([slice_axis, KINDS.index(kind)])
    path = folder / f"{kind}_{orientation}.nii.gz"
    if kind == "int16":
        return write_nifti(path, rng.integers(-1200, 3000, shape).astype(np.int16), affine)
    if kind == "uint8":
        return write_nifti(path, rng.integers(0, 256, shape).astype(np.uint8), affine)
    if kind == "float32":
        return write_nifti(path, (rng.normal(size=shape) * 100 + 40).astype(np.float32), affine)
    # floats stored as int16: nibabel picks scl_slope/inter
    return write_nifti(path, (rng.random(shape) * 0.85).astype(np.float32), affine, dtype=np.int16)


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_round_trip(tmp_path, slice_axis):
    folder = tmp_path / "in"
    sources = [_write(folder, kind, orientation, slice_axis) for kind in KINDS for orientation in ORIENTATIONS]
    report = convert([str(folder)], str(tmp_path / "lr.zarr"), workers=0, progress=False)
    assert report.failures == [] and len(report.stored) == len(sources)
    store = SliceStore.open(str(tmp_path / "lr.zarr"))
    for source in sources:
        name = strip_nifti_suffix(source.rsplit("/", 1)[-1])
        kind = name.rsplit("_", 1)[0]
        original, image = load_volume(source), nib.load(source)
        assert original.scaled == (kind == "int16_scaled"), name
        volume, axis = volume_from_store(store, name)
        assert axis == slice_axis
        assert volume.source == f"{store.url}/scans/{name}"
        assert volume.source_dtype == str(image.get_data_dtype()) == kind.split("_")[0]
        assert volume.scaled == original.scaled, name
        np.testing.assert_array_equal(volume.affine, image.affine)  # exact
        assert volume.data.shape == image.shape and volume.data.dtype == np.float32
        if kind in ("int16", "uint8"):
            np.testing.assert_array_equal(volume.data, original.data)  # integers: bit for bit
        else:  # float32 rounding of the normalisation
            np.testing.assert_allclose(volume.data, original.data, rtol=0, atol=1e-6 * np.ptp(original.data))

        # written back by the NIfTI writer of `slicesr infer`: the source's type, geometry and values
        written = image_from_bytes(output_image(volume, volume.data, volume.affine).to_bytes())
        assert written.get_data_dtype() == image.get_data_dtype()
        assert written.header.get_xyzt_units()[0] == "mm"
        np.testing.assert_allclose(written.affine, image.affine, rtol=0, atol=1e-5)
        if kind in ("int16", "uint8"):
            np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(image.dataobj))
        elif kind == "float32":
            np.testing.assert_array_equal(np.asarray(written.dataobj), volume.data)
        else:  # a new slope chosen by nibabel: within half its step (not rounded to whole numbers)
            step = abs(float(written.dataobj.slope))
            assert 0 < step < 1e-3 * np.ptp(original.data)
            np.testing.assert_allclose(written.get_fdata(), original.data, rtol=0,
                                       atol=0.51 * step + 1e-6 * np.ptp(original.data))


def _record(**changes) -> dict:
    values = {"slice_axis": 2, "affine": np.diag([0.9, 0.8, 3.0, 1.0]).tolist(),
              "intensity": {"offset": 0.0, "scale": 100.0}, "source_dtype": "int16"}
    values.update(changes)
    return {key: value for key, value in values.items() if value is not None}


def _store_with(tmp_path, record: dict, slices: np.ndarray | None = None) -> SliceStore:
    store = SliceStore.create(str(tmp_path / "made.zarr"))
    store.write_scan("scan", np.full((4, 3, 5), 0.5, np.float32) if slices is None else slices, record)
    return store


@pytest.mark.parametrize(("record", "phrase"), [
    (_record(intensity=None), "its store record lacks 'intensity'"),
    (_record(slice_axis=None), "its store record lacks 'slice_axis'"),
    (_record(affine=None), "its store record lacks 'affine'"),
    (_record(slice_axis=3), "bad geometry in its store record (slice_axis 3"),
    (_record(affine=np.eye(3).tolist()), "bad geometry in its store record"),
    (_record(affine=np.diag([1.0, float("nan"), 1.0, 1.0]).tolist()), "bad geometry in its store record"),
    (_record(affine=np.diag([1.0, 0.0, 1.0, 1.0]).tolist()), "unusable affine in its store record (singular)"),
])
def test_bad_records_name_the_problem(tmp_path, record, phrase):
    store = _store_with(tmp_path, record)
    with pytest.raises(InputError) as info:
        volume_from_store(store, "scan")
    assert phrase in str(info.value)


def test_missing_scan_mismatched_shape_and_bad_values(tmp_path):
    store = _store_with(tmp_path, _record())
    volume, axis = volume_from_store(store, "scan")
    assert axis == 2 and volume.data.shape == (3, 5, 4) and volume.source_dtype == "int16"
    np.testing.assert_array_equal(volume.data, 50.0)
    with pytest.raises(InputError, match="scan other is not \\(completely\\) stored in"):
        volume_from_store(store, "other")
    marker = json.loads(store.fs.cat_file(store._path("complete", "scan.json")))
    store.write_bytes("complete/scan.json", json.dumps({**marker, "shape": [4, 3, 6]}).encode())
    with pytest.raises(InputError, match=r"stored slices have shape \(4, 3, 5\), its record says \(4, 3, 6\)"):
        volume_from_store(store, "scan")
    slices = np.full((4, 3, 5), 0.5, np.float32)
    slices[1, 2, 3] = np.inf
    with pytest.raises(InputError, match="NaN or infinite values in the stored slices"):
        volume_from_store(_store_with(tmp_path / "nan", _record(), slices), "scan")
    # a data type the writer cannot use is written as float32
    bogus, _ = volume_from_store(_store_with(tmp_path / "bogus", _record(source_dtype="bogus")), "scan")
    assert bogus.source_dtype == "float32" and not bogus.scaled
