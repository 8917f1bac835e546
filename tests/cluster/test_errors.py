"""Bad configs, unreachable services and empty stores fail before any worker starts: exit 2, a message
naming the problem, no checkpoint and no MLflow run written."""

import socket
from pathlib import Path

import pytest

from cluster.train import main
from slicesr.store import SliceStore


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def args(tmp_path, cluster_stores):
    def make(stage="vae", *overrides, store=None):
        config = "configs/debug/stage1.yaml" if stage == "vae" else "configs/debug/stage2.yaml"
        sets = [f"data.store={store or cluster_stores[stage]}", f"run.storage_path={tmp_path / 'runs'}",
                f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", *overrides]
        return ["--config", config, *[item for s in sets for item in ("--set", s)]]

    return make


def _nothing_started(tmp_path):
    return not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("overrides,message", [
    (["cluster.strategy=horovod"], "cluster.strategy must be one of ddp, deepspeed"),
    (["cluster.num_workers=0"], "cluster.num_workers must be >= 1"),
    (["cluster.strategy=deepspeed", "cluster.bf16=true"], "cluster.bf16 needs"),
    (["cluster.strategy=deepspeed", "cluster.deepspeed_config=configs/deepspeed/nothing.json"], "no file"),
    (["cluster.num_workers=4"], "3 training scans for 4 workers"),
    (["cluster.nodes=3"], "cluster.nodes"),
    (["stage=sr", "model.name=vae_gan"], "stage sr trains a generator"),
])
def test_bad_config_values(args, tmp_path, capsys, overrides, message):
    assert main(args("vae", *overrides)) == 2
    assert message in capsys.readouterr().err
    assert _nothing_started(tmp_path)


def test_zero_stage_3_is_refused_with_the_reason(args, tmp_path, capsys):
    ds = tmp_path / "zero3.json"
    ds.write_text('{"zero_optimization": {"stage": 3}}')
    assert main(args("vae", "cluster.strategy=deepspeed", f"cluster.deepspeed_config={ds}")) == 2
    assert "stage 3 partitions the parameters" in capsys.readouterr().err


def test_unreachable_mlflow_and_ray(args, tmp_path, capsys):
    assert main(args("vae", f"tracking.uri=http://127.0.0.1:{_free_port()}")) == 2
    assert "MLflow server not reachable" in capsys.readouterr().err
    assert main(args("vae", f"cluster.address=127.0.0.1:{_free_port()}")) == 2
    assert "no Ray cluster answers" in capsys.readouterr().err
    assert main(args("vae", f"tracking.uri=sqlite:///{tmp_path / 'missing' / 'mlflow.db'}")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert _nothing_started(tmp_path)


def test_empty_missing_and_mismatched_stores(args, tmp_path, cluster_stores, capsys):
    empty = SliceStore.create(str(tmp_path / "empty.zarr")).url
    assert main(args("vae", store=empty)) == 2
    assert "holds no stored scans" in capsys.readouterr().err
    assert main(args("vae", store=str(tmp_path / "nothing.zarr"))) == 2
    assert "nothing.zarr" in capsys.readouterr().err
    assert main(args("sr", store=cluster_stores["vae"])) == 2  # an LR store is not synthetic HR
    assert "not a synthetic HR volume" in capsys.readouterr().err
    assert _nothing_started(tmp_path)
    assert not Path(tmp_path / "runs").exists()


def test_relative_paths_are_refused_inside_a_ray_job(args, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what Ray sets in a submitted job's driver
    assert main([*args("vae"), "--set", "run.storage_path=runs"]) == 2
    assert "run.storage_path: relative paths inside a Ray job" in capsys.readouterr().err
    assert main([*args("vae"), "--set", "tracking.uri=sqlite:///mlflow.db"]) == 2
    assert "tracking.uri" in capsys.readouterr().err
    assert main([*args("sr"), "--set", "data.lr_store=lr.zarr"]) == 2
    assert "data.lr_store: relative paths inside a Ray job" in capsys.readouterr().err


def test_the_lr_store_is_made_absolute_for_the_workers(tmp_path, monkeypatch):
    from cluster.train import resolve_paths
    from slicesr.config import load_config

    monkeypatch.chdir(tmp_path)
    debug = Path(__file__).resolve().parents[2] / "configs" / "debug" / "stage2.yaml"
    config = resolve_paths(load_config(str(debug), ["data.store=hr.zarr", "data.lr_store=lr.zarr",
                                                    "run.storage_path=runs"]))
    assert config.data.lr_store == str(tmp_path / "lr.zarr") and config.data.store == str(tmp_path / "hr.zarr")


def test_training_failures_name_the_workers_error():
    from cluster.train import worker_error

    text = ("Training failed due to worker errors:\n[Rank 0,1 Error Snippet]:\nTraceback (most recent call last):\n"
            "  raise ValueError(\n\x1b[36mValueError: /runs/x was trained with other settings (train.lr)\x1b[0m\n")
    assert worker_error(RuntimeError(text)) == "ValueError: /runs/x was trained with other settings (train.lr)"
    assert worker_error(RuntimeError("worker died")) == "worker died"
