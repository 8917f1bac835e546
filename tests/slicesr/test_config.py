from pathlib import Path

import pytest
import yaml

from slicesr.config import Config, DataConfig, TrainConfig, dump_config, load_config

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_embedded_and_single_machine():
    config = load_config()
    assert config.stage == "vae"
    assert config.tracking.uri.startswith("sqlite:///")
    assert config.cluster.num_workers == 1 and config.cluster.strategy == "ddp"
    assert not config.data.store.startswith("s3://")


def test_reserved_names_exist():
    config = Config()
    for name in ("max_steps", "batch_size", "lr", "seed", "checkpoint_every", "val_fraction"):
        assert hasattr(config.train, name)
    for name in ("num_workers", "use_gpu", "strategy"):
        assert hasattr(config.cluster, name)
    assert hasattr(config.run, "name") and hasattr(config.run, "storage_path")
    assert hasattr(config.tracking, "uri") and hasattr(config.tracking, "experiment")
    assert hasattr(config.data, "store")


def test_every_bundled_config_loads():
    files = sorted(p for p in REPO.glob("configs/**/*.yaml") if p.name != "pipeline.yaml")
    assert files
    for path in files:
        assert isinstance(load_config(path), Config)
    from cluster.pipeline import PipelineConfig, load_pipeline_config

    assert isinstance(load_pipeline_config(str(REPO / "configs" / "pipeline.yaml")), PipelineConfig)


def test_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("stage: sr\ntrain:\n  lr: 1e-3\n  batch_size: 4\n")
    config = load_config(path, ["train.batch_size=8", "cluster.strategy=deepspeed", "data.store=s3://b/p"])
    assert config.stage == "sr"
    assert config.train.lr == pytest.approx(1e-3)
    assert config.train.batch_size == 8
    assert config.train.max_steps == TrainConfig().max_steps
    assert config.cluster.strategy == "deepspeed"
    assert config.data.store == "s3://b/p"


@pytest.mark.parametrize(
    "text, message",
    [
        ("train:\n  lrr: 1\n", "unknown key train.lrr"),
        ("trian: {}\n", "unknown key trian"),
        ("stage: gan\n", "stage must be one of vae, sr"),
        ("train:\n  batch_size: many\n", "train.batch_size must be an integer"),
        ("train:\n  lr: -1\n", "train.lr must be > 0"),
        ("cluster:\n  use_gpu: maybe\n", "cluster.use_gpu must be true or false"),
        ("cluster:\n  strategy: horovod\n", "cluster.strategy must be one of ddp, deepspeed"),
        ("train:\n  val_fraction: 1.5\n", "train.val_fraction"),
        ("- a\n- b\n", "must hold a mapping"),
        ("train: [1\n", "not valid YAML"),
        ("cluster:\n  use_gpu: true\n  num_workers: 2\n  gpus_per_worker: 0.5\n", "NCCL refuses"),
        ("stage: sr\nmodel:\n  name: deepresolve\n  subpixel: true\n", "model.subpixel is for the throughplane2d"),
        ("stage: sr\nmodel:\n  name: throughplane2d\n  subpixel: true\nsr:\n  ratio_range: [2, 6]\n",
         "model.subpixel needs one integer ratio"),
        ("stage: sr\nsr:\n  supervision: real\ntracking:\n  registered_model: slicesr-sr\n",
         "registers as slicesr-sr-supervised"),
    ],
)
def test_bad_configs_name_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_config(path)
    assert message in str(info.value)
    assert "bad.yaml" in str(info.value)


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="KEY=VALUE"):
        load_config(None, ["train.lr"])
    with pytest.raises(ValueError, match="unknown key train.nope"):
        load_config(None, ["train.nope=3"])
    with pytest.raises(ValueError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_dump_round_trip(tmp_path):
    config = load_config(None, ["train.seed=7", "run.name=x"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config
    assert yaml.safe_load(path.read_text())["train"]["seed"] == 7


def test_sections_are_separate_types():
    config = Config()
    assert isinstance(config.data, DataConfig) and isinstance(config.train, TrainConfig)
