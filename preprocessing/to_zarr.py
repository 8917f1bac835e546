"""Convert LR NIfTI scans into a chunked Zarr slice store, one Dask task per scan.

    python -m preprocessing.to_zarr --input SRC [SRC ...] --output DEST [--slice-axis auto|0|1|2]
        [--workers N] [--scheduler ADDRESS] [--storage-option KEY=VALUE ...] [--overwrite]

Exit codes: 0 every input stored, 1 some inputs rejected (the rest stored, see DEST/failures.jsonl),
2 usage or environment error (no inputs, unusable output, unreachable scheduler, bad option).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import fsspec
import nibabel as nib
from tqdm import tqdm

from preprocessing.sources import SourceScan, expand_sources, local_uri, strip_hash_suffix
from slicesr.cli_common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    UsageError,
    add_batch_options,
    finish,
    parse_storage_options,
    run_command,
)
from slicesr.errors import InputError
from slicesr.geometry import resolve_slice_axis, to_slice_first, voxel_spacing
from slicesr.intensity import normalize, robust_intensity_params
from slicesr.nifti import SliceSidecar, image_from_bytes, read_slice_sidecar, sidecar_path, volume_from_image
from slicesr.store import SliceStore, is_remote

log = logging.getLogger("preprocessing.to_zarr")


@dataclass
class ConversionReport:
    stored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failures else EXIT_OK


def _read_source(uri: str, storage_options: dict[str, Any]) -> bytes:
    try:
        if is_remote(uri):
            fs, path = fsspec.core.url_to_fs(uri, **storage_options)
            return fs.cat_file(path)
        with open(uri, "rb") as handle:
            return handle.read()
    except FileNotFoundError as exc:
        raise InputError("the file disappeared before it could be read") from exc
    except PermissionError as exc:
        raise InputError(f"access denied while reading: {exc}") from exc
    except OSError as exc:
        raise InputError(f"cannot read: {exc}") from exc


def _read_sidecar(uri: str, storage_options: dict[str, Any]) -> SliceSidecar | None:
    """The scan's BIDS sidecar (`<stem>.json` beside it, local or remote), None when there is none."""
    if not is_remote(uri):
        return read_slice_sidecar(uri)
    fs, path = fsspec.core.url_to_fs(sidecar_path(uri), **storage_options)
    try:
        text = fs.cat_file(path).decode("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{sidecar_path(uri)}: cannot read the JSON sidecar: {exc}") from exc
    return read_slice_sidecar(uri, text)


def convert_scan(
    source: SourceScan,
    store_url: str,
    storage_options: dict[str, Any],
    slice_axis: int | str = "auto",
) -> dict[str, Any]:
    """Convert one scan into the store. Returns {"status": "stored"|"failed", ...}; never raises for bad data."""
    try:
        volume = volume_from_image(image_from_bytes(_read_source(source.uri, storage_options)), source.uri)
        axis = resolve_slice_axis(volume.affine, slice_axis)
        slices, affine = to_slice_first(volume.data, volume.affine, axis)
        params = robust_intensity_params(slices)
        record = {
            "source": source.uri,
            "source_fingerprint": source.fingerprint,
            "source_shape": [int(n) for n in volume.data.shape],
            "source_dtype": volume.source_dtype,
            "source_affine": volume.affine.tolist(),
            "affine": affine.tolist(),
            "orientation": "".join(nib.aff2axcodes(affine)),
            "spacing_mm": [float(s) for s in voxel_spacing(affine)],
            "slice_axis": int(axis),
            "requested_slice_axis": "auto" if slice_axis in ("auto", None) else int(slice_axis),
            "intensity": params.to_dict(),
        }
        sidecar = _read_sidecar(source.uri, storage_options)
        if sidecar is not None:
            # recorded for training (a thick-slice model's sr.slice_thickness may come from here)
            record["sidecar"] = sidecar.path
            if sidecar.thickness_mm is not None:
                record["slice_thickness_mm"] = sidecar.thickness_mm
            if sidecar.spacing_between_slices_mm is not None:
                record["spacing_between_slices_mm"] = sidecar.spacing_between_slices_mm
                spacing = float(voxel_spacing(affine)[0])
                if abs(sidecar.spacing_between_slices_mm - spacing) > 0.01 * spacing:
                    log.warning("%s: SpacingBetweenSlices %g mm in %s, but the header's slice spacing is %g mm; "
                                "the header's is used", source.uri, sidecar.spacing_between_slices_mm,
                                sidecar.path, spacing)
        store = SliceStore(store_url, storage_options)
        try:
            store.write_scan(source.scan_id, normalize(slices, params), record)
        except OSError as exc:
            return {"status": "failed", "source": source.uri, "scan_id": source.scan_id,
                    "error": f"could not write to the store: {exc}"}
        return {"status": "stored", "scan_id": source.scan_id, "source": source.uri}
    except (InputError, ValueError) as exc:  # ValueError: e.g. a header nibabel cannot interpret
        return {"status": "failed", "source": source.uri, "scan_id": source.scan_id, "error": str(exc)}
    except Exception as exc:  # one odd file must not end a run over thousands; keep the reason
        log.debug("unexpected error converting %s", source.uri, exc_info=True)
        return {"status": "failed", "source": source.uri, "scan_id": source.scan_id,
                "error": f"unexpected error while converting: {type(exc).__name__}: {exc}"}


