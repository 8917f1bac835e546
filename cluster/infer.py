"""`python -m cluster.infer`: super-resolve thousands of scans on a Ray cluster, one task per scan.

    python -m cluster.infer INPUT [INPUT ...] --output OUT --model MODEL [--k K] [--slice-axis auto|0|1|2]
        [--no-keep-acquired] [--address RAY_ADDRESS] [--cpus-per-task 1] [--storage-option KEY=VALUE ...]
        [--tracking-uri URI] [--overwrite] [--tta] [--uncertainty] [--tta-angles DEG[,DEG]] [--tta-flips all|slice]

INPUT: NIfTI files, folders, globs, s3:// prefixes, `@list.txt` files or slice stores (cluster.infer_inputs:
which scan gets which output name). Outputs are `OUT/<name>.nii.gz`, written by the same code as
`slicesr infer` (`infer_volume`, `output_image`) in Ray tasks (cluster.infer_dispatch).

MODEL (linear, cubic, a model directory, `models:/NAME@ALIAS`) is resolved once on the driver (here); a
model directory travels to the tasks through the Ray object store and is written once per worker process
to a temporary folder (cached by the weights' SHA-256).

A run is resumable: an existing output is skipped unless --overwrite. A bad input never stops the others:
failures are printed and written to OUT/failures.jsonl. Exit codes: 0 all done, 1 some inputs failed (the
rest done), 2 usage or environment error found before any task starts (no inputs, bad model or K,
unusable output, unreachable Ray address).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec

from cluster.infer_dispatch import dispatch, model_files, write_failures
from cluster.infer_inputs import collect_jobs
from slicesr.cli_common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    TTA_ANGLES_HELP,
    TTA_FLIP_NAMES,
    TTA_FLIPS_HELP,
    UsageError,
    add_batch_options,
    finish,
    parse_angles,
    parse_storage_options,
    run_command,
)
from slicesr.nifti import is_nifti_name
from slicesr.store import describe_storage_error, is_remote

log = logging.getLogger("cluster.infer")


# --------------------------------------------------------------------------- report and model
@dataclass
class InferManyReport:
    written: list[str] = field(default_factory=list)  # output paths / URIs
    skipped: list[str] = field(default_factory=list)  # outputs that already existed
    failures: list[dict[str, Any]] = field(default_factory=list)  # {"source", "error", ...}
    method: str = ""
    k: int | None = 0
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failures else EXIT_OK


@dataclass
class ModelSpec:
    """What the tasks need to rebuild the method: a baseline name, or a model directory's files."""

    spec: str  # MODEL as given: linear, cubic, a folder or a models:/ URI
    label: str
    k: int | None  # None with --spacing: each scan's ratio
    key: str = ""  # cache key: the weights' SHA-256 plus a digest of the other files
    files: dict[str, bytes] | None = None


# --------------------------------------------------------------------------- driver side
def load_model(model: str, k: int | None, tracking_uri: str | None = None, spacing: bool = False) -> ModelSpec:
    """Resolve and validate MODEL once, on the driver (a models:/ URI is downloaded once, to a temporary
    folder); read a model directory's files for the tasks. UsageError when it cannot be used with K."""
    from slicesr.inference import BASELINES, Interpolation, check_k, load_method
    from slicesr.registry import is_model_uri, resolve_model_uri

    with tempfile.TemporaryDirectory(prefix="slicesr-registry-") as download:
        folder = None
        try:
            if model in BASELINES:
                method = Interpolation(model)
            else:
                if is_model_uri(model):
                    folder = Path(resolve_model_uri(model, tracking_uri, download))
                    log.info("%s resolved to the model directory %s", model, folder.relative_to(download))
                else:
                    folder = Path(model)
                    if not folder.is_dir():
                        raise UsageError(f"--model {model}: not linear, cubic, a model directory or a models:/ "
                                         "URI (no such folder)")
                method = load_method(str(folder))
        except UsageError:
            raise
        except (ValueError, RuntimeError, OSError, KeyError) as exc:
            # RuntimeError: weights that do not fit the config's network
            text = str(exc)
            raise UsageError(text if model in text else f"--model {model}: {text}") from None
        if spacing:  # the factor comes from each scan's spacing (--spacing); checked per scan
            k = None
        else:
            k = method.trained_k if k is None else k
            if k is None:
                raise UsageError(f"--k or --spacing is needed with {model} (it was not trained for one K)")
            try:
                check_k(method, k)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        if folder is None:
            return ModelSpec(spec=model, label=method.label, k=k)
        files, key = model_files(folder)
    return ModelSpec(spec=model, label=method.label, k=k, key=key, files=files)


