"""Shared fixtures: tiny synthetic NIfTI scans written by the tests themselves (nothing downloaded)."""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest

from preprocessing.synth import make_scan, to_image

# Keep subprocesses and Dask workers from oversubscribing the 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def write_nifti(path, data, affine=None, dtype=None) -> str:
    image = nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine)
    if dtype is not None:
        image.set_data_dtype(dtype)
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    nib.save(image, str(path))
    return str(path)


def write_synth(folder, count: int, shape=(20, 18, 6), seed: int = 0, prefix: str = "scan") -> list[str]:
    """Small random-orientation phantoms; scan i depends on (seed, i) only."""
    os.makedirs(str(folder), exist_ok=True)
    paths = []
    for index in range(count):
        scan = make_scan(np.random.default_rng([seed, index]), *shape)
        path = os.path.join(str(folder), f"{prefix}{index:03d}.nii.gz")
        nib.save(to_image(scan), path)
        paths.append(path)
    return paths


@pytest.fixture
def synth_dir(tmp_path):
    folder = tmp_path / "lr"
    write_synth(folder, 4)
    return folder


@pytest.fixture
def bad_inputs(tmp_path):
    """One file per kind of bad input, with the phrase its failure row must contain."""
    folder = tmp_path / "bad"
    folder.mkdir()
    good = write_nifti(folder / "good.nii.gz", np.random.default_rng(0).random((8, 7, 5), dtype=np.float32))
    with open(good, "rb") as handle:
        whole = handle.read()
    (folder / "truncated.nii.gz").write_bytes(whole[: len(whole) // 2])
    (folder / "notnifti.nii").write_text("this is a text file, not an image\n" * 20)
    (folder / "empty.nii.gz").write_bytes(b"")
    write_nifti(folder / "fourd.nii.gz", np.zeros((6, 6, 4, 3), dtype=np.float32))
    write_nifti(folder / "twod.nii.gz", np.zeros((6, 6), dtype=np.float32))
    nan = np.ones((6, 6, 4), dtype=np.float32)
    nan[1, 2, 3] = np.nan
    write_nifti(folder / "nan.nii.gz", nan)
    # An uncompressed file cut short inside its voxel data.
    write_nifti(folder / "short.nii", np.ones((10, 10, 10), dtype=np.float32))
    with open(folder / "short.nii", "r+b") as handle:
        handle.truncate(352 + 1000)
    # A gzip stream whose payload is not NIfTI.
    (folder / "gzipped_text.nii.gz").write_bytes(gzip.compress(b"hello" * 200))
    return folder, {
        "truncated.nii.gz": "truncated gzip",
        "notnifti.nii": "not a NIfTI",
        "empty.nii.gz": "empty file",
        "fourd.nii.gz": "4D volume",
        "twod.nii.gz": "2D image",
        "nan.nii.gz": "NaN values",
        "short.nii": "truncated voxel data",
        "gzipped_text.nii.gz": "not a NIfTI",
    }
