"""cluster.pipeline end to end on tiny synthetic scans, on the session's Ray cluster; then its driver
killed half-way (during stage II training) and started again."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from mlflow import MlflowClient

from cluster.pipeline import main
from tests.cluster.conftest import REPO, recorded_checkpoint_step
from tests.conftest import write_synth

pytestmark = pytest.mark.slow


def _pipeline_yaml(tmp_path, ray_cluster, stage2_steps=6):
    write_synth(tmp_path / "lr", 5, shape=(24, 20, 6), seed=11)
    write_synth(tmp_path / "hr", 2, shape=(24, 20, 13), seed=12, prefix="heldout")
    tree = {
        "workdir": str(tmp_path / "work"),
        "preprocess": {"inputs": [str(tmp_path / "lr")], "workers": 0},
        "stage1": {"config": "configs/debug/stage1.yaml", "max_steps": 6},
        "stage2": {"config": "configs/debug/stage2.yaml", "max_steps": stage2_steps,
                   "set": ["train.checkpoint_every=5", "train.val_every=20"]},
        "evaluation": {"hr": [str(tmp_path / "hr")], "figures": False},
        "set": ["cluster.num_workers=2", f"cluster.address={ray_cluster['address']}",
                "tracking.uri=sqlite:///mlflow.db"],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _client(tmp_path):
    uri = f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}"
    return MlflowClient(uri, registry_uri=uri)  # explicit: MLflow keeps a process-wide registry URI


def _versions(tmp_path, name):
    client = _client(tmp_path)
    return sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))


def test_pipeline_runs_every_step_and_skips_them_when_run_again(tmp_path, ray_cluster, capsys, caplog):
    caplog.set_level(logging.INFO, logger="cluster.pipeline")
    config = _pipeline_yaml(tmp_path, ray_cluster)
    (tmp_path / "lr" / "broken.nii.gz").write_bytes(b"not a NIfTI file")
    assert main(["--config", str(config)]) == 1  # one input failed, every step done with the others
    captured = capsys.readouterr()
    out = captured.out
    assert "| linear |" in out and "| Proposed with DeepResolve |" in out and "| VAE-based up-sample |" in out
    assert "broken.nii.gz" in captured.err
    state = json.loads((tmp_path / "work" / "pipeline_state.json").read_text())
    assert list(state) == ["preprocess", "stage1", "synthesis", "stage2", "registration", "evaluation"]
    assert state["preprocess"]["stored"] == 5 and len(state["preprocess"]["failures"]) == 1
    assert state["synthesis"]["written"] == 5
    assert state["stage1"]["step"] == 6 and state["stage2"]["step"] == 6
    assert state["evaluation"]["champions"] == {"slicesr-vae": "1", "slicesr-sr": "1"}
    assert (tmp_path / "work" / "eval" / "metrics.csv").is_file()

    # the input fixed (here: removed), the step that had failures runs again; the complete ones are skipped
    (tmp_path / "lr" / "broken.nii.gz").unlink()
    caplog.clear()
    assert main(["--config", str(config)]) == 0
    assert "preprocess: 1 inputs failed last time: running it again" in caplog.text
    for step in ("stage1", "synthesis", "stage2", "registration", "evaluation"):
        assert f"{step}: done already, skipped" in caplog.text
    state = json.loads((tmp_path / "work" / "pipeline_state.json").read_text())
    assert state["preprocess"]["failures"] == [] and state["preprocess"]["stored"] == 5
    assert _versions(tmp_path, "slicesr-vae") == [1] and _versions(tmp_path, "slicesr-sr") == [1]

    # A champion scored on another evaluation is scored again on this one before any comparison
    _worse_champion(tmp_path, state["stage2"]["best"], recorded_psnr=99.0)
    del state["evaluation"]
    (tmp_path / "work" / "pipeline_state.json").write_text(json.dumps(state))
    assert main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "| slicesr-sr v2 (champion) |" in out
    state = json.loads((tmp_path / "work" / "pipeline_state.json").read_text())
    psnr = state["evaluation"]["psnr_missing"]
    assert psnr["slicesr-sr v2 (champion)"] < psnr["Proposed with DeepResolve"]
    assert state["evaluation"]["champions"]["slicesr-sr"] == "1"  # not kept by its score on other volumes
    client = _client(tmp_path)
    tags = client.get_model_version("slicesr-sr", "2").tags
    assert tags["slicesr.eval_key"] == state["evaluation"]["eval_key"]
    assert float(tags["slicesr.val_psnr"]) == pytest.approx(psnr["slicesr-sr v2 (champion)"])


def _worse_champion(tmp_path, best_dir, recorded_psnr):
    """Version 2 of slicesr-sr: the stage II model with noisy weights, made champion with a score
    recorded on some other evaluation."""
    import torch
    from safetensors.torch import load_file, save_file

    from cluster.tracking import Tracker

    noisy = tmp_path / "noisy"
    shutil.copytree(best_dir, noisy)
    weights = load_file(str(noisy / "model.safetensors"))
    generator = torch.Generator().manual_seed(0)
    save_file({k: v + 0.3 * torch.randn(v.shape, generator=generator) for k, v in weights.items()},
              str(noisy / "model.safetensors"))
    tracker = Tracker(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}", "slicesr")
    version = tracker.register(tracker.start_run("noisy", "noisy"), noisy, "slicesr-sr")
    assert version == "2"
    tracker.client.set_model_version_tag("slicesr-sr", version, "slicesr.val_psnr", repr(recorded_psnr))
    tracker.client.set_model_version_tag("slicesr-sr", version, "slicesr.eval_key", "another-evaluation")
    tracker.client.set_registered_model_alias("slicesr-sr", "champion", version)


def test_killed_driver_restarts_without_redoing_steps(tmp_path, ray_cluster):
    config = _pipeline_yaml(tmp_path, ray_cluster, stage2_steps=60)
    command = [sys.executable, "-m", "cluster.pipeline", "--config", str(config)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    log = open(tmp_path / "first.log", "w")
    driver = subprocess.Popen(command, cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT)
    stage1_run = tmp_path / "work" / "runs" / "debug-stage1"
    stage2_run = tmp_path / "work" / "runs" / "debug-stage2"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and driver.poll() is None:
        if recorded_checkpoint_step(stage2_run) >= 10:  # Ray Train has recorded a stage II checkpoint
            break
        time.sleep(0.2)
    assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    os.kill(driver.pid, signal.SIGKILL)  # the driver dies half-way through stage II
    driver.wait()
    state = json.loads((tmp_path / "work" / "pipeline_state.json").read_text())
    assert "stage1" in state and "stage2" not in state
    stage1_files = sorted(p.name for p in stage1_run.iterdir())

    done = subprocess.run(command, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for step in ("preprocess", "stage1", "synthesis"):
        assert f"{step}: done already, skipped" in done.stderr
    assert sorted(p.name for p in stage1_run.iterdir()) == stage1_files  # stage I not trained again
    state = json.loads((tmp_path / "work" / "pipeline_state.json").read_text())
    assert state["stage2"]["step"] == 60
    assert _versions(tmp_path, "slicesr-vae") == [1] and _versions(tmp_path, "slicesr-sr") == [1]
    client = _client(tmp_path)
    resumed = client.get_metric_history(state["stage2"]["run_id"], "resumed_at_step")
    assert resumed and 0 < resumed[-1].value < 60  # stage II continued from its checkpoint
