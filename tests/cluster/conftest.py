"""One real Ray cluster per test session (`ray start --head` on 127.0.0.1, its own process group and
temp folder), tiny slice stores built once, and MLflow on SQLite in the test's folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from preprocessing.to_zarr import convert
from slicesr.config import load_config
from slicesr.models.vae_gan import VaeGan, VaeGanSize
from slicesr.stage1.synthesis import synthesize_store
from slicesr.store import SliceStore
from tests.conftest import write_synth

RAY = str(Path(sys.executable).with_name("ray"))
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout_s} s")


def recorded_checkpoint_step(run_dir) -> int:
    """The step of the latest checkpoint Ray Train has recorded for a run folder (-1: none yet)."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        return int(snapshot["latest_checkpoint_result"]["metrics"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


@pytest.fixture(scope="session")
def ray_cluster():
    """A Ray head started with the real CLI; yields its GCS and dashboard addresses."""
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "DS_ACCELERATOR": "cpu"}
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--num-cpus", "4",
         "--temp-dir", temp, "--include-dashboard", "true", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=str(REPO))

    def dashboard_up() -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/api/version", timeout=2):
                return True
        except OSError:
            return head.poll() is not None  # stop waiting if the head died

    wait_for(dashboard_up, 120, "ray head")
    assert head.poll() is None, "ray start --head exited"
    os.environ["RAY_AUTH_MODE"] = "disabled"
    info = {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard}", "temp": temp}
    yield info
    import ray

    ray.shutdown()
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def cluster_stores(tmp_path_factory):
    """An LR store (5 scans: 3 train, 2 val) and the synthetic HR store an untrained VAE makes of it."""
    root = tmp_path_factory.mktemp("stores")
    write_synth(root / "lr", 5, shape=(24, 20, 6), seed=7)
    convert([str(root / "lr")], str(root / "lr.zarr"), workers=0, progress=False)
    torch.manual_seed(0)
    vae = VaeGan(VaeGanSize(image_size=16, channels=4, max_channels=8, num_blocks=2, latent_dim=8, disc_channels=4))
    synthesize_store(vae, SliceStore.open(str(root / "lr.zarr")), SliceStore.create(str(root / "hr.zarr")), 4,
                     keep_acquired=True, progress=False)
    return {"vae": str(root / "lr.zarr"), "sr": str(root / "hr.zarr"), "lr_dir": str(root / "lr")}


@pytest.fixture
def cluster_config(tmp_path, cluster_stores, ray_cluster):
    """Debug config of a stage for a 2-worker run on the session's Ray cluster, MLflow in tmp_path."""

    def make(stage: str, *overrides: str):
        path = "configs/debug/stage1.yaml" if stage == "vae" else "configs/debug/stage2.yaml"
        return load_config(path, [f"data.store={cluster_stores[stage]}", f"run.storage_path={tmp_path / 'runs'}",
                                  f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "cluster.num_workers=2",
                                  f"cluster.address={ray_cluster['address']}", *overrides])

    return make