def prepare_output(output: str, storage_options: dict[str, Any]) -> set[str]:
    """Check that OUT is usable (create a local folder); return the names of the files already in it."""
    if is_nifti_name(output):
        raise UsageError(f"--output {output}: give a folder or s3:// prefix (one file per scan is written in it)")
    if is_remote(output):
        try:
            fs, path = fsspec.core.url_to_fs(output, **storage_options)
        except (ImportError, ValueError) as exc:
            raise UsageError(f"--output {output}: {exc}") from None
        bucket = path.split("/", 1)[0]
        try:
            if not fs.exists(bucket):
                raise FileNotFoundError(bucket)
            if fs.isfile(path):
                raise UsageError(f"--output {output} is an object, not a prefix")
            try:
                return {name.rstrip("/").rsplit("/", 1)[-1] for name in fs.ls(path, detail=False)}
            except FileNotFoundError:
                return set()
        except UsageError:
            raise
        except (OSError, ValueError) as exc:
            raise UsageError(f"--output: {describe_storage_error(output, exc)}") from None
    if os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f"--output {output} is a file, not a folder")
    try:
        os.makedirs(output, exist_ok=True)
        return set(os.listdir(output))
    except OSError as exc:
        raise UsageError(f"--output: {describe_storage_error(output, exc)}") from None


def connect_ray(address: str | None) -> None:
    """Join the Ray cluster at `address` (or RAY_ADDRESS, or start a local one) unless already connected,
    as cluster.train does; an address where nothing answers is refused in seconds."""
    from cluster.train import check_ray_address
    from cluster.train import connect_ray as join

    try:
        check_ray_address(address)
        join(address)
    except ValueError as exc:
        raise UsageError(str(exc).replace("cluster.address", "--address").replace("no Ray cluster answers there",
                                                                                  "cannot reach Ray")) from None


