"""The slice store: the product's on-disk (or S3) data format, shared by every stage.

Layout of a store at DEST (a local folder or an s3:// prefix):

    DEST/store.json                 {"format": "slicesr-slice-store", "format_version": 1}
    DEST/scans/<scan_id>/           one Zarr v3 group per scan; array `slices` (num_slices, rows, cols)
                                    float32, one slice per chunk, zstd, the chunks of a scan in one
                                    shard; attributes = the scan record
    DEST/complete/<scan_id>.json    completion marker, written last: the authority on what is stored
    DEST/manifest.jsonl             one record per stored scan, rebuilt from the markers
    DEST/failures.jsonl             the inputs the latest run rejected, with the reason
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import zarr
import zarr.storage

from slicesr.errors import StoreError
from slicesr.intensity import IntensityParams

log = logging.getLogger(__name__)

STORE_FORMAT = "slicesr-slice-store"
FORMAT_VERSION = 1
SLICES_ARRAY = "slices"
_ZSTD_LEVEL = 3


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def _join(*parts: str) -> str:
    return "/".join(part.strip("/") if i else part.rstrip("/") for i, part in enumerate(parts))


def describe_storage_error(url: str, exc: BaseException) -> str:
    """A sentence for the usual ways an output location is unusable."""
    if isinstance(exc, PermissionError):
        return f"access denied to {url}: {exc}"
    if isinstance(exc, FileNotFoundError):
        if url.startswith("s3://"):
            bucket = url[len("s3://") :].split("/", 1)[0]
            return f"bucket {bucket!r} of {url} does not exist (or is not visible with these credentials)"
        return f"{url} does not exist: {exc}"
    return f"cannot use {url}: {type(exc).__name__}: {exc}"


@dataclass
class ScanRecord:
    """What the store knows about one stored scan (the marker / manifest row)."""

    scan_id: str
    values: dict[str, Any]

    @property
    def affine(self) -> np.ndarray:
        return np.asarray(self.values["affine"], dtype=np.float64)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.values["shape"])  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return tuple(self.values["spacing_mm"])  # type: ignore[return-value]

    @property
    def intensity(self) -> IntensityParams:
        return IntensityParams.from_dict(self.values["intensity"])


class SliceStore:
    """A slice store at a local folder or an fsspec URL (s3://bucket/prefix)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.url = url.rstrip("/") or url
        self.storage_options = dict(storage_options or {})
        self.remote = is_remote(self.url)
        if self.remote:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        else:
            self.fs = fsspec.filesystem("file")
            self.root = os.path.abspath(self.url[len("file://") :] if self.url.startswith("file://") else self.url)
            self.url = self.root  # workers of a Dask cluster may run in another folder

    # ----------------------------------------------------------------- opening
    @classmethod
    def create(cls, url: str, storage_options: dict[str, Any] | None = None) -> SliceStore:
        """Open a store for writing, creating it if needed; refuse a location that holds other data."""
        store = cls(url, storage_options)
        meta_path = store._path("store.json")
        try:
            if store.fs.exists(meta_path):
                store._check_meta(json.loads(store.fs.cat_file(meta_path)))
                return store
            if not store.remote:
                if os.path.exists(store.root) and not os.path.isdir(store.root):
                    raise StoreError(f"output {url} is a file, not a folder")
                if os.path.isdir(store.root) and os.listdir(store.root):
                    raise StoreError(
                        f"output folder {url} is not empty and is not a slicesr store (no store.json); "
                        "choose a new or empty folder"
                    )
                os.makedirs(store.root, exist_ok=True)
            elif store.fs.exists(store.root) and store.fs.ls(store.root):
                raise StoreError(
                    f"output {url} already holds objects and is not a slicesr store (no store.json); "
                    "choose a new or empty prefix"
                )
            store.write_bytes("store.json", json.dumps(
                {"format": STORE_FORMAT, "format_version": FORMAT_VERSION}, indent=1).encode())
        except StoreError:
            raise
        except (OSError, ValueError) as exc:
            raise StoreError(describe_storage_error(url, exc)) from exc
        return store

    @classmethod
    def open(cls, url: str, storage_options: dict[str, Any] | None = None) -> SliceStore:
        """Open an existing store for reading."""
        store = cls(url, storage_options)
        try:
            meta = json.loads(store.fs.cat_file(store._path("store.json")))
        except FileNotFoundError as exc:
            raise StoreError(f"{url} is not a slicesr slice store (no store.json)") from exc
        except (OSError, ValueError) as exc:
            raise StoreError(describe_storage_error(url, exc)) from exc
        store._check_meta(meta)
        return store

    def _check_meta(self, meta: dict) -> None:
        if meta.get("format") != STORE_FORMAT:
            raise StoreError(f"{self.url}/store.json does not describe a slicesr slice store")
        if int(meta.get("format_version", -1)) > FORMAT_VERSION:
            raise StoreError(
                f"{self.url} has format_version {meta.get('format_version')}, newer than this slicesr "
                f"({FORMAT_VERSION}); upgrade slicesr"
            )

    # ----------------------------------------------------------------- paths and bytes
    def _path(self, *parts: str) -> str:
        return _join(self.root, *parts)

    def scan_url(self, scan_id: str) -> str:
        return _join(self.url, "scans", scan_id)

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write a small object whole: a local file appears atomically (rename); an S3 PUT is atomic."""
        path = self._path(relative)
        if self.remote:
            self.fs.pipe_file(path, data)
            return
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".partial-", dir=folder)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise

    def _zarr_store(self, scan_id: str, read_only: bool) -> zarr.abc.store.Store:
        if self.remote:
            return zarr.storage.FsspecStore.from_url(
                self.scan_url(scan_id), storage_options=self.storage_options, read_only=read_only
            )
        return zarr.storage.LocalStore(self._path("scans", scan_id), read_only=read_only)

    # ----------------------------------------------------------------- writing scans
    def invalidate(self, scan_id: str) -> None:
        """Withdraw a scan's completion marker before its data is rewritten."""
        marker = self._path("complete", scan_id + ".json")
        if self.fs.exists(marker):
            self.fs.rm_file(marker)

    def write_scan(self, scan_id: str, slices: np.ndarray, record: dict[str, Any]) -> ScanRecord:
        """Store one scan: marker withdrawn, array and attributes written, marker written last."""
        if slices.ndim != 3:
            raise ValueError(f"slices must be (num_slices, rows, cols), got shape {slices.shape}")
        self.invalidate(scan_id)
        values = {
            **record,
            "scan_id": scan_id,
            "shape": [int(n) for n in slices.shape],
            "format_version": FORMAT_VERSION,
        }
        group = zarr.open_group(store=self._zarr_store(scan_id, read_only=False), mode="w")
        array = group.create_array(
            SLICES_ARRAY,
            shape=slices.shape,
            chunks=(1, *slices.shape[1:]),
            # All slices of a scan in one shard object: one file (one S3 PUT) per scan, and any
            # slice still readable alone through the shard index.
            shards=slices.shape,
            dtype="float32",
            compressors=zarr.codecs.ZstdCodec(level=_ZSTD_LEVEL),
            fill_value=0.0,
        )
        array[...] = np.ascontiguousarray(slices, dtype=np.float32)
        group.update_attributes(values)  # one metadata write, not one per key
        self.write_bytes(f"complete/{scan_id}.json", json.dumps(values).encode())
        return ScanRecord(scan_id, values)

    # ----------------------------------------------------------------- reading
    def completed_ids(self) -> list[str]:
        folder = self._path("complete")
        try:
            names = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []
        return sorted(
            os.path.basename(name)[: -len(".json")]
            for name in names
            if name.endswith(".json") and not os.path.basename(name).startswith(".")
        )

    def records(self, scan_ids: Iterable[str] | None = None) -> dict[str, ScanRecord]:
        """Completion markers of stored scans (all of them by default)."""
        ids = list(self.completed_ids() if scan_ids is None else scan_ids)
        if not ids:
            return {}
        paths = [self._path("complete", scan_id + ".json") for scan_id in ids]
        contents = self.fs.cat(paths, on_error="omit")
        records = {}
        for scan_id, path in zip(ids, paths):
            key = path if path in contents else self.fs._strip_protocol(path)
            if key in contents:
                records[scan_id] = ScanRecord(scan_id, json.loads(contents[key]))
        return records

    def record(self, scan_id: str) -> ScanRecord | None:
        return self.records([scan_id]).get(scan_id)

    def slices(self, scan_id: str) -> zarr.Array:
        """The scan's `slices` array (lazy; index it to read). Only for scans with a marker."""
        if self.record(scan_id) is None:
            raise KeyError(f"scan {scan_id!r} is not (completely) stored in {self.url}")
        group = zarr.open_group(store=self._zarr_store(scan_id, read_only=True), mode="r")
        return group[SLICES_ARRAY]

    # ----------------------------------------------------------------- manifest and failures
    def rebuild_manifest(self) -> list[ScanRecord]:
        """Rewrite manifest.jsonl from the completion markers; return the records."""
        records = self.records()
        lines = [json.dumps(records[scan_id].values, sort_keys=True) for scan_id in sorted(records)]
        self.write_bytes("manifest.jsonl", ("\n".join(lines) + ("\n" if lines else "")).encode())
        return [records[scan_id] for scan_id in sorted(records)]

    def write_failures(self, failures: list[dict[str, Any]]) -> None:
        lines = [json.dumps(row, sort_keys=True) for row in failures]
        self.write_bytes("failures.jsonl", ("\n".join(lines) + ("\n" if lines else "")).encode())

    def read_jsonl(self, name: str) -> list[dict[str, Any]]:
        try:
            text = self.fs.cat_file(self._path(name)).decode()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def summarize(store: SliceStore) -> str:
    """A short human-readable summary of a store (printed by `slicesr store-info`)."""
    records = list(store.records().values())
    failures = store.read_jsonl("failures.jsonl")
    lines = [f"slice store {store.url}", f"  scans stored:        {len(records)}"]
    if records:
        num_slices = [r.shape[0] for r in records]
        in_plane = sorted({f"{r.shape[1]}x{r.shape[2]}" for r in records})
        spacings = sorted({"x".join(f"{s:g}" for s in r.spacing_mm) for r in records})
        voxels = sum(int(np.prod(r.shape)) for r in records)
        lines += [
            f"  slices in total:     {sum(num_slices)} (per scan {min(num_slices)}..{max(num_slices)})",
            f"  in-plane sizes:      {', '.join(in_plane[:8])}{' ...' if len(in_plane) > 8 else ''}",
            f"  spacing (slice,row,col) mm: {', '.join(spacings[:8])}{' ...' if len(spacings) > 8 else ''}",
            f"  voxels:              {voxels} ({voxels * 4 / 2**20:.1f} MiB as float32)",
        ]
    lines.append(f"  failures (last run): {len(failures)}")
    for row in failures[:10]:
        lines.append(f"    {row.get('source')}: {row.get('error')}")
    return "\n".join(lines)
