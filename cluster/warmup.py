"""`python -m cluster.warmup`: build DeepSpeed's CPU communication op once (it compiles on first use,
40 s to minutes), so that tests and training jobs do not each pay for it. No-op where DeepSpeed is absent."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time


def main(argv: list[str] | None = None) -> int:
    try:
        import deepspeed
        import torch.distributed as dist
    except ImportError:
        print("deepspeed not installed: nothing to warm up")
        return 0
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
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
