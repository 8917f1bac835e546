"""Registry round trip: register a model directory, aliases, champion rule, load by models:/ URI, infer."""

import nibabel as nib
import numpy as np
import pytest
import torch

from cluster.tracking import CANDIDATE, CHAMPION, Tracker, registered_name
from slicesr.cli import main as slicesr_main
from slicesr.config import load_config
from slicesr.inference import load_method
from slicesr.modeldir import write_model_dir
from slicesr.models.generators import build_generator
from slicesr.registry import resolve_model_uri
from slicesr.stage2.train import generator_size
from tests.conftest import write_nifti

pytestmark = pytest.mark.slow


def _model_dir(path, seed):
    config = load_config("configs/debug/stage2.yaml")
    torch.manual_seed(seed)
    model = build_generator(generator_size(config))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # not the identity-at-init model: outputs differ by seed
    write_model_dir(path, model.state_dict(), config, {"stage": "sr", "k": 4, "generator": "deepresolve",
                                                       "supervision": "synthetic"})
    return path


def test_register_alias_champion_and_infer_by_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "registry-test")
    run_id = tracker.start_run("run-a", "a")
    first = _model_dir(tmp_path / "a", seed=1)
    assert tracker.register(run_id, first, "slicesr-sr") == "1"
    assert tracker.register(run_id, first, "slicesr-sr") == "1"  # same weights: no duplicate version
    assert tracker.alias_version("slicesr-sr", CANDIDATE) == "1"
    assert tracker.promote("slicesr-sr", "1", 30.0, "eval-a") and tracker.alias_version("slicesr-sr", CHAMPION) == "1"

    second = _model_dir(tmp_path / "b", seed=2)
    assert tracker.register(tracker.start_run("run-b", "b"), second, "slicesr-sr") == "2"
    assert tracker.alias_version("slicesr-sr", CANDIDATE) == "2"
    assert not tracker.promote("slicesr-sr", "2", 29.5, "eval-a")  # worse: the champion stays
    assert tracker.alias_version("slicesr-sr", CHAMPION) == "1"
    # a score on another evaluation is not comparable: without the champion's score on it, the champion stays
    assert not tracker.promote("slicesr-sr", "2", 40.0, "eval-b")
    assert tracker.alias_version("slicesr-sr", CHAMPION) == "1"
    # with the champion scored again on that evaluation, the better one wins, and the champion's tags follow
    assert not tracker.promote("slicesr-sr", "2", 40.0, "eval-b", champion_score=41.0)
    assert tracker.version_tags("slicesr-sr", "1")["slicesr.eval_key"] == "eval-b"
    assert tracker.promote("slicesr-sr", "2", 31.0, "eval-a", champion_score=30.0)
    assert tracker.alias_version("slicesr-sr", CHAMPION) == "2"

    # the registered files are the model directory itself (safetensors + config + metadata, no pickle)
    local = resolve_model_uri("models:/slicesr-sr@champion", uri, tmp_path / "download")
    assert sorted(p.name for p in local.iterdir()) == ["config.yaml", "metadata.json", "model.safetensors"]
    assert (local / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()

    # slicesr infer with the URI gives what the local directory gives
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    lr = write_nifti(tmp_path / "lr.nii.gz", np.random.default_rng(0).random((20, 18, 5), dtype=np.float32),
                     np.diag([0.9, 0.9, 4.0, 1.0]))
    assert slicesr_main(["infer", lr, "--output", str(tmp_path / "by_uri.nii.gz"), "--model",
                         "models:/slicesr-sr@champion"]) == 0
    assert slicesr_main(["infer", lr, "--output", str(tmp_path / "by_dir.nii.gz"), "--model", str(second)]) == 0
    by_uri, by_dir = nib.load(tmp_path / "by_uri.nii.gz"), nib.load(tmp_path / "by_dir.nii.gz")
    assert by_uri.shape == (20, 18, 17)
    np.testing.assert_array_equal(by_uri.get_fdata(), by_dir.get_fdata())
    np.testing.assert_allclose(by_uri.affine, by_dir.affine)

    # MLflow's own loader runs the same model (pyfunc logged as code, weights from the directory)
    import mlflow

    mlflow.set_tracking_uri(uri)
    pyfunc = mlflow.pyfunc.load_model("models:/slicesr-sr@candidate")
    slices = np.random.default_rng(1).random((3, 20, 18), dtype=np.float32)
    np.testing.assert_allclose(pyfunc.predict(slices), load_method(str(second)).upsample(slices, 4), atol=1e-6)


def test_a_training_continues_its_mlflow_run_only_from_checkpoints(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "runs-test")
    first = tracker.start_run("/runs/a", "a")
    assert tracker.start_run("/runs/a", "a", continuing=True) == first
    fresh = tracker.start_run("/runs/a", "a", continuing=False)  # e.g. the run folder was deleted
    assert fresh != first and tracker.find_run("/runs/a") == fresh
    assert tracker.client.get_run(first).info.status == "KILLED"


def test_unknown_uri_and_registered_names(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Tracker(uri, "x")
    with pytest.raises(ValueError, match="models:/slicesr-sr@champion: not found"):
        resolve_model_uri("models:/slicesr-sr@champion", uri)
    assert registered_name(load_config("configs/debug/stage1.yaml")) == "slicesr-vae"
    assert registered_name(load_config("configs/debug/stage2.yaml")) == "slicesr-sr"
    assert registered_name(load_config("configs/debug/stage2.yaml", ["sr.supervision=real"])) == "slicesr-sr-supervised"
