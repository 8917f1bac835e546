"""The README's `ray job submit` command against the session's real `ray start --head` cluster."""

import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from tests.cluster.conftest import RAY, REPO

pytestmark = pytest.mark.slow


def test_ray_job_submit_trains_and_registers(ray_cluster, cluster_stores, tmp_path):
    # absolute paths: the job's driver runs in a copy of the working folder
    sets = {"data.store": cluster_stores["sr"], "run.storage_path": str(tmp_path / "runs"),
            "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "cluster.num_workers": 2,
            "train.max_steps": 4}
    command = [RAY, "job", "submit", "--address", ray_cluster["dashboard"], "--working-dir", str(REPO), "--",
               sys.executable, "-m", "cluster.train", "--config", "configs/debug/stage2.yaml"]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=480, env=env, cwd=str(REPO))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "succeeded" in done.stdout
    assert "registered slicesr-sr version 1 (alias candidate)" in done.stdout
    assert (tmp_path / "runs" / "debug-stage2" / "best" / "model.safetensors").is_file()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)  # explicit: MLflow keeps a process-wide registry URI
    assert str(client.get_model_version_by_alias("slicesr-sr", "candidate").version) == "1"
