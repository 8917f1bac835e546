"""README "Scaling out" against local stand-ins: the slice store on S3 (moto's server on 127.0.0.1),
MLflow as a server (`mlflow server`, SQLite database backend, S3 artefact root on the same moto),
the session's `ray start --head` cluster with 2 workers; then inference with the registered model."""

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nibabel as nib
import pytest

from cluster.train import train
from preprocessing.to_zarr import convert
from slicesr.cli import main as slicesr_main
from slicesr.config import load_config
from tests.cluster.conftest import free_port
from tests.conftest import write_synth
from tests.preprocessing.test_s3 import _client, _options, _start_moto

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    moto, endpoint = _start_moto()
    _client(endpoint).create_bucket(Bucket="data")
    _client(endpoint).create_bucket(Bucket="mlflow")
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", "s3://mlflow/artifacts",
         "--workers", "1"],
        env=env, stdout=open(folder / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except OSError:
            assert server.poll() is None, (folder / "server.log").read_text()[-2000:]
            time.sleep(0.5)
    else:
        raise TimeoutError("mlflow server did not start")
    yield {"s3": endpoint, "mlflow": url}
    server.terminate()
    server.wait(20)
    moto.terminate()
    moto.wait(10)


def test_train_on_s3_store_tracked_by_mlflow_server_then_infer(services, tmp_path, cluster_stores, ray_cluster,
                                                               monkeypatch):
    options = _options(services["s3"])
    write_synth(tmp_path / "hr", 4, shape=(22, 20, 13), seed=5)
    report = convert([str(tmp_path / "hr")], "s3://data/real_hr.zarr", workers=0, storage_options=options,
                     progress=False)
    assert len(report.stored) == 4
    overrides = ["data.store=s3://data/real_hr.zarr", "sr.supervision=real", "sr.patch_size=[5,6,6]",
                 f"run.storage_path={tmp_path / 'runs'}", f"tracking.uri={services['mlflow']}",
                 "cluster.num_workers=2", f"cluster.address={ray_cluster['address']}", "train.max_steps=4"]
    config = load_config("configs/debug/stage2.yaml", overrides)
    config.data.storage_options = options
    result = train(config)
    assert result.metrics["step"] == 4 and result.registered_model == "slicesr-sr-supervised"

    # the registered model, through the server (artefacts proxied from S3), by alias
    monkeypatch.setenv("MLFLOW_TRACKING_URI", services["mlflow"])
    lr = tmp_path / "lr.nii.gz"
    write_synth(tmp_path / "lr", 1, shape=(20, 18, 5), seed=9)
    (tmp_path / "lr" / "scan000.nii.gz").rename(lr)
    out = tmp_path / "sr.nii.gz"
    assert slicesr_main(["infer", str(lr), "--output", str(out), "--model",
                         "models:/slicesr-sr-supervised@candidate"]) == 0
    before, after = nib.load(lr).shape, nib.load(out).shape
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(changed) == 1 and changed[0][1] == 4 * (changed[0][0] - 1) + 1
    keys = [o["Key"] for o in _client(services["s3"]).list_objects_v2(Bucket="mlflow").get("Contents", [])]
    assert any(key.endswith("model.safetensors") for key in keys)  # the artefact root is S3
