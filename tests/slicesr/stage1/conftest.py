import pytest

from preprocessing.to_zarr import convert
from slicesr.config import load_config
from tests.conftest import write_synth

DEBUG = "configs/debug/stage1.yaml"


@pytest.fixture
def lr_store(tmp_path):
    write_synth(tmp_path / "lr", 5, shape=(24, 20, 6), seed=7)
    convert([str(tmp_path / "lr")], str(tmp_path / "lr.zarr"), workers=0, progress=False)
    return str(tmp_path / "lr.zarr")


@pytest.fixture
def debug_config(tmp_path, lr_store):
    def make(*overrides):
        return load_config(DEBUG, [f"data.store={lr_store}", f"run.storage_path={tmp_path / 'runs'}", *overrides])

    return make
