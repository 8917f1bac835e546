"""Synthetic thick-slice MR-like scans for tests and scale runs (no real data needed).

    python -m preprocessing.synth --count N --output DIR [--shape 256,256,32] [--seed 0]

Each scan is a smooth head-like phantom (nested ellipsoids, a few small structures, a bias field,
Rician-like noise) with thick slices, written with a random orientation code (axis order and flips),
an oblique affine for some scans, one of a few spacings and one of several storage conventions
(int16 with scl_slope, float32, uint8, z-scored with a constant negative background).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from slicesr.cli_common import EXIT_OK, EXIT_USAGE
from slicesr.nifti import save_nifti_atomic

IN_PLANE_SPACINGS_MM = (0.5, 0.8, 1.0)
SLICE_SPACINGS_MM = (3.0, 4.0, 5.0, 6.0)
STORAGE_KINDS = ("int16_scaled", "float32", "uint8", "zscored")


@dataclass(frozen=True)
class SynthScan:
    data: np.ndarray  # as written, in its final axis order
    affine: np.ndarray
    slice_axis: int
    kind: str


def make_phantom(rng: np.random.Generator, rows: int, cols: int, num_slices: int) -> np.ndarray:
    """A float32 (rows, cols, num_slices) head-like phantom with values in about [0, 1]."""
    r = np.linspace(-1, 1, rows, dtype=np.float32)[:, None, None]
    c = np.linspace(-1, 1, cols, dtype=np.float32)[None, :, None]
    s = np.linspace(-1, 1, num_slices, dtype=np.float32)[None, None, :]
    volume = np.zeros((rows, cols, num_slices), dtype=np.float32)

    def ellipsoid(center, radii, value, softness=0.08):
        q = ((r - center[0]) / radii[0]) ** 2 + ((c - center[1]) / radii[1]) ** 2 + ((s - center[2]) / radii[2]) ** 2
        # A smooth step at the boundary: anatomy-like edges, not binary masks.
        return value / (1.0 + np.exp(np.minimum((q - 1.0) / softness, 60.0)))

    jitter = lambda scale: float(rng.uniform(-scale, scale))  # noqa: E731
    volume += ellipsoid((jitter(0.05), jitter(0.05), 0), (0.85 + jitter(0.05), 0.75 + jitter(0.05), 1.1), 0.35)
    volume += ellipsoid((jitter(0.05), jitter(0.05), 0), (0.72 + jitter(0.04), 0.62 + jitter(0.04), 1.0), 0.45)
    for _ in range(int(rng.integers(3, 7))):
        center = (jitter(0.45), jitter(0.4), jitter(0.6))
        radii = (float(rng.uniform(0.06, 0.2)), float(rng.uniform(0.06, 0.2)), float(rng.uniform(0.2, 0.6)))
        volume += ellipsoid(center, radii, float(rng.uniform(-0.4, 0.35)), softness=0.15)
    bias = 1.0 + 0.15 * (r * jitter(1) + c * jitter(1) + s * jitter(0.5))
    volume *= bias
    np.clip(volume, 0, None, out=volume)
    noise_sigma = float(rng.uniform(0.01, 0.03))
    real = volume + rng.standard_normal(volume.shape, dtype=np.float32) * noise_sigma
    imaginary = rng.standard_normal(volume.shape, dtype=np.float32) * noise_sigma
    return np.sqrt(real * real + imaginary * imaginary)


def random_rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-max_degrees, max_degrees))
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def make_scan(rng: np.random.Generator, rows: int, cols: int, num_slices: int, oblique_fraction: float = 0.4) -> SynthScan:
    """A phantom with a random axis order, flips, spacing, obliquity and storage convention."""
    phantom = make_phantom(rng, rows, cols, num_slices)
    in_plane = float(rng.choice(IN_PLANE_SPACINGS_MM))
    spacing = np.array([in_plane, in_plane, float(rng.choice(SLICE_SPACINGS_MM))])
    order = rng.permutation(3)
    data = np.transpose(phantom, order)
    spacing = spacing[order]
    slice_axis = int(np.where(order == 2)[0][0])
    directions = np.eye(3)[:, rng.permutation(3)]  # random orientation code (e.g. PIR, LPS, ...)
    flips = rng.choice([-1.0, 1.0], size=3)
    directions = directions * flips
    if rng.uniform() < oblique_fraction:
        directions = random_rotation(rng, 25.0) @ directions
    affine = np.eye(4)
    affine[:3, :3] = directions * spacing
    affine[:3, 3] = rng.uniform(-120, 120, size=3)
    kind = str(rng.choice(STORAGE_KINDS))
    if kind == "zscored":
        foreground = data > 0.1
        values = data[foreground]
        data = np.where(foreground, (data - values.mean()) / values.std(), np.float32(-3.5)).astype(np.float32)
    elif kind == "uint8":
        data = np.clip(np.round(data * 200), 0, 255).astype(np.uint8)
    elif kind == "int16_scaled":
        data = data.astype(np.float32)
    return SynthScan(data=np.ascontiguousarray(data), affine=affine, slice_axis=slice_axis, kind=kind)


def to_image(scan: SynthScan) -> nib.Nifti1Image:
    if scan.kind == "int16_scaled":
        image = nib.Nifti1Image(scan.data, scan.affine)
        image.set_data_dtype(np.int16)  # nibabel picks scl_slope/inter to fit the floats
    else:
        image = nib.Nifti1Image(scan.data, scan.affine)
    image.header.set_xyzt_units("mm")
    return image


def write_scans(count: int, output: str, shape: tuple[int, int, int] = (256, 256, 32), seed: int = 0,
                compressed: bool = True) -> list[str]:
    """Write `count` synthetic scans to `output`; scan i depends only on (seed, i)."""
    os.makedirs(output, exist_ok=True)
    paths = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        scan = make_scan(rng, *shape)
        path = os.path.join(output, f"synth_{index:05d}.nii" + (".gz" if compressed else ""))
        save_nifti_atomic(to_image(scan), path)
        paths.append(path)
    return paths


def _parse_shape(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.split(",")]
    if len(parts) != 3 or min(parts) < 2:
        raise ValueError(f"--shape must be ROWS,COLS,SLICES with each at least 2, got {text!r}")
    return tuple(parts)  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m preprocessing.synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--shape", default="256,256,32", help="ROWS,COLS,SLICES of the phantom (slices are thick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--uncompressed", action="store_true", help="write .nii instead of .nii.gz")
    try:
        args = parser.parse_args(argv)
        shape = _parse_shape(args.shape)
        if args.count < 1:
            raise ValueError(f"--count must be at least 1, got {args.count}")
    except SystemExit as exc:
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    paths = write_scans(args.count, args.output, shape, args.seed, compressed=not args.uncompressed)
    print(f"wrote {len(paths)} synthetic scans to {args.output}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
