"""Input discovery for `python -m cluster.infer`: INPUT arguments -> one Job per scan, and a job's volume.

INPUT: a NIfTI file, a folder (searched recursively), a glob, an `s3://bucket/prefix`, a list file given as
`@list.txt` (or any `*.txt`; read by preprocessing.sources.read_list_file), or a slicesr slice store (made
by `preprocessing.to_zarr`, local or s3://): every completed scan of the store, rebuilt as a volume by
slicesr.store_nifti.volume_from_store.

Output names: `<name>` is the scan id the converter gives the same input: the file name without
.nii/.nii.gz for a file given directly or found directly in a given folder (characters outside
[A-Za-z0-9._-] become `_`), the relative path joined by `__` for files in sub-folders, `-` and 8 hex
digits of the source's SHA-1 when two inputs would share a name, and the scan id for slice-store scans,
so a folder and the store converted from it give the same output names.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import fsspec

from preprocessing.sources import expand_sources, make_scan_id, read_list_file
from slicesr.errors import InputError, StoreError
from slicesr.nifti import Volume, is_nifti_name
from slicesr.store import SliceStore, is_remote

log = logging.getLogger("cluster.infer")
OUTPUT_SUFFIX = ".nii.gz"


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


def join_uri(base: str, leaf: str) -> str:
    return f"{base.rstrip('/')}/{leaf}"


def _read_list(src: str, storage_options: dict[str, Any]) -> list[str]:
    """A list file's entries; InputError when it cannot be read."""
    try:
        return read_list_file(src, storage_options)
    except FileNotFoundError:
        raise InputError("no such input list") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the input list: {exc}") from None


def _open_store(src: str, storage_options: dict[str, Any]) -> SliceStore | None:
    """The slice store at `src`, or None when `src` is not one (a NIfTI file, a folder of them, ...)."""
    if is_nifti_name(src) or any(char in src for char in "*?["):
        return None
    if is_remote(src):
        try:
            fs, path = fsspec.core.url_to_fs(src, **storage_options)
            if not fs.isfile(join_uri(path, "store.json")):
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


def _split_inputs(inputs: list[str], storage_options: dict[str, Any]) -> tuple[list[str], list[SliceStore], list]:
    """List files expanded in place: (NIfTI sources, slice stores, problems)."""
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
    return sources, stores, problems


def collect_jobs(inputs: list[str], output: str, storage_options: dict[str, Any]) -> tuple[list[Job], list[dict]]:
    """Every scan named by `inputs`, with a unique output name; and the inputs that matched nothing."""
    sources, stores, problems = _split_inputs(inputs, storage_options)
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
        target = join_uri(out_root, name + OUTPUT_SUFFIX) if is_remote(output) else os.path.join(out_root, name + OUTPUT_SUFFIX)
        unique.append(Job(job.kind, job.source, name, job.scan_id, target))
    unique.sort(key=lambda job: job.name)
    return unique, problems


def read_job_volume(job: Job, storage_options: dict[str, Any]) -> tuple[Volume, int | None]:
    """The job's scan as a Volume (InputError with the reason), and a store scan's slice axis."""
    from slicesr.nifti import image_from_bytes, volume_from_image
    from slicesr.store_nifti import volume_from_store

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
