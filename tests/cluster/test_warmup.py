import os
import subprocess
import sys
import time

import pytest

from cluster.warmup import remove_stale_build_locks


@pytest.mark.parametrize("layout", ["py311_cpu/deepspeed_shm_comm", "deepspeed_shm_comm"])
def test_stale_build_locks_are_removed_and_fresh_ones_kept(tmp_path, layout):
    stale = tmp_path / layout / "lock"
    fresh = tmp_path / "other_op" / "lock"
    for lock in (stale, fresh):
        lock.parent.mkdir(parents=True)
        lock.touch()
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    built = stale.parent / "deepspeed_shm_comm.so"
    built.touch()

    assert remove_stale_build_locks(tmp_path, max_age_s=600) == [stale]
    assert not stale.exists() and fresh.exists() and built.exists()


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="only a virtual environment gets its own folder")
def test_a_virtual_environment_builds_its_extensions_in_its_own_folder():
    env = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}
    printed = subprocess.run(
        [sys.executable, "-c", "import os, cluster; print(os.environ['TORCH_EXTENSIONS_DIR'])"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert printed == os.path.join(sys.prefix, "torch_extensions")
