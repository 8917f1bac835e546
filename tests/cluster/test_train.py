"""2-worker Ray Train runs of each stage (DDP, DeepSpeed), checkpoints, MLflow, errors before workers."""

from pathlib import Path

import pytest
import torch

from cluster.train import train
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
