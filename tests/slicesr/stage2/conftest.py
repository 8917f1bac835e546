import pytest
import torch

from preprocessing.to_zarr import convert
from slicesr.config import load_config
from slicesr.models.vae_gan import VaeGan, VaeGanSize
from slicesr.stage1.synthesis import synthesize_store
from slicesr.store import SliceStore
from tests.conftest import write_synth

DEBUG = "configs/debug/stage2.yaml"


@pytest.fixture
def synthetic_store(tmp_path):
    """A synthetic HR store as stage I writes it (an untrained VAE: the geometry matters here, not quality)."""
    write_synth(tmp_path / "lr", 4, shape=(22, 20, 5), seed=3)
    convert([str(tmp_path / "lr")], str(tmp_path / "lr.zarr"), workers=0, progress=False)
    torch.manual_seed(0)
    vae = VaeGan(VaeGanSize(image_size=16, channels=4, max_channels=8, num_blocks=2, latent_dim=8, disc_channels=4))
    out = SliceStore.create(str(tmp_path / "hr.zarr"))
    synthesize_store(vae, SliceStore.open(str(tmp_path / "lr.zarr")), out, 4, keep_acquired=True, progress=False)
    return str(tmp_path / "hr.zarr")


@pytest.fixture
def real_hr_store(tmp_path):
    write_synth(tmp_path / "hr", 4, shape=(22, 20, 13), seed=5)
    convert([str(tmp_path / "hr")], str(tmp_path / "real_hr.zarr"), workers=0, progress=False)
    return str(tmp_path / "real_hr.zarr")


@pytest.fixture
def sr_config(tmp_path, synthetic_store):
    def make(*overrides, store=None):
        return load_config(DEBUG, [f"data.store={store or synthetic_store}", f"run.storage_path={tmp_path / 'runs'}",
                                   *overrides])

    return make
