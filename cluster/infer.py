"""`python -m cluster.infer`: super-resolve thousands of scans on a Ray cluster, one task per scan.

    python -m cluster.infer INPUT [INPUT ...] --output OUT --model MODEL [--k K] [--slice-axis auto|0|1|2]
        [--no-keep-acquired] [--address RAY_ADDRESS] [--cpus-per-task 1] [--storage-option KEY=VALUE ...]
        [--tracking-uri URI] [--overwrite]

INPUT: a NIfTI file, a folder (searched recursively), a glob, an `s3://bucket/prefix`, a list file given as
`@list.txt` (or any `*.txt`; one input per line, relative to the list, `#` comments), or a slicesr slice
store (made by `preprocessing.to_zarr`, local or s3://): every completed scan of the store, rebuilt as a
volume from its slices, affine and intensity parameters (see `volume_from_store`).

Outputs are `OUT/<name>.nii.gz`, written by the same code as `slicesr infer` (`infer_volume`,
`output_image`). `<name>` is the scan id the converter gives the same input: the file name without
.nii/.nii.gz for a file given directly or found directly in a given folder (characters outside
[A-Za-z0-9._-] become `_`), the relative path joined by `__` for files in sub-folders, `-` and 8 hex
digits of the source's SHA-1 when two inputs would share a name, and the scan id for slice-store scans,
so a folder and the store converted from it give the same output names.

MODEL (linear, cubic, a model directory, `models:/NAME@ALIAS`) is resolved once on the driver; a model
directory travels to the tasks through the Ray object store and is written once per worker process to a
temporary folder (cached by the weights' SHA-256).

A run is resumable: an existing output is skipped unless --overwrite. A bad input never stops the others:
failures are printed and written to OUT/failures.jsonl. Exit codes: 0 all done, 1 some inputs failed (the
rest done), 2 usage or environment error found before any task starts (no inputs, bad model or K,
unusable output, unreachable Ray address).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec

from preprocessing.sources import expand_sources, make_scan_id
from slicesr.cli_common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    UsageError,
    parse_storage_options,
    run_command,
)
from slicesr.errors import InputError, StoreError
from slicesr.nifti import Volume, is_nifti_name
from slicesr.store import SliceStore, describe_storage_error, is_remote

log = logging.getLogger("cluster.infer")
FAILURES = "failures.jsonl"
OUTPUT_SUFFIX = ".nii.gz"


# --------------------------------------------------------------------------- reports and jobs
@dataclass
class InferManyReport:
    written: list[str] = field(default_factory=list)  # output paths / URIs
    skipped: list[str] = field(default_factory=list)  # outputs that already existed
    failures: list[dict[str, Any]] = field(default_factory=list)  # {"source", "error", ...}
    method: str = ""
    k: int = 0
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failures else EXIT_OK


@dataclass(frozen=True)
class Job:
    """One scan to super-resolve: a NIfTI file/object (kind "file") or a slice-store scan (kind "store")."""

    kind: str
    source: str  # file path / URI, or the store's URL
    name: str  # output name without suffix
    scan_id: str = ""  # store scans only
    target: str = ""

    @property
    def label(self) -> str:
        """What a failure row names: the file, or the store scan's group."""
        return f"{self.source.rstrip('/')}/scans/{self.scan_id}" if self.kind == "store" else self.source


@dataclass
class ModelSpec:
    """What the tasks need to rebuild the method: a baseline name, or a model directory's files."""

    spec: str  # MODEL as given: linear, cubic, a folder or a models:/ URI
    label: str
    k: int
    key: str = ""  # cache key: the weights' SHA-256 plus a digest of the other files
    files: dict[str, bytes] | None = None


# --------------------------------------------------------------------------- inputs
def _join(base: str, leaf: str) -> str:
    return f"{base.rstrip('/')}/{leaf}"


