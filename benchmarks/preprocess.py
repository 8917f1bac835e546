"""Benchmark: NIfTI -> Zarr slice-store conversion, Dask (1 and 2 workers) against single-process loops.

    python benchmarks/preprocess.py [--count 1000] [--shape 256,256,32] [--quick]

Generates `count` synthetic thick-slice scans (preprocessing.synth, cached under benchmarks/_work),
then converts them, in the same run, with:
  naive        nibabel load + numpy save per scan (no normalisation, no Zarr, no markers)
  plain loop   the converter's own per-scan conversion in one process (`--workers 0`, no Dask), with
               Zarr's default codec thread pool (it keeps a second core partly busy)
  plain loop, 1 thread   the same in a child process with ZARR_THREADING__MAX_WORKERS=1: exactly what
               each Dask worker runs, so dask 2 / this row is the like-for-like scaling
  dask 1       the converter with a LocalCluster of 1 worker
  dask 2       the converter with a LocalCluster of 2 workers
Peak memory is the largest sum of RSS over this process and all its children (Dask's scheduler runs
in this process, its workers in children), sampled every 50 ms; "peak @25%" is the same up to the
moment a quarter of the scans were done, so equal columns mean memory flat in the number of scans.
"cores busy" is the machine's CPU seconds (user + system, all processes) over the wall time.
Prints a Markdown table and writes it into benchmarks/RESULTS.md (section "preprocess"). `--quick`:
4 small scans in a temporary folder; prints only.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.results import benchmark_parser, parse_arguments, publish  # noqa: E402
from preprocessing.synth import write_scans  # noqa: E402
from preprocessing.to_zarr import convert  # noqa: E402

NAIVE, PLAIN, PLAIN_1_THREAD, DASK_1, DASK_2 = (
    "naive (nibabel load + np.save, 1 process)", "plain loop (same conversion, no Dask)",
    "plain loop, single-threaded codecs (= one Dask worker's work)", "Dask LocalCluster, 1 worker",
    "Dask LocalCluster, 2 workers")
METHODS = {  # the table's rows: label -> (how, Dask workers)
    NAIVE: ("naive", None),
    PLAIN: ("convert", 0),
    PLAIN_1_THREAD: ("subprocess", 0),
    DASK_1: ("convert", 1),
    DASK_2: ("convert", 2),
}


class MemorySampler:
    """Peak RSS of this process tree, and the peak up to the moment `progress()` reached a quarter."""

    def __init__(self, progress, total: int):
        self.progress, self.total = progress, total
        self.peak = 0
        self.peak_quarter = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self):
        quarter_done = False
        while not self._stop.is_set():
            rss = self._rss()
            self.peak = max(self.peak, rss)
            if not quarter_done:
                self.peak_quarter = max(self.peak_quarter, rss)
                quarter_done = self.progress() >= self.total / 4
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _count(folder: Path) -> int:
    try:
        return len(os.listdir(folder))
    except FileNotFoundError:
        return 0


def naive_loop(files: list[Path], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for path in files:
        data = nib.load(path).get_fdata(dtype=np.float32)
        np.save(out / (path.name.split(".")[0] + ".npy"), data)


def run(count: int, shape: tuple[int, int, int], workdir: Path) -> str:
    inputs = workdir / f"synth_{count}_{'x'.join(map(str, shape))}"
    if _count(inputs) != count:
        shutil.rmtree(inputs, ignore_errors=True)
        started = time.perf_counter()
        write_scans(count, str(inputs), shape, seed=0)
        print(f"generated {count} scans in {time.perf_counter() - started:.0f} s", flush=True)
    files = sorted(inputs.glob("*.nii.gz"))
    input_mb = sum(f.stat().st_size for f in files) / 1e6
    voxel_mb = count * int(np.prod(shape)) * 4 / 1e6

    rows = []
    seconds_by_method = {}
    for label, (kind, workers) in METHODS.items():
        out = workdir / "out"
        shutil.rmtree(out, ignore_errors=True)
        progress_dir = out / ("" if kind == "naive" else "complete")
        started = time.perf_counter()
        cpu_before = psutil.cpu_times()
        with MemorySampler(lambda d=progress_dir: _count(d), count) as memory:
            if kind == "naive":
                naive_loop(files, out)
            elif kind == "subprocess":
                env = {**os.environ, "ZARR_THREADING__MAX_WORKERS": "1"}
                subprocess.run([sys.executable, "-m", "preprocessing.to_zarr", "--input", str(inputs), "--output",
                                str(out), "--workers", "0", "--no-progress"], env=env, check=True,
                               cwd=HERE.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                assert _count(progress_dir) == count
            else:
                report = convert([str(inputs)], str(out), workers=workers, progress=False)
                assert len(report.stored) == count and not report.failures, report.failures[:3]
        seconds = time.perf_counter() - started
        cpu_after = psutil.cpu_times()
        busy = (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system) / seconds
        seconds_by_method[label] = seconds
        rows.append((label, seconds, count / seconds, input_mb / seconds, voxel_mb / seconds, busy,
                     memory.peak_quarter / 2**20, memory.peak / 2**20))
        print(f"{label}: {seconds:.1f} s", flush=True)
    shutil.rmtree(workdir / "out", ignore_errors=True)

    plain = seconds_by_method[PLAIN]
    lines = [
        f"Command: `python benchmarks/preprocess.py --count {count} --shape {','.join(map(str, shape))}`  ",
        f"Machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}; {time.strftime('%Y-%m-%d')}  ",
        f"Input: {count} synthetic scans {shape[0]}x{shape[1]}x{shape[2]} (random orientation, int16/uint8/float32), "
        f"{input_mb:.0f} MB of .nii.gz on disk, {voxel_mb:.0f} MB as float32 voxels.",
        "",
        "| method | seconds | scans/s | input MB/s (gz) | voxel MB/s | cores busy | peak RSS @25% (MiB) "
        "| peak RSS (MiB) | speed-up vs plain loop |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, seconds, rate, mbs, vmbs, busy, peak_q, peak in rows:
        lines.append(f"| {label} | {seconds:.1f} | {rate:.2f} | {mbs:.1f} | {vmbs:.0f} | {busy:.2f} | {peak_q:.0f} | "
                     f"{peak:.0f} | {plain / seconds:.2f}x |")
    dask_seconds = seconds_by_method[DASK_2]
    dask2 = plain / dask_seconds
    like = seconds_by_method[PLAIN_1_THREAD] / dask_seconds
    lines += [
        "",
        f"Goal: 2 Dask workers >= 1.6x the plain loop: **{dask2:.2f}x** ({'met' if dask2 >= 1.6 else 'not met'}); "
        f"against the same single-threaded conversion each worker runs: **{like:.2f}x**.",
    ]
    return "\n".join(lines)


def quick_settings(scratch: Path) -> dict:
    return {"count": 4, "shape": "32,32,8", "workdir": str(scratch / "_work")}


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--shape", default="256,256,32")
    parser.add_argument("--workdir", default=str(HERE / "_work"))
    with parse_arguments(parser, argv, quick_settings) as args:
        shape = tuple(int(v) for v in args.shape.split(","))
        table = run(args.count, shape, Path(args.workdir))
        publish(args, "preprocess", "Preprocessing: NIfTI -> Zarr slice store", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
