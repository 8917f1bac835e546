"""Fault tolerance on the session's real Ray cluster: a training worker killed mid-run."""

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from mlflow import MlflowClient

from cluster.train import train
from tests.cluster.conftest import recorded_checkpoint_step

pytestmark = pytest.mark.slow


def _train_workers():
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "RayTrainWorker" in cmdline and "IDLE" not in cmdline:
            found.append(process.info["pid"])
    return found


def test_killed_worker_resumes_from_the_last_checkpoint(cluster_config, tmp_path):
    config = cluster_config("sr", "train.max_steps=160", "train.checkpoint_every=20", "train.val_every=80",
                            "train.log_every=10", "cluster.max_failures=2", "tracking.register=false")
    run_dir = Path(config.run.storage_path) / config.run.name
    killed = []

    def kill_after_a_checkpoint():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            if recorded_checkpoint_step(run_dir) >= 20:  # Ray Train has recorded a checkpoint
                workers = _train_workers()
                if workers:
                    os.kill(workers[-1], signal.SIGKILL)
                    killed.append(workers[-1])
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_after_a_checkpoint, daemon=True)
    killer.start()
    result = train(config)
    killer.join(5)
    assert killed, "no training worker was found to kill"
    assert result.metrics["step"] == 160

    client = MlflowClient(config.tracking.uri)
    resumed = client.get_metric_history(result.run_id, "resumed_at_step")
    assert resumed, "the run did not restart from a checkpoint"
    restart_step = int(resumed[-1].value)
    assert 0 < restart_step < 160 and restart_step % 20 == 0  # a checkpoint step
    assert all(m.value == m.value and abs(m.value) < 1e3 for m in client.get_metric_history(result.run_id, "l1"))

    checkpoints = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    state = torch.load(checkpoints[-1] / "training_state.pt", weights_only=True)
    assert state["step"] == 160
    # Adam counts the steps it applied: the restored run applied exactly the configured total
    adam = state["optimizers"]["generator"]["state"]
    assert {int(s["step"]) for s in adam.values()} == {160}