def _read_list(src: str, storage_options: dict[str, Any]) -> list[str]:
    """Entries of a list file: one input per line, `#` comments, relative entries relative to the list."""
    try:
        if is_remote(src):
            with fsspec.open(src, "rt", **storage_options) as handle:
                text = handle.read()
            base = src.rsplit("/", 1)[0]
        else:
            text = Path(src).read_text(encoding="utf-8")
            base = os.path.dirname(os.path.abspath(src))
    except FileNotFoundError:
        raise InputError("no such input list") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the input list: {exc}") from None
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not is_remote(line) and not os.path.isabs(line):
            line = _join(base, line) if is_remote(base) else os.path.join(base, line)
        entries.append(line)
    return entries


def _open_store(src: str, storage_options: dict[str, Any]) -> SliceStore | None:
    """The slice store at `src`, or None when `src` is not one (a NIfTI file, a folder of them, ...)."""
    if is_nifti_name(src) or any(char in src for char in "*?["):
        return None
    if is_remote(src):
        try:
            fs, path = fsspec.core.url_to_fs(src, **storage_options)
            if not fs.isfile(_join(path, "store.json")):
                return None
        except (OSError, ValueError):
            return None  # expand_sources reports the input with the reason
    elif not os.path.isfile(os.path.join(src, "store.json")):
        return None
    try:
        return SliceStore.open(src, storage_options)
    except StoreError as exc:
        raise InputError(str(exc)) from None


def _under(uri: str, folder: str) -> bool:
    if is_remote(folder):
        return uri.startswith(folder.rstrip("/") + "/")
    if is_remote(uri):
        return False
    return os.path.commonpath([os.path.abspath(uri), folder]) == folder


def collect_jobs(inputs: list[str], output: str, storage_options: dict[str, Any]) -> tuple[list[Job], list[dict]]:
    """Every scan named by `inputs`, with a unique output name; and the inputs that matched nothing."""
    pending, seen_lists = list(inputs), set()
    problems: list[dict] = []
    sources: list[str] = []
    stores: list[SliceStore] = []
    while pending:
        src = pending.pop(0)
        try:
            if src.startswith("@") or src.lower().endswith(".txt"):
                path = src[1:] if src.startswith("@") else src
                if path not in seen_lists:
                    seen_lists.add(path)
                    pending = _read_list(path, storage_options) + pending
                continue
            store = _open_store(src, storage_options)
        except InputError as exc:  # like an input that matches nothing: reported, the others done
            problems.append({"source": src, "error": str(exc)})
            continue
        if store is not None:
            stores.append(store)
        else:
            sources.append(src)

    candidates: list[Job] = []
    if sources:
        expansion = expand_sources(sources, storage_options)
        problems += expansion.problems
        candidates += [Job("file", scan.uri, scan.scan_id) for scan in expansion.scans]
    seen_stores = set()
    for store in stores:
        if store.url in seen_stores:
            continue
        seen_stores.add(store.url)
        ids = store.completed_ids()
        if not ids:
            problems.append({"source": store.url, "error": "the slice store holds no completed scans"})
        candidates += [Job("store", store.url, make_scan_id(scan_id), scan_id=scan_id) for scan_id in ids]

    out_root = output.rstrip("/") if is_remote(output) else os.path.abspath(output)
    # Files under OUT are earlier outputs (e.g. `infer data/ --output data/sr`): never inputs.
    jobs = [job for job in candidates if not (job.kind == "file" and _under(job.source, out_root))]
    if len(jobs) < len(candidates):
        log.warning("ignored %d input files inside the output location %s", len(candidates) - len(jobs), output)
        if not jobs:
            problems.append({"source": output, "error": "every input found is inside the output location"})
    # Names must be unique in OUT: a name shared by several inputs gets each input's hash appended.
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.name] = counts.get(job.name, 0) + 1
    unique = []
    for job in jobs:
        name = job.name
        if counts[name] > 1:
            name = f"{name}-{hashlib.sha1(job.label.encode()).hexdigest()[:8]}"
        target = _join(out_root, name + OUTPUT_SUFFIX) if is_remote(output) else os.path.join(out_root, name + OUTPUT_SUFFIX)
        unique.append(Job(job.kind, job.source, name, job.scan_id, target))
    unique.sort(key=lambda job: job.name)
    return unique, problems


