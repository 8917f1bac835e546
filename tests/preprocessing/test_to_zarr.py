import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from preprocessing.synth import make_scan, to_image
from preprocessing.to_zarr import convert, main
from slicesr.cli_common import UsageError
from slicesr.errors import StoreError
from slicesr.geometry import world_coordinates
from slicesr.nifti import load_volume
from slicesr.store import SliceStore
from tests.conftest import write_nifti, write_synth

REPO = Path(__file__).resolve().parents[2]


def _check_scan_against_source(store: SliceStore, scan_id: str, source_path: str, rng) -> None:
    record = store.record(scan_id)
    volume = load_volume(source_path)
    stored = store.slices(scan_id)[...]
    axis = record.values["slice_axis"]
    others = [a for a in range(3) if a != axis]
    assert stored.shape == (volume.data.shape[axis], volume.data.shape[others[0]], volume.data.shape[others[1]])
    assert store.slices(scan_id).chunks == (1, *stored.shape[1:])
    np.testing.assert_allclose(record.values["source_affine"], volume.affine)
    scale, offset = record.intensity.scale, record.intensity.offset
    for _ in range(25):
        index = np.array([rng.integers(n) for n in stored.shape])
        source_index = np.zeros(3, dtype=int)
        source_index[axis], source_index[others[0]], source_index[others[1]] = index
        np.testing.assert_allclose(
            world_coordinates(record.affine, index[None]), world_coordinates(volume.affine, source_index[None]),
            atol=1e-6,
        )
        assert stored[tuple(index)] * scale + offset == pytest.approx(
            float(volume.data[tuple(source_index)]), rel=1e-4, abs=1e-4 * abs(scale))


def test_affine_round_trip_random_orientations_and_oblique(tmp_path):
    sources = write_synth(tmp_path / "in", 10, shape=(12, 10, 5), seed=5)
    report = convert([str(tmp_path / "in")], str(tmp_path / "out"), workers=0, progress=False)
    assert report.failures == [] and len(report.stored) == 10
    store = SliceStore.open(str(tmp_path / "out"))
    rng = np.random.default_rng(0)
    orientations = set()
    for path in sources:
        scan_id = Path(path).name[: -len(".nii.gz")]
        _check_scan_against_source(store, scan_id, path, rng)
        record = store.record(scan_id).values
        orientations.add("".join(nib.aff2axcodes(np.asarray(record["source_affine"]))))
        # thick slices come first: the detected axis is the synthetic slice axis
        assert record["spacing_mm"][0] == max(record["spacing_mm"])
    assert len(orientations) >= 5


@pytest.mark.parametrize("slice_axis", ["0", "1", "2"])
def test_forced_slice_axis_keeps_world_positions(tmp_path, slice_axis):
    scan = make_scan(np.random.default_rng(11), 9, 8, 7, oblique_fraction=1.0)
    path = str(tmp_path / "in" / "s.nii.gz")
    os.makedirs(tmp_path / "in")
    nib.save(to_image(scan), path)
    report = convert([path], str(tmp_path / "out"), workers=0, slice_axis=slice_axis, progress=False)
    assert report.stored == ["s"]
    store = SliceStore.open(str(tmp_path / "out"))
    assert store.record("s").values["slice_axis"] == int(slice_axis)
    _check_scan_against_source(store, "s", path, np.random.default_rng(1))


def test_layout_manifest_and_attributes(tmp_path, synth_dir):
    out = tmp_path / "out"
    assert main(["--input", str(synth_dir), "--output", str(out), "--workers", "0", "--no-progress"]) == 0
    assert json.loads((out / "store.json").read_text())["format"] == "slicesr-slice-store"
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [row["scan_id"] for row in manifest] == ["scan000", "scan001", "scan002", "scan003"]
    import zarr

    group = zarr.open_group(str(out / "scans" / "scan000"), mode="r")
    attrs = group.attrs.asdict()
    for key in ("affine", "source_affine", "source", "spacing_mm", "slice_axis", "intensity", "format_version"):
        assert key in attrs, key
    assert set(attrs["intensity"]) == {"offset", "scale"}
    assert (out / "failures.jsonl").read_text() == ""
    for row in manifest:
        assert (out / "complete" / f"{row['scan_id']}.json").exists()


