"""`python -m cluster.warmup`: build DeepSpeed's CPU communication op once (it compiles on first use,
40 s to minutes), so that tests and training jobs do not each pay for it. No-op where DeepSpeed is absent."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path

import cluster  # noqa: F401  (sets TORCH_EXTENSIONS_DIR)

log = logging.getLogger(__name__)

# A build takes 40 s to a few minutes here; a lock older than this was left by a killed build.
STALE_LOCK_S = 15 * 60


def remove_stale_build_locks(extensions_dir: Path, max_age_s: float = STALE_LOCK_S) -> list[Path]:
    """Delete the `lock` files of torch extension builds older than `max_age_s`: torch waits forever
    on a lock whose builder was killed. Returns the paths removed."""
    removed = []
    root = Path(extensions_dir)
    # <dir>/<op>/lock under TORCH_EXTENSIONS_DIR, <dir>/py311_cpu/<op>/lock under torch's default
    for lock in [*root.glob("*/lock"), *root.glob("*/*/lock")]:
        try:
            if time.time() - lock.stat().st_mtime > max_age_s:
                lock.unlink()
                removed.append(lock)
                log.warning("removed a stale build lock left by a killed build: %s", lock)
        except FileNotFoundError:
            pass  # its build finished meanwhile
    return removed


def main(argv: list[str] | None = None) -> int:
    try:
        import deepspeed
        import torch.distributed as dist
    except ImportError:
        print("deepspeed not installed: nothing to warm up")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    from torch.utils.cpp_extension import get_default_build_root

    remove_stale_build_locks(Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    started = time.perf_counter()
    deepspeed.init_distributed(dist_backend="gloo")
    dist.destroy_process_group()
    print(f"DeepSpeed ops ready ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