# --------------------------------------------------------------------------- slice-store scans
def volume_from_store(store: SliceStore, scan_id: str) -> tuple[Volume, int]:
    """Rebuild a stored scan as the volume it was converted from, as far as the store records it;
    returns the volume and the slice axis the store was built along.

    Data: the normalised float32 slices mapped back with the scan's intensity parameters (exact up to
    float32 rounding), moved from (slice, row, col) back to the source's axis order with the stored
    affine (which gives the source's affine exactly). Data type: an integer source whose rebuilt values
    are whole numbers in range is written as that integer type (integer scans come back bit for bit);
    otherwise (a scaled integer source, scl_slope/inter) as that type with a new slope chosen by nibabel.
    Not in the store, so not reproduced: the NIfTI-1/-2
    flavour (NIfTI-1 is written), the original scl_slope/inter, sform/qform codes (1 is written), units
    (mm is written), descriptions and other header fields.
    """
    import nibabel as nib
    import numpy as np

    from slicesr.geometry import from_slice_first
    from slicesr.intensity import denormalize

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
    try:
        dtype = np.dtype(values.get("source_dtype") or "float32")
    except TypeError:
        dtype = np.dtype("float32")
    header = nib.Nifti1Header()
    header.set_xyzt_units("mm")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        rounded = np.rint(data)
        tolerance = max(0.01, 1e-6 * float(np.abs(data).max()))
        if rounded.min() >= info.min and rounded.max() <= info.max and np.abs(data - rounded).max() <= tolerance:
            data = rounded.astype(np.float32)
        else:  # scaled integers: output_image then lets nibabel choose a slope for the new values
            header["scl_slope"], header["scl_inter"] = 2.0, 0.0
    elif dtype.kind != "f":
        dtype = np.dtype("float32")
    header.set_data_dtype(dtype)
    volume = Volume(data=data, affine=source_affine, source=f"{store.url}/scans/{scan_id}",
                    source_dtype=str(dtype), header=header)
    return volume, axis


# --------------------------------------------------------------------------- worker side
_METHODS: dict[str, Any] = {}  # per worker process: model key -> loaded method
_LOCK = threading.Lock()


def _method(model: dict[str, Any], box: list | None) -> Any:
    """The run's method, built once per worker process: the first task of a process that meets a model
    fetches its files from the object store, writes them to a temporary folder and loads them (the folder
    is removed once the weights are in memory, so killed workers leave nothing behind)."""
    from slicesr.inference import Interpolation, load_method

    if box is None:
        return Interpolation(model["spec"])
    key = model["key"]
    with _LOCK:
        if key not in _METHODS:
            import ray

            files = ray.get(box[0])
            with tempfile.TemporaryDirectory(prefix=f"slicesr-model-{key[:12]}-") as folder:
                for relative, data in files.items():
                    path = Path(folder) / relative
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
                _METHODS[key] = load_method(folder)
            log.debug("model %s loaded in worker process %d", key[:12], os.getpid())
        return _METHODS[key]


def _read_volume(job: Job, storage_options: dict[str, Any]) -> tuple[Volume, int | None]:
    """The job's scan as a Volume (InputError with the reason), and a store scan's slice axis."""
    from slicesr.nifti import image_from_bytes, volume_from_image

    if job.kind == "store":
        return volume_from_store(SliceStore(job.source, storage_options), job.scan_id)
    try:
        if is_remote(job.source):
            fs, path = fsspec.core.url_to_fs(job.source, **storage_options)
            raw = fs.cat_file(path)
        else:
            with open(job.source, "rb") as handle:
                raw = handle.read()
    except FileNotFoundError:
        raise InputError("the file disappeared before it could be read") from None
    except PermissionError as exc:
        raise InputError(f"access denied while reading: {exc}") from None
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or exc}") from None
    image = image_from_bytes(raw)
    return volume_from_image(image, job.source), None