def test_bad_inputs_are_reported_and_do_not_stop_the_run(tmp_path, bad_inputs, capsys):
    folder, expected = bad_inputs
    out = tmp_path / "out"
    code = main(["--input", str(folder), "--output", str(out), "--workers", "0", "--no-progress"])
    assert code == 1
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    by_name = {Path(row["source"]).name: row["error"] for row in failures}
    assert set(by_name) == set(expected)
    for name, phrase in expected.items():
        assert phrase in by_name[name], (name, by_name[name])
    assert SliceStore.open(str(out)).completed_ids() == ["good"]
    err = capsys.readouterr().err
    assert "Traceback" not in err and "truncated gzip" in err


def test_rerun_skips_overwrite_redoes_and_changed_sources_are_redone(tmp_path, synth_dir):
    out = str(tmp_path / "out")
    first = convert([str(synth_dir)], out, workers=0, progress=False)
    assert len(first.stored) == 4
    marker = Path(out) / "complete" / "scan001.json"
    before = marker.stat().st_mtime_ns
    again = convert([str(synth_dir)], out, workers=0, progress=False)
    assert again.stored == [] and len(again.skipped) == 4
    assert marker.stat().st_mtime_ns == before
    # a source that changed (new contents, new mtime) is converted again
    changed = synth_dir / "scan002.nii.gz"
    write_nifti(changed, np.ones((5, 6, 7), dtype=np.float32))
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = convert([str(synth_dir)], out, workers=0, progress=False)
    assert third.stored == ["scan002"] and len(third.skipped) == 3
    assert SliceStore.open(out).record("scan002").shape == (7, 5, 6)
    forced = convert([str(synth_dir)], out, workers=0, overwrite=True, progress=False)
    assert sorted(forced.stored) == ["scan000", "scan001", "scan002", "scan003"]


def test_same_files_through_a_symlinked_folder_are_the_same_scans(tmp_path, synth_dir):
    # a second path to the same files (a symlinked checkout, another mount) must not store every scan a
    # second time under a hash-suffixed id: a random split would then put one scan on both sides
    out = str(tmp_path / "out")
    first = convert([str(synth_dir)], out, workers=0, progress=False)
    alias = tmp_path / "alias"
    alias.symlink_to(synth_dir, target_is_directory=True)
    again = convert([str(alias)], out, workers=0, progress=False)
    assert again.stored == [] and sorted(again.skipped) == sorted(first.stored)
    # rewritten through the alias (new mtime, same name): converted again under its own id
    changed = alias / "scan001.nii.gz"
    write_nifti(changed, np.ones((5, 6, 7), dtype=np.float32))
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = convert([str(alias)], out, workers=0, progress=False)
    assert third.stored == ["scan001"]
    assert SliceStore.open(out).completed_ids() == sorted(first.stored)
    # the same file named through both paths in one run is one scan
    both = convert([str(synth_dir / "scan000.nii.gz"), str(alias / "scan000.nii.gz")], str(tmp_path / "out2"),
                   workers=0, progress=False)
    assert both.stored == ["scan000"]


def test_half_written_scan_is_not_listed_and_is_redone(tmp_path, synth_dir):
    out = str(tmp_path / "out")
    convert([str(synth_dir)], out, workers=0, progress=False)
    # Simulate a crash after data was written but before the marker: remove marker and some chunks.
    os.remove(Path(out) / "complete" / "scan003.json")
    chunk_dir = Path(out) / "scans" / "scan003" / "slices" / "c"
    for chunk in sorted(chunk_dir.iterdir())[:2]:
        import shutil

        shutil.rmtree(chunk) if chunk.is_dir() else chunk.unlink()
    store = SliceStore.open(out)
    assert "scan003" not in store.completed_ids()
    with pytest.raises(KeyError):
        store.slices("scan003")
    report = convert([str(synth_dir)], out, workers=0, progress=False)
    assert report.stored == ["scan003"]
    _check_scan_against_source(SliceStore.open(out), "scan003", str(synth_dir / "scan003.nii.gz"),
                               np.random.default_rng(2))


