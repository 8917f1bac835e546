"""The converter against a real S3-compatible server (moto's) on loopback: input and output on S3."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import numpy as np
import pytest

from preprocessing.to_zarr import convert, main
from slicesr.errors import StoreError
from slicesr.store import SliceStore
from tests.conftest import write_synth

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CREDENTIALS = {"key": "testing", "secret": "testing"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_moto(extra_env=None):
    port = _free_port()
    executable = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    env = {**os.environ, **(extra_env or {})}
    proc = subprocess.Popen([executable, "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


@pytest.fixture(scope="module")
def s3_endpoint():
    proc, url = _start_moto()
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def _options(endpoint):
    return {**CREDENTIALS, "endpoint_url": endpoint, "client_kwargs": {"region_name": "us-east-1"}}


def _client(endpoint):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                        aws_secret_access_key="testing", region_name="us-east-1")


def test_s3_round_trip_input_and_output(tmp_path, s3_endpoint):
    client = _client(s3_endpoint)
    client.create_bucket(Bucket="raw")
    client.create_bucket(Bucket="stores")
    paths = write_synth(tmp_path / "in", 3, shape=(12, 10, 5), seed=2)
    for path in paths:
        client.upload_file(path, "raw", f"site/{Path(path).name}")
    options = _options(s3_endpoint)
    report = convert(["s3://raw/site"], "s3://stores/lr", workers=0, storage_options=options, progress=False)
    assert sorted(report.stored) == ["scan000", "scan001", "scan002"] and report.failures == []
    local = convert([str(tmp_path / "in")], str(tmp_path / "local"), workers=0, progress=False)
    assert sorted(local.stored) == sorted(report.stored)
    remote_store = SliceStore.open("s3://stores/lr", options)
    local_store = SliceStore.open(str(tmp_path / "local"))
    for scan_id in report.stored:
        np.testing.assert_array_equal(remote_store.slices(scan_id)[...], local_store.slices(scan_id)[...])
        assert remote_store.record(scan_id).values["affine"] == local_store.record(scan_id).values["affine"]
        assert remote_store.record(scan_id).values["source"] == f"s3://raw/site/{scan_id}.nii.gz"
    keys = {obj["Key"] for obj in client.list_objects_v2(Bucket="stores", Prefix="lr/")["Contents"]}
    assert {"lr/store.json", "lr/manifest.jsonl", "lr/failures.jsonl", "lr/complete/scan000.json"} <= keys
    manifest = client.get_object(Bucket="stores", Key="lr/manifest.jsonl")["Body"].read().decode().splitlines()
    assert [json.loads(line)["scan_id"] for line in manifest] == ["scan000", "scan001", "scan002"]
    # a second run on the same S3 inputs skips everything
    again = convert(["s3://raw/site"], "s3://stores/lr", workers=0, storage_options=options, progress=False)
    assert again.stored == [] and len(again.skipped) == 3


def test_s3_with_dask_workers_and_endpoint_from_environment(tmp_path, s3_endpoint):
    client = _client(s3_endpoint)
    client.create_bucket(Bucket="envbucket")
    write_synth(tmp_path / "in", 4, shape=(10, 10, 4), seed=4)
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    proc = subprocess.run(
        [sys.executable, "-m", "preprocessing.to_zarr", "--input", str(tmp_path / "in"),
         "--output", "s3://envbucket/store", "--workers", "2", "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    store = SliceStore.open("s3://envbucket/store", _options(s3_endpoint))
    assert store.completed_ids() == ["scan000", "scan001", "scan002", "scan003"]


def test_missing_bucket_is_a_usage_error(tmp_path, s3_endpoint, capsys):
    write_synth(tmp_path / "in", 1, shape=(8, 8, 4))
    code = main(["--input", str(tmp_path / "in"), "--output", "s3://no-such-bucket/x", "--workers", "0",
                 "--storage-option", f"endpoint_url={s3_endpoint}", "--storage-option", "key=testing",
                 "--storage-option", "secret=testing", "--storage-option", "client_kwargs.region_name=us-east-1"])
    assert code == 2
    assert "no-such-bucket" in capsys.readouterr().err


def test_denied_access_is_a_usage_error(tmp_path):
    # A second server that checks credentials: the unknown key is refused.
    proc, endpoint = _start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        write_synth(tmp_path / "in", 1, shape=(8, 8, 4))
        with pytest.raises(StoreError) as info:
            convert([str(tmp_path / "in")], "s3://locked/store", workers=0,
                    storage_options=_options(endpoint), progress=False)
        assert "access denied" in str(info.value)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