def _write_output(image: Any, target: str, storage_options: dict[str, Any]) -> None:
    """Local: a temporary name, then a rename. S3: a local temporary file, then one upload (an object
    appears only once it is complete)."""
    import nibabel as nib

    from slicesr.nifti import save_nifti_atomic

    if not is_remote(target):
        save_nifti_atomic(image, target)
        return
    with tempfile.TemporaryDirectory(prefix="slicesr-out-") as folder:
        local = os.path.join(folder, os.path.basename(target))
        nib.save(image, local)
        fs, path = fsspec.core.url_to_fs(target, **storage_options)
        fs.put_file(local, path)


def run_job(job: Job, model: dict[str, Any], box: list | None, settings: dict[str, Any]) -> dict[str, Any]:
    """One Ray task: read a scan, super-resolve it, write it. Never raises for bad data: returns a row
    with status "written" or "failed" (and the reason)."""
    import torch

    from slicesr.inference import infer_volume

    started = time.perf_counter()
    torch.set_num_threads(max(1, int(settings["threads"])))
    row = {"source": job.label, "name": job.name, "output": job.target}
    try:
        method = _method(model, box)
        volume, stored_axis = _read_volume(job, settings["storage_options"])
        slice_axis = settings["slice_axis"]
        if stored_axis is not None and slice_axis == "auto":
            slice_axis = stored_axis  # a store scan: the axis the store was built along
        image = infer_volume(volume, method, settings["k"], slice_axis, settings["keep_acquired"])
        try:
            _write_output(image, job.target, settings["storage_options"])
        except OSError as exc:
            return {**row, "status": "failed", "error": f"could not write {job.target}: {exc}"}
        return {**row, "status": "written", "seconds": round(time.perf_counter() - started, 3)}
    except (InputError, ValueError) as exc:
        return {**row, "status": "failed", "error": str(exc)}
    except Exception as exc:  # one odd scan must not end a run over thousands; keep the reason
        log.debug("inference on %s failed", job.label, exc_info=True)
        return {**row, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}


# --------------------------------------------------------------------------- driver side
def _model_files(folder: Path) -> tuple[dict[str, bytes], str]:
    """A model directory's files, and the cache key of the model: the weights' SHA-256 (as
    slicesr.modeldir.model_fingerprint) plus a digest of the other files (config, metadata)."""
    from slicesr.modeldir import WEIGHTS, model_fingerprint

    files = {path.relative_to(folder).as_posix(): path.read_bytes()
             for path in sorted(folder.rglob("*")) if path.is_file()}
    others = hashlib.sha256()
    for relative in sorted(files):
        others.update(relative.encode() + b"\0")
        if relative != WEIGHTS:
            others.update(files[relative])
    return files, f"{model_fingerprint(folder)}-{others.hexdigest()[:16]}"


def load_model(model: str, k: int | None, tracking_uri: str | None = None) -> ModelSpec:
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
        k = method.trained_k if k is None else k
        if k is None:
            raise UsageError(f"--k is needed with {model} (it was not trained for one K)")
        try:
            check_k(method, k)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if folder is None:
            return ModelSpec(spec=model, label=method.label, k=k)
        files, key = _model_files(folder)
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


def write_failures(output: str, failures: list[dict[str, Any]], storage_options: dict[str, Any]) -> None:
    """OUT/failures.jsonl: the inputs this run could not super-resolve (empty when none)."""
    lines = [json.dumps(row, sort_keys=True) for row in failures]
    data = ("\n".join(lines) + ("\n" if lines else "")).encode()
    if is_remote(output):
        fs, path = fsspec.core.url_to_fs(output, **storage_options)
        fs.pipe_file(_join(path, FAILURES), data)
        return
    handle, temporary = tempfile.mkstemp(prefix=".partial-", dir=output)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, os.path.join(output, FAILURES))
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


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


