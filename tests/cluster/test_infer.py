"""`python -m cluster.infer` on the session's Ray cluster: outputs identical to `slicesr.inference`,
resumability, failures, usage errors, slice-store inputs and an S3 round trip on a moto server."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import nibabel as nib
import numpy as np
import pytest
import torch

import cluster.infer
from cluster.infer import infer_many, main
from preprocessing.to_zarr import convert
from slicesr.config import load_config
from slicesr.geometry import find_slice_axis, scale_axis
from slicesr.inference import infer_volume, load_method, super_resolve
from slicesr.modeldir import write_model_dir
from slicesr.models.generators import build_generator
from slicesr.nifti import load_volume, save_nifti_atomic
from slicesr.stage2.train import generator_size
from tests.conftest import write_nifti, write_synth
from tests.preprocessing.test_s3 import _start_moto

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SHAPE = (16, 14, 5)  # seed 15: a uint8, a float32 and a scaled int16 scan (random orientations)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scans") / "in"
    return folder, write_synth(folder, 3, shape=SHAPE, seed=15)


@pytest.fixture(scope="module")
def sr_model(tmp_path_factory):
    """An untrained (perturbed) tiny stage II generator (configs/debug/stage2.yaml, K=4) as a model directory."""
    config = load_config("configs/debug/stage2.yaml")
    torch.manual_seed(0)
    model = build_generator(generator_size(config))
    with torch.no_grad():  # DeepResolve is the identity at init (a residual on the linear grid): perturb it
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    path = tmp_path_factory.mktemp("model") / "sr"
    write_model_dir(path, model.state_dict(), config, {"stage": "sr", "k": 4, "method": "Proposed with DeepResolve"})
    return str(path)


def _is_scaled(path) -> bool:
    proxy = nib.load(path).dataobj
    return bool(proxy.slope != 1.0 or proxy.inter != 0.0)


def _check(got_path, source: str, method: str, k: int, folder: Path, atol: float = 0.0) -> None:
    """The output equals what `slicesr infer` writes for the same file (saved and loaded back the same
    way): bit for bit with atol=0, else within atol times the value range.

    A scaled integer input (int16 + scl_slope) is the exception: its output is int16 with a new slope
    chosen by nibabel (slicesr.nifti.Volume.scaled), which for a scan rebuilt from a slice store need not
    be the file's; there the output must hold the float result of super_resolve to within half a step of
    its new slope.
    """
    got = nib.load(got_path)
    path = folder / Path(source).name
    save_nifti_atomic(infer_volume(load_volume(source), load_method(method), k), path)
    expected = nib.load(path)
    assert got.shape == expected.shape
    assert got.get_data_dtype() == nib.load(source).get_data_dtype() == expected.get_data_dtype()
    np.testing.assert_allclose(got.affine, expected.affine, rtol=0, atol=1e-9 if atol else 0.0)
    if _is_scaled(source):
        data, _ = super_resolve(load_volume(source), load_method(method), k)
        step = abs(float(got.dataobj.slope))
        assert 0 < step < 1e-3 * np.ptp(data)
        np.testing.assert_allclose(got.get_fdata(), data, rtol=0, atol=0.51 * step + atol * np.ptp(data))
    elif atol == 0.0:
        np.testing.assert_array_equal(got.get_fdata(), expected.get_fdata())
    else:
        np.testing.assert_allclose(got.get_fdata(), expected.get_fdata(), rtol=0,
                                   atol=atol * (np.ptp(expected.get_fdata()) or 1.0))


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_folder_to_folder_matches_inference_and_resumes(ray_cluster, scans, sr_model, tmp_path, monkeypatch):
    folder, sources = scans
    address = ray_cluster["address"]
    out = tmp_path / "linear"
    report = infer_many([str(folder)], str(out), "linear", 2, address=address, progress=False)
    names = ["scan000.nii.gz", "scan001.nii.gz", "scan002.nii.gz"]
    assert report.failures == [] and report.skipped == [] and report.exit_code == 0
    assert report.written == [str(out / name) for name in names]
    assert sorted(os.listdir(out)) == ["failures.jsonl", *names] and _rows(out / "failures.jsonl") == []
    for source in sources:
        got = nib.load(out / Path(source).name)
        _check(out / Path(source).name, source, "linear", 2, tmp_path / "expected_linear")
        lr = nib.load(source)
        axis = find_slice_axis(lr.affine)
        assert got.shape[axis] == 2 * (lr.shape[axis] - 1) + 1
        np.testing.assert_allclose(got.affine, scale_axis(lr.affine, axis, 0.5))

    # The tasks get the model's bytes through the object store, not the driver's path: a copy of the model
    # directory deleted right after the driver has read it still serves the whole run.
    copy = tmp_path / "model_copy"
    shutil.copytree(sr_model, copy)

    def load_then_delete(*args, **kwargs):
        spec = original(*args, **kwargs)
        shutil.rmtree(copy)
        return spec

    original = cluster.infer.load_model
    monkeypatch.setattr(cluster.infer, "load_model", load_then_delete)
    out_sr = tmp_path / "sr"
    report = infer_many([str(folder)], str(out_sr), str(copy), address=address, progress=False)  # K from the model
    monkeypatch.undo()
    assert not copy.exists()
    assert report.k == 4 and len(report.written) == 3 and report.failures == []
    for source in sources:
        _check(out_sr / Path(source).name, source, sr_model, 4, tmp_path / "expected_sr", atol=1e-5)
        linear, _ = super_resolve(load_volume(source), load_method("linear"), 4)
        assert np.abs(nib.load(out_sr / Path(source).name).get_fdata() - linear).max() > 1e-3 * np.ptp(linear)

    # a second run skips everything and leaves the outputs untouched
    stamps = {name: os.stat(out / name).st_mtime_ns for name in names}
    again = infer_many([str(folder)], str(out), "linear", 2, address=address, progress=False)
    assert again.written == [] and again.failures == [] and len(again.skipped) == 3
    assert {name: os.stat(out / name).st_mtime_ns for name in names} == stamps
    # --overwrite redoes them (and a missing one alone is redone without it)
    os.unlink(out / names[1])
    partial = infer_many([str(folder)], str(out), "linear", 2, address=address, progress=False)
    assert partial.written == [str(out / names[1])] and len(partial.skipped) == 2
    assert len(infer_many([str(folder)], str(out), "linear", 2, overwrite=True, progress=False).written) == 3


def test_bad_inputs_fail_alone(ray_cluster, bad_inputs, tmp_path, capsys):
    folder, phrases = bad_inputs
    singular = np.eye(4)
    singular[2, 2] = 0.0  # only the sform can hold it (a qform must decompose)
    header = nib.Nifti1Header()
    header.set_sform(singular, code=1)
    nib.save(nib.Nifti1Image(np.ones((6, 6, 4), dtype=np.float32), None, header=header), folder / "singular.nii.gz")
    phrases["singular.nii.gz"] = "unusable affine"
    write_nifti(folder / "oneslice.nii.gz", np.ones((6, 6, 1), dtype=np.float32))
    phrases["oneslice.nii.gz"] = "2D image"
    out = tmp_path / "out"
    code = main([str(folder), "--output", str(out), "--model", "linear", "--k", "2",
                 "--address", ray_cluster["address"], "--no-progress"])
    assert code == 1
    assert sorted(os.listdir(out)) == ["failures.jsonl", "good.nii.gz"]
    rows = {Path(row["source"]).name: row for row in _rows(out / "failures.jsonl")}
    assert sorted(rows) == sorted(phrases)
    for name, phrase in phrases.items():
        assert phrase in rows[name]["error"], (name, rows[name])
        assert rows[name]["source"] == str(folder / name)
    err = capsys.readouterr().err
    assert f"failed: {folder / 'truncated.nii.gz'}: truncated gzip" in err
    # the good scan is done: a second run only retries the bad ones, which fail again
    again = infer_many([str(folder)], str(out), "linear", 2, progress=False)
    assert len(again.skipped) == 1 and again.written == [] and len(again.failures) == len(phrases)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_uncertainty_maps_beside_the_outputs(ray_cluster, scans, sr_model, tmp_path):
    """--uncertainty: each task writes <name>_uncertainty.nii.gz as `slicesr infer` does; a run is done
    only when both files exist."""
    from slicesr.inference import infer_volume_uncertainty

    folder, sources = scans
    out = tmp_path / "sr"
    report = infer_many([str(folder)], str(out), sr_model, uncertainty=True, address=ray_cluster["address"],
                        progress=False)
    assert len(report.written) == 3 and report.failures == []
    for source in sources:
        stem = Path(source).name[: -len(".nii.gz")]
        expected, expected_map = infer_volume_uncertainty(load_volume(source), load_method(sr_model), 4)
        got_map = nib.load(out / f"{stem}_uncertainty.nii.gz")
        assert got_map.shape == expected_map.shape and got_map.get_data_dtype() == np.float32
        np.testing.assert_allclose(got_map.affine, expected_map.affine, atol=1e-9)
        np.testing.assert_allclose(got_map.get_fdata(), expected_map.get_fdata(), rtol=1e-4,
                                   atol=1e-5 * (np.ptp(expected_map.get_fdata()) or 1.0))
    spaced = infer_many([str(folder)], str(tmp_path / "spaced"), "linear", spacing_mm=1.0,
                        address=ray_cluster["address"], progress=False)
    assert len(spaced.written) == 3 and spaced.failures == []
    for source in sources:  # the slice axis's spacing is 1 mm in every output
        got = nib.load(tmp_path / "spaced" / Path(source).name)
        assert np.linalg.norm(got.affine[:3, find_slice_axis(nib.load(source).affine)]) == pytest.approx(1.0)
    from slicesr.inference import infer_volume

    turned = infer_many([sources[0]], str(tmp_path / "turned"), sr_model, tta_angles=(45,),
                        address=ray_cluster["address"], progress=False)  # the rotations reach the tasks
    assert len(turned.written) == 1 and turned.failures == []
    expected = infer_volume(load_volume(sources[0]), load_method(sr_model), 4, tta_angles=(45,)).get_fdata()
    np.testing.assert_allclose(nib.load(turned.written[0]).get_fdata(), expected, rtol=1e-4,
                               atol=1e-5 * (np.ptp(expected) or 1.0))
    fewer = infer_many([sources[0]], str(tmp_path / "fewer"), sr_model, tta_angles=(45,), tta_flips="slice",
                       address=ray_cluster["address"], progress=False)  # and the flips
    expected = infer_volume(load_volume(sources[0]), load_method(sr_model), 4, tta_angles=(45,),
                            tta_flips="slice").get_fdata()
    np.testing.assert_allclose(nib.load(fewer.written[0]).get_fdata(), expected, rtol=1e-4,
                               atol=1e-5 * (np.ptp(expected) or 1.0))
    assert np.abs(expected - nib.load(turned.written[0]).get_fdata()).max() > 0  # not the 8 flips' mean
    os.unlink(out / "scan001_uncertainty.nii.gz")  # an output without its map is redone
    again = infer_many([str(folder)], str(out), sr_model, uncertainty=True, address=ray_cluster["address"],
                       progress=False)
    assert again.written == [str(out / "scan001.nii.gz")] and len(again.skipped) == 2


def test_usage_errors_stop_before_any_task(scans, sr_model, tmp_path, capsys):
    folder, _ = scans
    out = tmp_path / "out"

    def run(*args: str) -> tuple[int, str]:
        code = main([*args, "--output", str(out), "--no-progress"])
        return code, capsys.readouterr().err

    code, err = run(str(folder), "--model", str(tmp_path / "no-such-model"))
    assert code == 2 and "no-such-model" in err
    code, err = run(str(folder), "--model", "nearest", "--k", "2")
    assert code == 2 and "not linear, cubic" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    code, err = run(str(folder), "--model", str(broken))
    assert code == 2 and "missing model.safetensors" in err
    code, err = run(str(folder), "--model", "linear")
    assert code == 2 and "--k or --spacing is needed" in err
    code, err = run(str(folder), "--model", "linear", "--k", "1")
    assert code == 2 and "K must be 2 or more" in err
    code, err = run(str(folder), "--model", sr_model, "--k", "3")
    assert code == 2 and "trained for K=4" in err
    (tmp_path / "empty").mkdir()
    code, err = run(str(tmp_path / "empty"), str(tmp_path / "missing"), "--model", "linear", "--k", "2")
    assert code == 2 and "no NIfTI inputs found" in err and "missing" in err
    code, err = run(f"@{tmp_path / 'nolist.txt'}", "--model", "linear", "--k", "2")
    assert code == 2 and "nolist.txt: no such input list" in err
    code, err = run(str(folder), "--model", "linear", "--k", "2", "--cpus-per-task", "0")
    assert code == 2 and "--cpus-per-task" in err
    code, err = run(str(folder), "--model", "linear", "--k", "2", "--uncertainty")
    assert code == 2 and "need a trained model" in err
    code, err = run(str(folder), "--model", sr_model, "--tta-angles", "720")
    assert code == 2 and "multiple of 360" in err
    clash = tmp_path / "clash"
    clash.mkdir()
    for name in ("a.nii.gz", "a_uncertainty.nii.gz"):
        shutil.copy(next(folder.glob("*.nii.gz")), clash / name)
    code, err = run(str(clash), "--model", sr_model, "--uncertainty")
    assert code == 2 and "would overwrite another scan's output" in err
    assert main([str(folder), "--model", "linear"]) == 2  # argparse: --output missing
    capsys.readouterr()
    (tmp_path / "file").write_text("x")
    assert main([str(folder), "--output", str(tmp_path / "file"), "--model", "linear", "--k", "2"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert not out.exists()  # nothing was started, nothing written
    # the only NIfTI files found are inside OUT (earlier outputs): not inputs
    nested = tmp_path / "data"
    shutil.copytree(folder, nested / "sr")
    assert main([str(nested), "--output", str(nested / "sr"), "--model", "linear", "--k", "2"]) == 2
    assert "inside the output location" in capsys.readouterr().err

    # An unreachable Ray address: refused in seconds, through the real command (a fresh process).
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.infer", str(folder), "--output", str(out), "--model", "linear", "--k", "2",
         "--address", f"127.0.0.1:{_free_port()}", "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "cannot reach Ray" in proc.stderr and time.monotonic() - started < 60
    assert not list(out.glob("*.nii.gz"))


def test_slice_store_and_list_inputs(ray_cluster, scans, tmp_path):
    folder, sources = scans
    store = tmp_path / "lr.zarr"
    convert([str(folder)], str(store), workers=0, progress=False)
    extra = write_synth(tmp_path / "other", 1, shape=SHAPE, seed=16, prefix="extra")[0]  # a uint8 scan
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "inputs.txt").write_text(f"# a store and a file\n{store}\n../other/extra000.nii.gz\n")
    out = tmp_path / "out"
    report = infer_many([f"@{tmp_path / 'lists' / 'inputs.txt'}"], str(out), "linear", 3,
                        address=ray_cluster["address"], progress=False)
    assert report.failures == []
    assert [Path(p).name for p in report.written] == ["extra000.nii.gz", "scan000.nii.gz", "scan001.nii.gz",
                                                      "scan002.nii.gz"]
    _check(out / "extra000.nii.gz", extra, "linear", 3, tmp_path / "expected")
    for source in sources:
        # rebuilt from the store's float32 slices: the same geometry, type and (within float32 rounding) values
        _check(out / Path(source).name, source, "linear", 3, tmp_path / "expected", atol=1e-5)
        assert nib.load(out / Path(source).name).header.get_xyzt_units()[0] == "mm"
    kinds = {str(nib.load(s).get_data_dtype()) + ("-scaled" if _is_scaled(s) else "") for s in sources}
    assert kinds == {"uint8", "float32", "int16-scaled"}
    uint8 = [s for s in sources if nib.load(s).get_data_dtype() == np.uint8]
    _check(out / Path(uint8[0]).name, uint8[0], "linear", 3, tmp_path / "expected")  # integers: bit for bit


def test_s3_inputs_and_outputs(ray_cluster, scans, tmp_path, capsys):
    folder, sources = scans
    proc, endpoint = _start_moto()
    try:
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
        for bucket in ("raw", "results"):
            client.create_bucket(Bucket=bucket)
        for source in sources[:2]:
            client.upload_file(source, "raw", f"site/{Path(source).name}")
        client.put_object(Bucket="raw", Key="site/broken.nii.gz", Body=b"not a scan")
        options = ["--storage-option", f"endpoint_url={endpoint}", "--storage-option", "key=testing",
                   "--storage-option", "secret=testing", "--storage-option", "client_kwargs.region_name=us-east-1"]
        args = ["s3://raw/site", "--output", "s3://results/sr/", "--model", "linear", "--k", "2",
                "--address", ray_cluster["address"], "--no-progress", *options]
        assert main(args) == 1
        keys = {obj["Key"] for obj in client.list_objects_v2(Bucket="results")["Contents"]}
        assert keys == {"sr/scan000.nii.gz", "sr/scan001.nii.gz", "sr/failures.jsonl"}
        failures = [json.loads(line) for line in
                    client.get_object(Bucket="results", Key="sr/failures.jsonl")["Body"].read().decode().splitlines()]
        assert [row["source"] for row in failures] == ["s3://raw/site/broken.nii.gz"]
        assert "not a NIfTI" in failures[0]["error"]
        for source in sources[:2]:
            local = tmp_path / "got" / Path(source).name
            local.parent.mkdir(exist_ok=True)
            client.download_file("results", f"sr/{Path(source).name}", str(local))
            _check(local, source, "linear", 2, tmp_path / "expected")
        # resumable on S3 too; and the missing bucket is a usage error before any task
        client.delete_object(Bucket="raw", Key="site/broken.nii.gz")
        capsys.readouterr()
        assert main(args) == 0
        assert "super-resolved 0 scans with linear (K=2), already done 2, failed 0" in capsys.readouterr().out
        assert main([*args[:2], "s3://no-such-bucket/sr", *args[3:]]) == 2
        assert "no-such-bucket" in capsys.readouterr().err
        # a slice store on S3 as input, outputs on S3
        client.create_bucket(Bucket="stores")
        storage = {"endpoint_url": endpoint, "key": "testing", "secret": "testing",
                   "client_kwargs": {"region_name": "us-east-1"}}
        convert(["s3://raw/site"], "s3://stores/lr", workers=0, storage_options=storage, progress=False)
        report = infer_many(["s3://stores/lr"], "s3://results/from-store", "linear", 2, storage_options=storage,
                            progress=False)
        assert report.failures == [] and report.written == ["s3://results/from-store/scan000.nii.gz",
                                                            "s3://results/from-store/scan001.nii.gz"]
        client.download_file("results", "from-store/scan000.nii.gz", str(tmp_path / "from_store.nii.gz"))
        got, expected = nib.load(tmp_path / "from_store.nii.gz"), nib.load(tmp_path / "got" / "scan000.nii.gz")
        assert got.shape == expected.shape and got.get_data_dtype() == expected.get_data_dtype()
        np.testing.assert_allclose(got.affine, expected.affine, rtol=0, atol=1e-9)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_registered_model_resolved_once_on_the_driver(ray_cluster, scans, sr_model, tmp_path, monkeypatch, capsys):
    from cluster.tracking import Tracker

    folder, sources = scans
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "infer-test")
    assert tracker.register(tracker.start_run("run", "run"), sr_model, "slicesr-sr") == "1"
    calls = []
    import slicesr.registry  # cluster.infer imports resolve_model_uri from it when a models:/ URI is given

    resolve = slicesr.registry.resolve_model_uri
    monkeypatch.setattr(slicesr.registry, "resolve_model_uri", lambda *a, **kw: calls.append(a) or resolve(*a, **kw))
    out = tmp_path / "out"
    code = main([str(folder), "--output", str(out), "--model", "models:/slicesr-sr@candidate", "--tracking-uri", uri,
                 "--address", ray_cluster["address"], "--no-progress"])
    assert code == 0 and len(calls) == 1
    for source in sources:
        _check(out / Path(source).name, source, sr_model, 4, tmp_path / "expected", atol=1e-5)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main([str(folder), "--output", str(tmp_path / "x"), "--model", "models:/slicesr-sr@champion"]) == 2
    assert "models:/slicesr-sr@champion: not found" in capsys.readouterr().err