def test_killed_run_resumes_and_stores_every_scan_once(tmp_path):
    sources = write_synth(tmp_path / "in", 32, shape=(80, 80, 12), seed=3)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "preprocessing.to_zarr", "--input", str(tmp_path / "in"), "--output", str(out),
           "--workers", "0", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        done = list((out / "complete").glob("*.json")) if (out / "complete").exists() else []
        if len(done) >= 3:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    stored_before = len(list((out / "complete").glob("*.json")))
    assert 3 <= stored_before < 32, "the run should have been killed half-way"
    assert main(["--input", str(tmp_path / "in"), "--output", str(out), "--workers", "0", "--no-progress"]) == 0
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    ids = [row["scan_id"] for row in manifest]
    assert len(ids) == len(set(ids)) == 32
    store = SliceStore.open(str(out))
    rng = np.random.default_rng(4)
    for path in sources:
        _check_scan_against_source(store, Path(path).name[: -len(".nii.gz")], path, rng)
    assert not list(out.rglob(".partial-*"))


def test_dask_two_workers_match_in_process_conversion(tmp_path):
    write_synth(tmp_path / "in", 6, shape=(16, 14, 5), seed=9)
    inline = convert([str(tmp_path / "in")], str(tmp_path / "inline"), workers=0, progress=False)
    dask = convert([str(tmp_path / "in")], str(tmp_path / "dask"), workers=2, progress=False)
    assert sorted(dask.stored) == sorted(inline.stored) and len(dask.stored) == 6
    a, b = SliceStore.open(str(tmp_path / "inline")), SliceStore.open(str(tmp_path / "dask"))
    for scan_id in inline.stored:
        np.testing.assert_array_equal(a.slices(scan_id)[...], b.slices(scan_id)[...])
        assert a.record(scan_id).values["affine"] == b.record(scan_id).values["affine"]


def test_existing_scheduler_address(tmp_path):
    from dask.distributed import LocalCluster

    write_synth(tmp_path / "in", 3, shape=(10, 10, 4))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        code = main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                     "--scheduler", cluster.scheduler_address, "--no-progress"])
    assert code == 0
    assert len(SliceStore.open(str(tmp_path / "out")).completed_ids()) == 3


def test_input_kinds_and_scan_ids(tmp_path):
    write_synth(tmp_path / "a" / "site1", 2, shape=(8, 8, 4), prefix="case")
    write_synth(tmp_path / "b", 1, shape=(8, 8, 4), prefix="case", seed=1)
    listing = tmp_path / "list.txt"
    listing.write_text("# scans\nb/case000.nii.gz\n\n")  # relative to the list's folder
    # folder root a/site1 and glob root a/site1 name the same two files (counted once); the list's
    # b/case000 collides with a/site1/case000, so both get a hash suffix
    report = convert([str(tmp_path / "a" / "site1"), str(tmp_path / "a" / "site1" / "case*.nii.gz"), str(listing)],
                     str(tmp_path / "out"), workers=0, progress=False)
    ids = sorted(report.stored)
    assert len(ids) == 3 and "case001" in ids
    assert sum(1 for i in ids if i.startswith("case000-")) == 2
    assert report.failures == []
    # nested folders: the path relative to the input root, separators as "__"
    nested = convert([str(tmp_path / "a")], str(tmp_path / "out2"), workers=0, progress=False)
    assert sorted(nested.stored) == ["site1__case000", "site1__case001"]
    # ids are stable: the same inputs give the same ids again
    again = convert([str(tmp_path / "a" / "site1"), str(listing)], str(tmp_path / "out3"), workers=0, progress=False)
    assert sorted(again.stored) == ids


def test_usage_errors_exit_2(tmp_path, synth_dir, capsys):
    assert main(["--input", str(tmp_path / "nothing-here"), "--output", str(tmp_path / "o")]) == 2
    assert "no NIfTI inputs found" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    assert main(["--input", str(synth_dir), "--output", str(foreign), "--workers", "0"]) == 2
    assert (foreign / "precious.txt").read_text() == "keep me"
    assert "not a slicesr store" in capsys.readouterr().err
    assert main(["--input", str(synth_dir), "--output", str(tmp_path / "o"), "--storage-option", "novalue"]) == 2
    assert main(["--input", str(synth_dir)]) == 2
    assert main(["--input", str(synth_dir), "--output", str(tmp_path / "o"), "--workers", "-1"]) == 2
    with pytest.raises(UsageError):
        convert([], str(tmp_path / "o"))
    with pytest.raises(StoreError):
        afile = tmp_path / "afile"
        afile.write_text("x")
        convert([str(synth_dir)], str(afile), workers=0)


