"""The slice store's NIfTI round trip: a stored scan rebuilt as the volume it was converted from.

`preprocessing.to_zarr` stores a scan as normalised float32 slices (slice axis first) with a record:
the slice-first affine, the slice axis, the intensity parameters and the source's data type.
:func:`volume_from_store` inverts that, so a store scan goes through the same NIfTI writer as a file
(`slicesr.inference.output_image`).

Reproduced exactly: the source's affine (the stored affine, moved back to the source's axis order), its
shape and axis order, its data type, and the voxel values of an integer source (bit for bit: whole
numbers in range after the float32 round trip are rounded back). A float source's values come back
within float32 rounding of the normalisation (about 1e-7 of the value range). A scaled integer source
(int16 + scl_slope/inter) comes back as float values within float32 rounding, marked
`Volume.scaled`: its output is written as that integer type with a new slope chosen by nibabel.

Not in the store, so not reproduced: the NIfTI-1/-2 flavour (NIfTI-1 is written), the original
scl_slope/inter, sform/qform codes (1 is written), units (mm is written), descriptions and every other
header field.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from slicesr.errors import InputError
from slicesr.geometry import from_slice_first
from slicesr.intensity import denormalize
from slicesr.nifti import Volume
from slicesr.store import SliceStore


def _output_dtype(values: dict, data: np.ndarray) -> tuple[np.dtype, np.ndarray, bool]:
    """The data type to write, the data (integers rounded) and whether it is written as scaled integers."""
    try:
        dtype = np.dtype(values.get("source_dtype") or "float32")
    except TypeError:
        dtype = np.dtype("float32")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        rounded = np.rint(data)
        tolerance = max(0.01, 1e-6 * float(np.abs(data).max()))
        if rounded.min() >= info.min and rounded.max() <= info.max and np.abs(data - rounded).max() <= tolerance:
            return dtype, rounded.astype(np.float32), False
        return dtype, data, True  # a scaled integer source: nibabel chooses a slope for the new values
    if dtype.kind != "f":
        dtype = np.dtype("float32")
    return dtype, data, False


def volume_from_store(store: SliceStore, scan_id: str) -> tuple[Volume, int]:
    """Rebuild a stored scan as the volume it was converted from (see the module docstring for what is
    exact); returns the volume and the slice axis the store was built along. InputError names the problem
    for a scan that is not stored completely, a record lacking fields or with bad geometry, slices that do
    not match their record, and non-finite values."""
    record = store.record(scan_id)
    if record is None:
        raise InputError(f"scan {scan_id} is not (completely) stored in {store.url}")
    values = record.values
    try:
        axis = int(values["slice_axis"])
        intensity = record.intensity
        affine = record.affine
        shape = tuple(int(n) for n in record.shape)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"its store record lacks {exc} (not written by preprocessing.to_zarr?)") from None
    if axis not in (0, 1, 2) or affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError(f"bad geometry in its store record (slice_axis {axis}, affine {affine.tolist()})")
    slices = np.asarray(store.slices(scan_id)[...], dtype=np.float32)
    if tuple(slices.shape) != shape:
        raise InputError(f"stored slices have shape {tuple(slices.shape)}, its record says {shape}")
    data, source_affine = from_slice_first(denormalize(slices, intensity), affine, axis)
    data = np.ascontiguousarray(data)
    if abs(np.linalg.det(source_affine[:3, :3])) < 1e-12:
        raise InputError(f"unusable affine in its store record (singular): {source_affine.tolist()}")
    if not np.all(np.isfinite(data)):
        raise InputError("NaN or infinite values in the stored slices")
    dtype, data, scaled = _output_dtype(values, data)
    header = nib.Nifti1Header()
    header.set_xyzt_units("mm")
    header.set_data_dtype(dtype)
    volume = Volume(data=data, affine=source_affine, source=f"{store.url}/scans/{scan_id}",
                    source_dtype=str(dtype), header=header, scaled=scaled)
    return volume, axis
