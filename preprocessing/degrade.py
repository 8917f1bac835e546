"""Make LR NIfTI scans from HR ones by keeping slices 0, K, 2K, ... of the slice axis.

    python -m preprocessing.degrade --input HR [HR ...] --output DIR --k K [--slice-axis auto|0|1|2]
                                    [--slice-profile point|box|gaussian --slice-thickness MM]

The affine's slice column is multiplied by K, so every kept slice keeps its world position; the
voxel values and data type are unchanged (bit-exact). The demo, benchmarks and evaluation make
their LR scans with this; no training path of the no-ground-truth method reads the HR files.
Exit codes: 0 all written, 1 some inputs failed (the rest written), 2 usage error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import nibabel as nib
import numpy as np

from preprocessing.sources import expand_sources
from slicesr.cli_common import UsageError, finish, run_command
from slicesr.degradation import PROFILES, degrade_profile, keep_every_kth
from slicesr.errors import InputError
from slicesr.geometry import resolve_slice_axis, voxel_spacing
from slicesr.nifti import image_from_bytes, save_nifti_atomic, volume_from_image

log = logging.getLogger("preprocessing.degrade")


def degrade_image(image: nib.Nifti1Image, k: int, slice_axis: int | str = "auto", profile: str = "point",
                  thickness_mm: float | None = None) -> nib.Nifti1Image:
    """The LR image: kept slices with the stored data type and scaling, and the K-times slice step; with a
    box or Gaussian slice profile of `thickness_mm`, float32 slices integrating that thickness."""
    volume = volume_from_image(image, "input")  # validates: 3D, finite, usable affine
    if profile != "point":
        return _profiled_image(image, volume, k, slice_axis, profile, thickness_mm)
    # The stored integers and their scl_slope/inter are kept as they are: the LR voxels are bit-exact.
    raw = image.dataobj.get_unscaled() if hasattr(image.dataobj, "get_unscaled") else np.asanyarray(image.dataobj)
    slope, inter = getattr(image.dataobj, "slope", 1.0), getattr(image.dataobj, "inter", 0.0)
    while raw.ndim > 3 and raw.shape[-1] == 1:
        raw = raw[..., 0]
    affine = np.asarray(image.affine, dtype=np.float64)
    axis = resolve_slice_axis(affine, slice_axis)
    if raw.shape[axis] < k + 1:
        raise InputError(f"only {raw.shape[axis]} slices along axis {axis}: K={k} would keep a single slice")
    kept, lr_affine = keep_every_kth(raw, affine, k, axis)
    header = image.header.copy()
    header.set_data_shape(kept.shape)
    lr = type(image)(np.ascontiguousarray(kept), lr_affine, header=header)
    lr.header.set_slope_inter(slope, inter)
    # Keep the header's codes; both forms carry the new affine.
    lr.set_qform(lr_affine, code=int(image.header["qform_code"]) or 1)
    lr.set_sform(lr_affine, code=int(image.header["sform_code"]) or 1)
    return lr


def _profiled_image(image, volume, k: int, slice_axis, profile: str, thickness_mm: float | None) -> nib.Nifti1Image:
    affine = np.asarray(image.affine, dtype=np.float64)
    axis = resolve_slice_axis(affine, slice_axis)
    if volume.data.shape[axis] < k + 1:
        raise InputError(f"only {volume.data.shape[axis]} slices along axis {axis}: K={k} would keep a single slice")
    hr_spacing = float(voxel_spacing(affine)[axis])
    data, lr_affine = degrade_profile(volume.data, affine, k, axis, profile,
                                      None if thickness_mm is None else thickness_mm / hr_spacing)
    header = image.header.copy()
    header.set_data_shape(data.shape)
    header.set_data_dtype(np.float32)
    lr = type(image)(np.ascontiguousarray(data, dtype=np.float32), lr_affine, header=header)
    lr.header.set_slope_inter(1.0, 0.0)
    lr.set_qform(lr_affine, code=int(image.header["qform_code"]) or 1)
    lr.set_sform(lr_affine, code=int(image.header["sform_code"]) or 1)
    return lr


def degrade_files(inputs: list[str], output: str, k: int, slice_axis: int | str = "auto", profile: str = "point",
                  thickness_mm: float | None = None) -> tuple[list[str], list[dict]]:
    expansion = expand_sources(inputs)
    if not expansion.scans:
        details = "; ".join(f"{p['source']}: {p['error']}" for p in expansion.problems)
        raise UsageError(f"no NIfTI inputs found ({details})" if details else "no NIfTI inputs found")
    failures = list(expansion.problems)
    written = []
    for source in expansion.scans:
        try:
            with open(source.uri, "rb") as handle:
                image = image_from_bytes(handle.read())
            lr = degrade_image(image, k, slice_axis, profile, thickness_mm)
            name = source.scan_id + (".nii.gz" if source.uri.lower().endswith(".gz") else ".nii")
            target = os.path.join(output, name)
            save_nifti_atomic(lr, target)
            written.append(target)
            log.info("%s -> %s %s", source.uri, target, lr.shape)
        except (InputError, ValueError, OSError) as exc:
            failures.append({"source": source.uri, "error": str(exc)})
    return written, failures


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m preprocessing.degrade", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", "-i", nargs="+", required=True, metavar="HR")
    parser.add_argument("--output", "-o", required=True, metavar="DIR")
    parser.add_argument("--k", type=int, required=True, help="keep one slice of every K")
    parser.add_argument("--slice-axis", default="auto", choices=["auto", "0", "1", "2"])
    parser.add_argument("--slice-profile", default="point", choices=list(PROFILES),
                        help="what an LR slice integrates: point (the paper: the kept slice itself, bit-exact), box "
                        "or gaussian (FWHM) of --slice-thickness around each kept slice (float32 output)")
    parser.add_argument("--slice-thickness", type=float, default=None, metavar="MM",
                        help="slice thickness in mm for the box and gaussian profiles (below the LR spacing: gaps)")
    return parser


def _degrade(args: argparse.Namespace) -> int:
    if args.k < 2:
        raise UsageError(f"--k must be 2 or more, got {args.k}")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UsageError(f"output {args.output} is a file, not a folder")
    if args.slice_profile != "point" and not (args.slice_thickness and args.slice_thickness > 0):
        raise UsageError(f"--slice-profile {args.slice_profile} needs a positive --slice-thickness MM")
    if args.slice_profile == "point" and args.slice_thickness:
        log.warning("--slice-thickness %g mm is not used with the point profile (every K-th slice kept as it is); "
                    "give --slice-profile box or gaussian for thick slices", args.slice_thickness)
    axis = args.slice_axis if args.slice_axis == "auto" else int(args.slice_axis)
    written, failures = degrade_files(args.input, args.output, args.k, axis, args.slice_profile, args.slice_thickness)
    profile = "" if args.slice_profile == "point" else f", {args.slice_profile} profile of {args.slice_thickness:g} mm"
    return finish(f"wrote {len(written)} LR scans (K={args.k}{profile}) to {args.output}, failed {len(failures)}",
                  failures)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _degrade)


if __name__ == "__main__":
    sys.exit(main())