def test_missing_input_among_good_ones_is_a_failure_row(tmp_path, synth_dir):
    out = tmp_path / "out"
    code = main(["--input", str(synth_dir), str(tmp_path / "missing.nii.gz"), "--output", str(out), "--workers", "0",
                 "--no-progress"])
    assert code == 1
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert failures == [{"source": str(tmp_path / "missing.nii.gz"), "error": "no such file, folder or object"}]
    # failures.jsonl describes the latest run only
    assert main(["--input", str(synth_dir), "--output", str(out), "--workers", "0", "--no-progress"]) == 0
    assert (out / "failures.jsonl").read_text() == ""


def test_unexpected_error_in_one_scan_is_a_failure_row(tmp_path, synth_dir, monkeypatch):
    import preprocessing.to_zarr as to_zarr

    def flaky(data):
        raise RuntimeError("simulated codec crash")

    monkeypatch.setattr(to_zarr, "robust_intensity_params", flaky)
    report = convert([str(synth_dir)], str(tmp_path / "out"), workers=0, progress=False)
    assert len(report.failures) == 4
    assert all("unexpected error while converting: RuntimeError: simulated codec crash" in f["error"]
               for f in report.failures)
    assert (tmp_path / "out" / "manifest.jsonl").read_text() == ""


def test_unreachable_scheduler_is_a_usage_error(tmp_path, synth_dir, capsys):
    code = main(["--input", str(synth_dir), "--output", str(tmp_path / "out"), "--scheduler", "tcp://127.0.0.1:9",
                 "--no-progress"])
    assert code == 2
    assert "cannot start or reach the Dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err


def test_separate_runs_with_colliding_ids_never_overwrite_each_other(tmp_path):
    write_synth(tmp_path / "siteA", 1, shape=(8, 8, 4), prefix="case", seed=1)
    write_synth(tmp_path / "siteB", 1, shape=(8, 8, 4), prefix="case", seed=2)
    out = str(tmp_path / "out")
    first = convert([str(tmp_path / "siteA")], out, workers=0, progress=False)
    assert first.stored == ["case000"]
    second = convert([str(tmp_path / "siteB")], out, workers=0, progress=False)
    assert len(second.stored) == 1 and second.stored[0].startswith("case000-")
    store = SliceStore.open(out)
    assert store.record("case000").values["source"].endswith("siteA/case000.nii.gz")
    # both together later: each source keeps the id it already has, nothing is stored twice
    both = convert([str(tmp_path / "siteA"), str(tmp_path / "siteB")], out, workers=0, progress=False)
    assert both.stored == [] and sorted(both.skipped) == sorted(["case000", second.stored[0]])
    assert len(store.completed_ids()) == 2


def test_rerun_with_another_slice_axis_converts_again(tmp_path, synth_dir):
    out = str(tmp_path / "out")
    convert([str(synth_dir)], out, workers=0, progress=False)
    again = convert([str(synth_dir)], out, workers=0, slice_axis="0", progress=False)
    assert len(again.stored) == 4
    assert all(SliceStore.open(out).record(i).values["slice_axis"] == 0 for i in again.stored)


def test_bids_sidecars_are_recorded_and_a_bad_one_fails_its_scan(tmp_path, caplog):
    folder = tmp_path / "in"
    paths = write_synth(folder, 3)
    sidecars = [Path(p.replace(".nii.gz", ".json")) for p in paths]
    sidecars[0].write_text(json.dumps({"SliceThickness": 3.0, "SpacingBetweenSlices": 1000 - 1}))
    sidecars[2].write_text("{broken")
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        assert main(["--input", str(folder), "--output", str(out), "--workers", "0", "--no-progress"]) == 1
    store = SliceStore.open(str(out))
    records = store.records()
    assert records["scan000"].values["slice_thickness_mm"] == 3.0
    assert records["scan000"].values["sidecar"] == str(sidecars[0])
    assert "slice_thickness_mm" not in records["scan001"].values  # no sidecar: nothing recorded
    assert "scan002" not in store.completed_ids()
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert "scan002.json" in failures[0]["error"] and "not valid JSON" in failures[0]["error"]
    assert "SpacingBetweenSlices 999" in caplog.text  # disagrees with the header's slice spacing
