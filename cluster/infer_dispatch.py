"""Ray side of `python -m cluster.infer`: a model directory's files and cache key (model_files), one task
per scan (run_job) with its per-process model cache, the bounded submission window on the driver
(dispatch), and the writing of outputs and OUT/failures.jsonl.

run_job lives in this importable module so that Ray workers import it by name (with its model cache),
also when cluster.infer runs as `__main__`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec

from cluster.infer_inputs import Job, join_uri, read_job_volume
from slicesr.errors import InputError
from slicesr.store import is_remote

if TYPE_CHECKING:
    from cluster.infer import ModelSpec

log = logging.getLogger("cluster.infer")
FAILURES = "failures.jsonl"

_METHODS: dict[str, Any] = {}  # per worker process: model key -> loaded method
_LOCK = threading.Lock()


def model_files(folder: Path) -> tuple[dict[str, bytes], str]:
    """A model directory's files (what the tasks get through the object store), and the model's key in
    their cache: the weights' SHA-256 (as slicesr.modeldir.model_fingerprint) plus a digest of the other
    files (config, metadata)."""
    from slicesr.modeldir import WEIGHTS, model_fingerprint

    files = {path.relative_to(folder).as_posix(): path.read_bytes()
             for path in sorted(folder.rglob("*")) if path.is_file()}
    others = hashlib.sha256()
    for relative in sorted(files):
        others.update(relative.encode() + b"\0")
        if relative != WEIGHTS:
            others.update(files[relative])
    return files, f"{model_fingerprint(folder)}-{others.hexdigest()[:16]}"


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

    from slicesr.inference import infer_volume, infer_volume_uncertainty, uncertainty_path

    started = time.perf_counter()
    torch.set_num_threads(max(1, int(settings["threads"])))
    row = {"source": job.label, "name": job.name, "output": job.target}
    try:
        method = _method(model, box)
        volume, stored_axis = read_job_volume(job, settings["storage_options"])
        slice_axis = settings["slice_axis"]
        if stored_axis is not None and slice_axis == "auto":
            slice_axis = stored_axis  # a store scan: the axis the store was built along
        spread = None
        spacing_mm = settings.get("spacing_mm")
        tta_angles = tuple(settings.get("tta_angles", ()))
        tta_flips = settings.get("tta_flips", "all")
        if settings.get("uncertainty"):
            image, spread = infer_volume_uncertainty(volume, method, settings["k"], slice_axis, settings["keep_acquired"],
                                                     spacing_mm=spacing_mm, tta_angles=tta_angles, tta_flips=tta_flips)
        else:
            image = infer_volume(volume, method, settings["k"], slice_axis, settings["keep_acquired"],
                                 tta=settings.get("tta", False), spacing_mm=spacing_mm, tta_angles=tta_angles,
                                 tta_flips=tta_flips)
        try:
            if spread is not None:  # first: an output without its map is redone by the next run
                _write_output(spread, uncertainty_path(job.target), settings["storage_options"])
            _write_output(image, job.target, settings["storage_options"])
        except OSError as exc:
            return {**row, "status": "failed", "error": f"could not write {job.target}: {exc}"}
        return {**row, "status": "written", "seconds": round(time.perf_counter() - started, 3)}
    except (InputError, ValueError) as exc:
        return {**row, "status": "failed", "error": str(exc)}
    except Exception as exc:  # one odd scan must not end a run over thousands; keep the reason
        log.debug("inference on %s failed", job.label, exc_info=True)
        return {**row, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}


def dispatch(todo: list[Job], spec: ModelSpec, settings: dict[str, Any], cpus_per_task: float) -> Iterator[dict]:
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


def write_failures(output: str, failures: list[dict[str, Any]], storage_options: dict[str, Any]) -> None:
    """OUT/failures.jsonl: the inputs this run could not super-resolve (empty when none)."""
    lines = [json.dumps(row, sort_keys=True) for row in failures]
    data = ("\n".join(lines) + ("\n" if lines else "")).encode()
    if is_remote(output):
        fs, path = fsspec.core.url_to_fs(output, **storage_options)
        fs.pipe_file(join_uri(path, FAILURES), data)
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
