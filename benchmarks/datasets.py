"""Data the benchmarks make or read: a synthetic HR slice store from a stage I model (`synthesize_hr`),
an HR volume's normalised slices (`normalized_slices`), and the tiny synthetic data of `--quick` runs, made
in their scratch folder (nothing downloaded, no `make demo` outputs needed): HR phantoms, their LR versions
and slice store.

The quick data have the shapes the debug configs (configs/debug) need: 32x32 in-plane (16x16 stage I
tiles, 12x12 stage II patches), 17 slices along axis 2, so K = 4 keeps 5 slices and a synthetic HR
volume has 17 again (stage II patches are 9 slices deep).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

K = 4
SLICE_AXIS = 2
HR_SHAPE = (32, 32, 4 * K + 1)
DEBUG_STAGE1 = "configs/debug/stage1.yaml"
DEBUG_STAGE2 = "configs/debug/stage2.yaml"


def hr_volumes(folder: Path, count: int, shape: tuple[int, int, int] = HR_SHAPE, seed: int = 0,
               prefix: str = "hr") -> list[str]:
    """Head-like phantoms (preprocessing.synth.make_phantom) with 1 mm voxels, slices along axis 2."""
    from preprocessing.synth import make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        data = make_phantom(np.random.default_rng([seed, index]), *shape).astype(np.float32)
        path = folder / f"{prefix}{index:02d}.nii.gz"
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
        paths.append(str(path))
    return paths


def hr_train(scratch: Path, count: int = 4) -> str:
    """The folder of the training pool's HR phantoms (scratch/hr_train), written on first use."""
    folder = scratch / "hr_train"
    if not folder.is_dir():
        hr_volumes(folder, count, seed=1)
    return str(folder)


def lr_store(scratch: Path) -> str:
    """A slice store of the LR scans of the training pool (`hr_train`: every K-th slice,
    preprocessing.degrade), written by the converter in this process."""
    from preprocessing.degrade import degrade_files
    from preprocessing.to_zarr import convert

    written, failures = degrade_files([hr_train(scratch)], str(scratch / "lr"), K, SLICE_AXIS)
    store = str(scratch / "lr.zarr")
    report = convert([str(scratch / "lr")], store, slice_axis=SLICE_AXIS, workers=0, progress=False)
    failures += report.failures
    if failures or len(report.stored) != len(written):
        raise RuntimeError(f"quick LR store {store}: {len(report.stored)} of {len(written)} scans stored, {failures}")
    return store


def normalized_slices(path: str, slice_axis: int = SLICE_AXIS) -> np.ndarray:
    """An HR volume's slices along `slice_axis` (slices first), normalised like the slice stores."""
    from slicesr.geometry import to_slice_first
    from slicesr.intensity import normalize, robust_intensity_params
    from slicesr.nifti import load_volume

    volume = load_volume(path)
    slices, _ = to_slice_first(volume.data, volume.affine, slice_axis)
    return normalize(slices, robust_intensity_params(slices))


def synthesize_hr(vae: str, lr_store: str, output: str, k: int, keep_acquired: bool = False) -> str:
    """The synthetic HR store that the stage I model at `vae` makes of `lr_store` (resumable per scan)."""
    from slicesr.modeldir import model_fingerprint
    from slicesr.stage1.synthesis import synthesize_store
    from slicesr.stage1.train import load_vae
    from slicesr.store import SliceStore

    model, config, _ = load_vae(vae)
    report = synthesize_store(model, SliceStore.open(lr_store), SliceStore.create(output), k, batch_size=64,
                              overlap=config.synthesis.tile_overlap, keep_acquired=keep_acquired,
                              model_id=model_fingerprint(vae), progress=False)
    if report.failures:
        raise RuntimeError(f"synthesis into {output}: {report.failures}")
    return output


def add_volume_arguments(parser) -> None:
    """The real volumes a quality benchmark trains and scores on (../shared/data), slice axis 2."""
    parser.add_argument("--brain-train", nargs="+", default=["../shared/data/brain/train"])
    parser.add_argument("--brain-eval", nargs="+",
                        default=sorted(str(p) for p in Path("../shared/data/brain/eval").glob("*.nii.gz")))
    parser.add_argument("--knee", default="../shared/data/knee/pykneer_dess_echo1.nii.gz")
    parser.add_argument("--brain-axis", type=int, default=2)
    parser.add_argument("--knee-axis", type=int, default=2)


def check_volume_arguments(parser, args) -> None:
    """Exit 2 (argparse's usage error) naming each missing volume of `add_volume_arguments`, before any work."""
    problems = [f"--brain-train {path}: no such file or folder" for path in args.brain_train if not Path(path).exists()]
    if not args.brain_eval:
        problems.append("--brain-eval: no held-out brain volume given (the default folder has no .nii.gz)")
    problems += [f"--brain-eval {path}: no such file" for path in args.brain_eval if not Path(path).is_file()]
    if args.knee and not Path(args.knee).is_file():
        problems.append(f"--knee {args.knee}: no such file")
    if problems:
        parser.error("; ".join(problems))


def quick_volumes(scratch: Path, workdir: str) -> dict:
    """`--quick` values of `add_volume_arguments` (phantoms in the scratch folder) and of --workdir."""
    return {"workdir": str(scratch / workdir),
            "brain_train": lambda args: [hr_train(scratch)],
            "brain_eval": lambda args: hr_volumes(scratch / "hr_eval", 1, seed=2),
            "knee": lambda args: hr_volumes(scratch / "knee", 1, seed=3, prefix="knee")[0]}