def _is_current(source: SourceScan, record_values: dict[str, Any] | None, slice_axis: int | str) -> bool:
    return (
        record_values is not None
        and stored_source(record_values.get("source")) == source.uri
        and record_values.get("source_fingerprint") == source.fingerprint
        and str(record_values.get("requested_slice_axis", "auto")) == str(slice_axis)
    )


def stored_source(source: Any) -> Any:
    return local_uri(source) if isinstance(source, str) and source and not is_remote(source) else source


def assign_stored_ids(scans: list[SourceScan], existing: dict[str, dict[str, Any]]) -> list[SourceScan]:
    """Keep ids stable across runs: a source already stored keeps its id; a new source whose id is
    taken by another source gets the hash suffix instead of overwriting that scan."""
    # stores written before sources were resolved hold the path as given: resolve it the same way
    id_of_source = {stored_source(values.get("source")): scan_id for scan_id, values in existing.items()}
    taken = set(existing)
    out = []
    for scan in scans:
        if scan.uri in id_of_source:
            out.append(replace(scan, scan_id=id_of_source[scan.uri]))
            continue
        scan_id = scan.scan_id
        if scan_id in taken:
            scan_id = f"{strip_hash_suffix(scan_id)}-{hashlib.sha1(scan.uri.encode()).hexdigest()[:8]}"
        out.append(replace(scan, scan_id=scan_id))
    ids = [scan.scan_id for scan in out]
    if len(ids) != len(set(ids)):  # cannot happen with distinct sources; refuse rather than overwrite
        raise UsageError("two inputs would be stored under the same scan id; rename one of them")
    return out


def _run_inline(todo: list[SourceScan], task: Callable[[SourceScan], dict]) -> Iterator[dict]:
    for source in todo:
        yield task(source)


def _run_dask(todo: list[SourceScan], task_args: tuple, workers: int, scheduler: str | None) -> Iterator[dict]:
    from dask.distributed import Client, LocalCluster, as_completed

    if not log.isEnabledFor(logging.DEBUG):  # importing distributed resets its loggers to INFO
        logging.getLogger("distributed").setLevel(logging.WARNING)
    cluster = None
    try:
        if scheduler:
            client = Client(scheduler, timeout="10s")
        else:
            import dask

            # Dask's nannies set MALLOC_TRIM_THRESHOLD_, which makes every multi-MB scan buffer a
            # fresh mmap with page faults (much slower per scan when profiled). Keep its thread caps, and
            # cap Zarr's codec pool too: parallelism comes from one single-threaded worker per core.
            environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
            environ.pop("MALLOC_TRIM_THRESHOLD_", None)
            environ["ZARR_THREADING__MAX_WORKERS"] = 1
            settings = {
                "distributed.nanny.pre-spawn-environ": environ,
                # the 10 ms sampling profiler and 1 ms GIL monitor take CPU from the conversions
                "distributed.worker.profile.enabled": False,
                "distributed.admin.system-monitor.gil.enabled": False,
            }
            with dask.config.set(settings):
                cluster = LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True,
                    dashboard_address=":0", silence_logs=logging.ERROR,
                )
            client = Client(cluster)
    except (OSError, TimeoutError, ValueError) as exc:
        if cluster is not None:
            cluster.close()
        where = f"the Dask scheduler at {scheduler}" if scheduler else "a local Dask cluster"
        raise UsageError(f"cannot start or reach {where}: {exc}") from exc
    try:
        # A bounded window of tasks in flight keeps driver memory flat in the number of scans.
        window = max(4, 4 * max(1, len(client.scheduler_info().get("workers", {})) or workers))
        pending = iter(todo)
        futures = as_completed()
        sources_by_key: dict[str, SourceScan] = {}

        def submit(source: SourceScan) -> None:
            key = f"convert-{source.scan_id}-{time.time_ns()}"
            sources_by_key[key] = source
            futures.add(client.submit(convert_scan, source, *task_args, key=key))

        for source in _take(pending, window):
            submit(source)
        for future in futures:
            source = sources_by_key.pop(future.key)
            try:
                result = future.result()
            except Exception as exc:  # a worker died (e.g. out of memory): one failed input, not a dead run
                result = {"status": "failed", "source": source.uri, "scan_id": source.scan_id,
                          "error": f"conversion task failed: {type(exc).__name__}: {exc}"}
            future.release()
            yield result
            for source in _take(pending, 1):
                submit(source)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _take(iterator: Iterator, count: int) -> list:
    out = []
    for _ in range(count):
        try:
            out.append(next(iterator))
        except StopIteration:
            break
    return out