def _dispatch(todo: list[Job], spec: ModelSpec, settings: dict[str, Any], cpus_per_task: float):
    """Submit one task per job, a bounded window at a time (driver memory flat in the number of scans);
    yield each task's row as it completes."""
    import ray
    from ray.exceptions import RayError

    box = [ray.put(spec.files)] if spec.files is not None else None
    model = {"spec": spec.spec, "key": spec.key}
    task = ray.remote(run_job).options(num_cpus=cpus_per_task, max_retries=1)
    slots = int(ray.cluster_resources().get("CPU", 1) / cpus_per_task)
    window = max(8, 4 * max(1, slots))
    pending = iter(todo)
    in_flight: dict[Any, Job] = {}

    def submit(count: int) -> None:
        for _ in range(count):
            job = next(pending, None)
            if job is None:
                return
            in_flight[task.remote(job, model, box, settings)] = job

    submit(window)
    while in_flight:
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in ready:
            job = in_flight.pop(ref)
            try:
                row = ray.get(ref)
            except RayError as exc:  # the worker died (e.g. out of memory): one failed input, not a dead run
                row = {"source": job.label, "name": job.name, "output": job.target, "status": "failed",
                       "error": f"inference task failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"}
            yield row
        submit(len(ready))


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
    spec = load_model(model, k, tracking_uri)
    jobs, problems = collect_jobs(inputs, output, storage_options)
    if not jobs:
        details = "; ".join(f"{p['source']}: {p['error']}" for p in problems)
        raise UsageError(f"no NIfTI inputs found ({details})" if details else "no NIfTI inputs found")
    existing = prepare_output(output, storage_options)

    report = InferManyReport(failures=list(problems), method=spec.label, k=spec.k)
    todo = []
    for job in jobs:
        if not overwrite and os.path.basename(job.target) in existing:
            report.skipped.append(job.target)
        else:
            todo.append(job)
    log.info("%d scans found: %d to super-resolve with %s (K=%d), %d already done", len(jobs), len(todo),
             spec.label, spec.k, len(report.skipped))
    if todo:
        connect_ray(address)
    settings = {"k": spec.k, "slice_axis": slice_axis, "keep_acquired": keep_acquired,
                "storage_options": storage_options, "threads": max(1, int(cpus_per_task))}
    try:
        with tqdm(total=len(todo), unit="scan", desc="infer", disable=not progress or not todo,
                  file=sys.stderr) as bar:
            for row in (_dispatch(todo, spec, settings, cpus_per_task) if todo else ()):
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
    parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec/s3fs option for inputs and output, e.g. endpoint_url=http://127.0.0.1:9000 "
                        "(repeatable; dotted keys nest)")
    parser.add_argument("--tracking-uri", default=None, metavar="URI",
                        help="MLflow tracking URI for models:/ (default MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--overwrite", action="store_true", help="super-resolve again scans whose output exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _infer_many(args: argparse.Namespace) -> int:
    report = infer_many(
        args.inputs, args.output, args.model, args.k, slice_axis=args.slice_axis,
        keep_acquired=not args.no_keep_acquired, address=args.address, cpus_per_task=args.cpus_per_task,
        storage_options=parse_storage_options(args.storage_option), tracking_uri=args.tracking_uri,
        overwrite=args.overwrite, progress=not args.no_progress,
    )
    print(f"super-resolved {len(report.written)} scans with {report.method} (K={report.k}), already done "
          f"{len(report.skipped)}, failed {len(report.failures)} -> {args.output} ({report.seconds:.1f} s)")
    for failure in report.failures:
        print(f"  failed: {failure['source']}: {failure['error']}", file=sys.stderr)
    return report.exit_code


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _infer_many)


if __name__ == "__main__":
    # Run as the importable module, so that Ray workers find run_job and its per-process model cache
    # under cluster.infer rather than a pickled copy of __main__.
    from cluster.infer import main as _main

    sys.exit(_main())
