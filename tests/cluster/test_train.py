"""2-worker Ray Train runs of each stage (DDP, DeepSpeed), checkpoints, MLflow, errors before workers."""

from pathlib import Path

import pytest
import torch

from cluster.train import main, train
from slicesr.stage1.train import load_vae
from slicesr.stage2.train import load_generator

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("stage", ["vae", "sr"])
@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
def test_two_worker_run(stage, strategy, cluster_config, tmp_path):
    config = cluster_config(stage, f"cluster.strategy={strategy}", "train.max_steps=4", "train.checkpoint_every=2")
    result = train(config)
    assert result.metrics["step"] == 4
    best = Path(result.best_dir)
    model, saved, metadata = (load_vae if stage == "vae" else load_generator)(best)
    assert saved.cluster.num_workers == 2 and metadata["stage"] == stage
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert result.version == "1" and result.registered_model == ("slicesr-vae" if stage == "vae" else "slicesr-sr")
    checkpoints = sorted(p for p in Path(result.run_dir).glob("checkpoint_*") if p.is_dir())
    assert checkpoints and (checkpoints[-1] / "training_state.pt").is_file()
    assert (checkpoints[-1] / "rank1_state.pt").is_file()  # every rank wrote its part
    state = torch.load(checkpoints[-1] / "training_state.pt", weights_only=True)
    assert state["step"] == 4 and state["world_size"] == 2
    if strategy == "deepspeed":
        assert list((checkpoints[-1] / "deepspeed").rglob("*optim_states.pt"))


def test_two_worker_run_with_both_pair_sources(cluster_config):
    """DDP with synthetic patches and in-plane planes mixed: each rank draws its own source every step."""
    config = cluster_config("sr", "cluster.strategy=ddp", "train.max_steps=4", "sr.supervision=both",
                            "model.name=throughplane2d", "run.name=both-ddp")
    result = train(config)
    assert result.metrics["step"] == 4
    model, saved, metadata = load_generator(Path(result.best_dir))
    assert metadata["method"] == "Proposed with through-plane 2D + in-plane pairs"
    assert metadata["inplane"]["fraction"] == 0.5 and metadata["inplane"]["lr_store"].endswith("lr.zarr")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _mlflow_run(tmp_path, run_id):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return client, client.get_run(run_id)


def test_tracking_logs_params_metrics_previews(cluster_config, tmp_path):
    config = cluster_config("vae", "train.max_steps=4", "cluster.num_workers=1", "tracking.image_every=2")
    result = train(config)
    client, run = _mlflow_run(tmp_path, result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["cluster.num_workers"] == "1" and run.data.params["stage"] == "vae"
    for metric in ("center", "prior", "comp", "samples_per_s", "lr", "val_center"):
        assert metric in run.data.metrics, metric
    assert len(client.get_metric_history(result.run_id, "center")) == 4  # train.log_every: 1
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert "config.yaml" in artifacts and "previews" in artifacts
    previews = {a.path for a in client.list_artifacts(result.run_id, "previews")}
    assert {"previews/reconstruction_step0000002.png", "previews/interpolation_step0000004.png"} <= previews


def test_existing_run_needs_resume_and_continues(cluster_config, capsys):
    first = cluster_config("sr", "train.max_steps=2", "cluster.num_workers=1", "tracking.register=false")
    train(first)
    args = ["--config", "configs/debug/stage2.yaml"]
    for key, value in (("data.store", first.data.store), ("run.storage_path", first.run.storage_path),
                       ("tracking.uri", first.tracking.uri), ("cluster.num_workers", 1), ("train.max_steps", 4),
                       ("tracking.register", "false"), ("cluster.address", first.cluster.address)):
        args += ["--set", f"{key}={value}"]
    assert main(args) == 2
    assert "pass --resume" in capsys.readouterr().err
    two_workers = [a.replace("cluster.num_workers=1", "cluster.num_workers=2") for a in args]
    assert main([*two_workers, "--resume"]) == 2  # refused before any worker starts
    assert "resume it with cluster.num_workers=1" in capsys.readouterr().err
    assert main([*args, "--resume", "--set", "cluster.strategy=deepspeed"]) == 2  # another optimizer layout
    assert "holds torch optimizer state and this config asks for deepspeed-zero1" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    client, run = _mlflow_run(Path(first.tracking.uri.removeprefix("sqlite:///")).parent, _run_id(first))
    assert run.data.metrics["resumed_at_step"] == 2
    assert max(m.step for m in client.get_metric_history(run.info.run_id, "l1")) == 4


def _run_id(config):
    from mlflow import MlflowClient

    client = MlflowClient(config.tracking.uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    (run,) = client.search_runs([experiment.experiment_id])  # the resumed run continued the same MLflow run
    return run.info.run_id


def _last_weights(run_dir):
    from safetensors.torch import load_file

    last = sorted(p for p in Path(run_dir).glob("checkpoint_*") if p.is_dir())[-1]
    return load_file(str(last / "model.safetensors"))


@pytest.mark.parametrize("stage", ["vae", "sr"])
def test_deepspeed_resumed_run_equals_a_straight_run(stage, cluster_config):
    """Stop at step 2 and resume to 4 == 4 steps straight: model, ZeRO-2 optimizer shards (three engines
    for stage I), RNGs restored."""
    common = ["cluster.strategy=deepspeed", "cluster.deepspeed_config=configs/deepspeed/zero2.json",
              "train.checkpoint_every=2", "tracking.register=false", "train.val_every=100",
              "schedule.phase_steps=[1,0]"]  # stage I: E and D, then E, D and H, also in the 2-step run
    straight = train(cluster_config(stage, *common, "train.max_steps=4", "run.name=straight"))
    train(cluster_config(stage, *common, "train.max_steps=2", "run.name=resumed"))
    resumed = train(cluster_config(stage, *common, "train.max_steps=4", "run.name=resumed"), resume=True)
    a, b = _last_weights(straight.run_dir), _last_weights(resumed.run_dir)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
