"""Reading and writing NIfTI scans with clear errors; every volume carries its 4x4 affine."""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from slicesr.errors import InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_GZIP_MAGIC = b"\x1f\x8b"


def is_nifti_name(name: str) -> bool:
    return name.lower().endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    lowered = name.lower()
    for suffix in (".nii.gz", ".nii"):
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class Volume:
    """A 3D scan: voxel data (float32, scl_slope/inter applied), its affine and where it came from.

    `scaled`: the source stored scaled values (scl_slope/inter other than 1/0, set by volume_from_image
    from the file and by slicesr.store_nifti for a scaled integer source). Writers then keep an integer
    output type with a new slope chosen by nibabel for the new values, instead of rounding to whole
    numbers (slicesr.inference.output_image). A field, not the header's scl_slope: nibabel resets a
    header's slope/inter when an image is built from an array.
    """

    data: np.ndarray
    affine: np.ndarray
    source: str
    source_dtype: str
    header: nib.Nifti1Header | nib.Nifti2Header | None = None
    scaled: bool = False


def _decompress(raw: bytes) -> bytes:
    try:
        return gzip.decompress(raw)
    except EOFError as exc:
        raise InputError(
            "truncated gzip: the file ends before its compressed data does (incomplete copy or download?)"
        ) from exc
    except (OSError, zlib.error) as exc:
        raise InputError(f"corrupt gzip data: {exc}") from exc


def image_from_bytes(raw: bytes) -> nib.Nifti1Image | nib.Nifti2Image:
    """Parse a .nii or .nii.gz held in memory; raise InputError with a readable reason."""
    if len(raw) == 0:
        raise InputError("empty file (0 bytes)")
    if raw[:2] == _GZIP_MAGIC:
        raw = _decompress(raw)
    if len(raw) < 348:
        raise InputError(f"not a NIfTI file: {len(raw)} bytes is shorter than a NIfTI header (348 bytes)")
    sizeof_hdr_le = int.from_bytes(raw[:4], "little")
    sizeof_hdr_be = int.from_bytes(raw[:4], "big")
    if 540 in (sizeof_hdr_le, sizeof_hdr_be):
        image_class = nib.Nifti2Image
    elif 348 in (sizeof_hdr_le, sizeof_hdr_be):
        image_class = nib.Nifti1Image
    else:
        raise InputError("not a NIfTI file: its header does not start with the NIfTI-1 or NIfTI-2 size field")
    try:
        return image_class.from_bytes(raw)
    except Exception as exc:  # nibabel raises several types for malformed headers
        raise InputError(f"not a readable NIfTI file: {exc}") from exc


def volume_from_image(image: nib.Nifti1Image | nib.Nifti2Image, source: str) -> Volume:
    """Validate shape and values and return a float32 Volume (raises InputError)."""
    shape = tuple(int(n) for n in image.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3:
        raise InputError(
            f"{len(shape)}D volume of shape {shape}: only 3D scans are supported (split the series into 3D files)"
        )
    if len(shape) < 3 or min(shape) < 2:
        raise InputError(f"2D image of shape {tuple(image.shape)}: a scan needs at least 2 voxels along each of 3 axes")
    try:
        data = np.asarray(image.get_fdata(dtype=np.float32), dtype=np.float32).reshape(shape)
    except (EOFError, ValueError, OSError) as exc:
        raise InputError(f"truncated voxel data: {exc}") from exc
    bad = np.count_nonzero(~np.isfinite(data))
    if bad:
        raise InputError(f"NaN values: {bad} of {data.size} voxels are NaN or infinite")
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"unusable affine (singular or not finite): {affine.tolist()}")
    header = image.header.copy()
    # nibabel moves scl_slope/scl_inter out of a loaded header into the data proxy: read them there (and
    # put them back in the header, which then describes the file)
    slope, inter = getattr(image.dataobj, "slope", 1.0), getattr(image.dataobj, "inter", 0.0)
    scaled = (slope, inter) != (1.0, 0.0)
    if scaled:
        header.set_slope_inter(slope, inter)
    return Volume(
        data=data,
        affine=affine,
        source=source,
        source_dtype=str(image.get_data_dtype()),
        header=header,
        scaled=scaled,
    )


def load_volume(path: str | os.PathLike) -> Volume:
    """Load a local 3D NIfTI file as float32 with its affine (raises InputError)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or exc}") from exc
    return volume_from_image(image_from_bytes(raw), source=path)


def save_nifti_atomic(image: nib.Nifti1Image | nib.Nifti2Image, path: str | os.PathLike) -> None:
    """Write to a temporary name in the same folder, then rename: never a half-written file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = ".nii.gz" if path.lower().endswith(".gz") else ".nii"
    handle, temporary = tempfile.mkstemp(prefix=".partial-", suffix=suffix, dir=folder)
    os.close(handle)
    try:
        nib.save(image, temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


@dataclass(frozen=True)
class SliceSidecar:
    """What a BIDS JSON sidecar says of a scan's slices (DICOM's SliceThickness and SpacingBetweenSlices)."""

    path: str
    thickness_mm: float | None = None
    spacing_between_slices_mm: float | None = None

    def describe(self) -> str:
        parts = [f"slice thickness {self.thickness_mm:g} mm" if self.thickness_mm else "",
                 f"spacing between slices {self.spacing_between_slices_mm:g} mm"
                 if self.spacing_between_slices_mm else ""]
        return ", ".join(p for p in parts if p) + f" (sidecar {os.path.basename(self.path)})"


def sidecar_path(nifti_path: str | os.PathLike) -> str:
    """The BIDS sidecar of a NIfTI file: the same name with .json for .nii / .nii.gz."""
    return strip_nifti_suffix(os.fspath(nifti_path)) + ".json"


def read_slice_sidecar(nifti_path: str | os.PathLike, text: str | None = None) -> SliceSidecar | None:
    """The slice thickness and spacing of a NIfTI file's BIDS sidecar (`<stem>.json`), None when there is no
    sidecar or it names neither. `text`: the sidecar's content, already read (remote stores). A sidecar
    that is not a JSON object, or a value that is not a positive number of mm, raises InputError naming it."""
    import json

    path = sidecar_path(nifti_path)
    if text is None:
        if not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot read the JSON sidecar: {exc}") from exc
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: the JSON sidecar is not valid JSON ({exc})") from exc
    if not isinstance(fields, dict):
        raise InputError(f"{path}: the JSON sidecar is not a JSON object")
    values = {}
    for key in ("SliceThickness", "SpacingBetweenSlices"):
        value = fields.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1000:
            raise InputError(f"{path}: {key} must be a positive number of mm, got {value!r}")
        values[key] = float(value)
    if not values:
        return None
    return SliceSidecar(path, values.get("SliceThickness"), values.get("SpacingBetweenSlices"))