def infer_many(
    inputs: list[str],
    output: str,
    model: str,
    k: int | None = None,
    *,
    slice_axis: int | str = "auto",
    keep_acquired: bool = True,
    address: str | None = None,
    cpus_per_task: float = 1.0,
    storage_options: dict[str, Any] | None = None,
    tracking_uri: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    tta: bool = False,
    uncertainty: bool = False,
    spacing_mm: float | None = None,
    tta_angles: tuple[float, ...] = (),
    tta_flips: str = "all",
) -> InferManyReport:
    """Super-resolve every scan named by `inputs` into OUT/<name>.nii.gz, one Ray task per scan.

    Raises UsageError before any task starts for problems that stop the whole run; a bad scan becomes a
    failure row (also written to OUT/failures.jsonl) and the others are still done.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    storage_options = dict(storage_options or {})
    if str(slice_axis) not in ("auto", "0", "1", "2"):
        raise UsageError(f"--slice-axis must be auto, 0, 1 or 2, got {slice_axis!r}")
    slice_axis = "auto" if slice_axis == "auto" else int(slice_axis)
    if not cpus_per_task > 0:
        raise UsageError(f"--cpus-per-task must be more than 0, got {cpus_per_task}")
    if not inputs:
        raise UsageError("no inputs given")
    if is_nifti_name(output):
        raise UsageError(f"--output {output}: give a folder or s3:// prefix (one file per scan is written in it)")
    if spacing_mm is not None and k is not None:
        raise UsageError("give --k or --spacing, not both")
    if spacing_mm is not None and not spacing_mm > 0:
        raise UsageError(f"--spacing must be positive, got {spacing_mm}")
    spec = load_model(model, k, tracking_uri, spacing=spacing_mm is not None)
    from slicesr.inference import check_tta_angles, check_tta_flips

    try:
        tta_angles = check_tta_angles(tta_angles)
        check_tta_flips(tta_flips)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    tta = tta or bool(tta_angles) or tta_flips != "all"
    if (tta or uncertainty) and spec.files is None:
        raise UsageError(f"{spec.label} gives the same result under every flip: --tta and --uncertainty need a "
                         "trained model")
    jobs, problems = collect_jobs(inputs, output, storage_options)
    if not jobs:
        details = "; ".join(f"{p['source']}: {p['error']}" for p in problems)
        raise UsageError(f"no NIfTI inputs found ({details})" if details else "no NIfTI inputs found")
    if uncertainty:
        from slicesr.inference import uncertainty_path

        targets = {os.path.basename(job.target) for job in jobs}
        clashes = sorted(t for t in targets if os.path.basename(uncertainty_path(t)) in targets)
        if clashes:
            raise UsageError(f"the uncertainty map of {clashes[0]} would overwrite another scan's output: rename "
                             "that input")
    existing = prepare_output(output, storage_options)

    report = InferManyReport(failures=list(problems), method=spec.label, k=spec.k)
    todo = []
    from slicesr.inference import uncertainty_path

    for job in jobs:
        done = os.path.basename(job.target) in existing and (
            not uncertainty or os.path.basename(uncertainty_path(job.target)) in existing)
        if not overwrite and done:
            report.skipped.append(job.target)
        else:
            todo.append(job)
    log.info("%d scans found: %d to super-resolve with %s (K=%s), %d already done", len(jobs), len(todo),
             spec.label, spec.k, len(report.skipped))
    if todo:
        connect_ray(address)
    settings = {"k": spec.k, "slice_axis": slice_axis, "keep_acquired": keep_acquired, "tta": tta,
                "uncertainty": uncertainty, "spacing_mm": spacing_mm, "tta_angles": list(tta_angles),
                "tta_flips": tta_flips,
                "storage_options": storage_options, "threads": max(1, int(cpus_per_task))}
    try:
        with tqdm(total=len(todo), unit="scan", desc="infer", disable=not progress or not todo,
                  file=sys.stderr) as bar:
            for row in (dispatch(todo, spec, settings, cpus_per_task) if todo else ()):
                if row["status"] == "written":
                    report.written.append(row["output"])
                else:
                    log.warning("failed: %s: %s", row["source"], row["error"])
                    report.failures.append({key: row[key] for key in ("source", "name", "output", "error")})
                bar.update(1)
    finally:
        write_failures(output, sorted(report.failures, key=lambda row: row["source"]), storage_options)
    report.written.sort()
    report.seconds = time.perf_counter() - started
    return report


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cluster.infer",
        description="Super-resolve scans along their slice axis on a Ray cluster, one task per scan.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="NIfTI file, folder (recursive), glob, s3://bucket/prefix, @list.txt (one input per "
                        "line) or a slice store made by preprocessing.to_zarr")
    parser.add_argument("--output", "-o", required=True, metavar="OUT",
                        help="local folder or s3://bucket/prefix; one <name>.nii.gz per scan")
    parser.add_argument("--model", required=True,
                        help="linear, cubic, a model directory (stage I or II) or models:/NAME@ALIAS")
    parser.add_argument("--k", type=int, default=None, help="slices per acquired gap (default: the model's)")
    parser.add_argument("--slice-axis", default="auto", choices=["auto", "0", "1", "2"],
                        help="auto: largest voxel spacing (for a store scan: the axis it was stored along)")
    parser.add_argument("--no-keep-acquired", action="store_true",
                        help="take the method's output at the acquired slices too")
    parser.add_argument("--address", default=None, metavar="RAY_ADDRESS",
                        help="Ray cluster (HOST:PORT, ray://HOST:PORT, auto); default RAY_ADDRESS or a local Ray")
    parser.add_argument("--cpus-per-task", type=float, default=1.0, metavar="N",
                        help="CPUs reserved (and torch threads) per scan task (default 1)")
    parser.add_argument("--tracking-uri", default=None, metavar="URI",
                        help="MLflow tracking URI for models:/ (default MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--spacing", type=float, default=None, metavar="MM",
                        help="the outputs' slice spacing in mm instead of --k (see slicesr infer)")
    parser.add_argument("--tta", action="store_true",
                        help="average over the 8 flips (and a through-plane 2D generator's orientations)")
    parser.add_argument("--uncertainty", action="store_true",
                        help="--tta, and <name>_uncertainty.nii.gz beside each output (per-voxel SD)")
    parser.add_argument("--tta-angles", type=parse_angles, default=(), metavar="DEG[,DEG]", help=TTA_ANGLES_HELP)
    parser.add_argument("--tta-flips", choices=TTA_FLIP_NAMES, default="all", help=TTA_FLIPS_HELP)
    add_batch_options(parser, "super-resolve again scans whose output exists")
    return parser


def _infer_many(args: argparse.Namespace) -> int:
    report = infer_many(
        args.inputs, args.output, args.model, args.k, slice_axis=args.slice_axis,
        keep_acquired=not args.no_keep_acquired, address=args.address, cpus_per_task=args.cpus_per_task,
        storage_options=parse_storage_options(args.storage_option), tracking_uri=args.tracking_uri,
        overwrite=args.overwrite, progress=not args.no_progress, tta=args.tta, uncertainty=args.uncertainty,
        spacing_mm=args.spacing, tta_angles=args.tta_angles, tta_flips=args.tta_flips,
    )
    grid = f"K={report.k}" if args.spacing is None else f"spacing {args.spacing:g} mm"
    return finish(f"super-resolved {len(report.written)} scans with {report.method} ({grid}), already done "
                  f"{len(report.skipped)}, failed {len(report.failures)} -> {args.output} ({report.seconds:.1f} s)",
                  report.failures)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _infer_many)


if __name__ == "__main__":
    # The tasks run cluster.infer_dispatch.run_job, found by Ray workers under that importable module even
    # when this file runs as __main__.
    sys.exit(main())