def convert(
    inputs: list[str],
    output: str,
    *,
    slice_axis: int | str = "auto",
    workers: int = 2,
    scheduler: str | None = None,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ConversionReport:
    """Convert every scan named by `inputs` into the slice store at `output`.

    workers=0 converts in this process without Dask (debugging, baselines). Raises UsageError or
    StoreError for problems that stop the whole run; bad scans become failure rows.
    """
    started = time.perf_counter()
    storage_options = dict(storage_options or {})
    if slice_axis not in ("auto", None) and str(slice_axis) not in ("0", "1", "2"):
        raise UsageError(f"--slice-axis must be auto, 0, 1 or 2, got {slice_axis!r}")
    if workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {workers}")
    if not inputs:
        raise UsageError("no inputs given")
    expansion = expand_sources(inputs, storage_options)
    if not expansion.scans:
        details = "; ".join(f"{p['source']}: {p['error']}" for p in expansion.problems)
        raise UsageError(f"no NIfTI inputs found ({details})" if details else "no NIfTI inputs found")

    store = SliceStore.create(output, storage_options)
    existing = {scan_id: rec.values for scan_id, rec in store.records().items()}
    report = ConversionReport(failures=list(expansion.problems))
    todo = []
    requested_axis = "auto" if slice_axis in ("auto", None) else int(slice_axis)
    for source in assign_stored_ids(expansion.scans, existing):
        if not overwrite and _is_current(source, existing.get(source.scan_id), requested_axis):
            report.skipped.append(source.scan_id)
        else:
            todo.append(source)
    log.info("%d scans found: %d to convert, %d already stored", len(expansion.scans), len(todo), len(report.skipped))

    axis = slice_axis if slice_axis in ("auto", None) else int(slice_axis)
    task_args = (store.url, storage_options, axis)
    if not todo:
        results: Iterator[dict] = iter(())
    elif workers == 0 and not scheduler:
        results = _run_inline(todo, lambda source: convert_scan(source, *task_args))
    else:
        results = _run_dask(todo, task_args, workers, scheduler)
    try:
        with tqdm(total=len(todo), unit="scan", desc="to_zarr", disable=not progress or not todo,
                  file=sys.stderr) as bar:
            for result in results:
                if result["status"] == "stored":
                    report.stored.append(result["scan_id"])
                else:
                    report.failures.append({"source": result["source"], "error": result["error"]})
                bar.update(1)
    finally:
        # Whatever happened, the manifest reflects exactly the scans whose markers exist.
        store.write_failures(report.failures)
        store.rebuild_manifest()
    report.seconds = time.perf_counter() - started
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m preprocessing.to_zarr",
        description="Convert LR NIfTI scans into a chunked Zarr slice store (local folder or s3://).",
    )
    parser.add_argument("--input", "-i", nargs="+", required=True, metavar="SRC",
                        help="NIfTI file, folder (recursive), glob, .txt list of paths/URIs, or s3://bucket/prefix")
    parser.add_argument("--output", "-o", required=True, metavar="DEST", help="local folder or s3://bucket/prefix")
    parser.add_argument("--slice-axis", default="auto", choices=["auto", "0", "1", "2"],
                        help="source axis of the slices (auto: largest voxel spacing, last on a tie)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="Dask workers of the local cluster (0: convert in this process, no Dask)")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="use an existing Dask scheduler (tcp://host:8786) instead of a local cluster")
    add_batch_options(parser, "convert again scans already stored")
    return parser


def _convert(args: argparse.Namespace) -> int:
    report = convert(
        args.input, args.output, slice_axis=args.slice_axis, workers=args.workers,
        scheduler=args.scheduler, storage_options=parse_storage_options(args.storage_option),
        overwrite=args.overwrite, progress=not args.no_progress,
    )
    return finish(f"stored {len(report.stored)}, already stored {len(report.skipped)}, failed {len(report.failures)} "
                  f"-> {args.output} ({report.seconds:.1f} s)", report.failures)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _convert)


if __name__ == "__main__":
    sys.exit(main())
