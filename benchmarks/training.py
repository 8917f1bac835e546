"""Training throughput: in-process vs Ray Train (1 worker, 2 workers DDP, 2 workers DeepSpeed ZeRO-1/-2).

    python benchmarks/training.py [--lr-store demo_out/lr.zarr] [--hr-store runs/bench-stage2/synthetic_hr.zarr]
        [--vae-steps 60] [--sr-steps 30]

Stage I and stage II at the cpu configs (configs/cpu/stage{1,2}.yaml), every setting in a fresh process
or Ray run, one after the other. samples/s is the loop's own throughput metric (samples per second
over each train.log_every interval, all workers together), median over the intervals after the first
(start-up and the first steps excluded); peak memory is the largest peak RSS of one worker (ru_maxrss).
In-process and Ray 1 worker use the same 2 torch threads; the 2-worker runs use 1 thread each.
Writes the table into benchmarks/RESULTS.md (section "training").
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.results import write_section  # noqa: E402

WORK = HERE.parent / "runs" / "bench-training"
CONFIGS = {"vae": "configs/cpu/stage1.yaml", "sr": "configs/cpu/stage2.yaml"}
SETTINGS = [  # label, num_workers, strategy, deepspeed config, cpus (= torch threads) per worker
    ("in-process", 0, None, None, 2),
    ("Ray, 1 worker (DDP)", 1, "ddp", None, 2),
    ("Ray, 2 workers DDP", 2, "ddp", None, 1),
    ("Ray, 2 workers DeepSpeed ZeRO-1", 2, "deepspeed", "configs/deepspeed/zero1.json", 1),
    ("Ray, 2 workers DeepSpeed ZeRO-2", 2, "deepspeed", "configs/deepspeed/zero2.json", 1),
]


def overrides(stage: str, store: str, steps: int, name: str) -> list[str]:
    return [f"data.store={store}", f"train.max_steps={steps}", "train.log_every=5", f"train.val_every={steps}",
            f"train.checkpoint_every={steps}", "train.val_batches=1", f"run.storage_path={WORK / 'runs'}",
            f"run.name={name}", f"tracking.uri=sqlite:///{WORK / 'mlflow.db'}", "tracking.register=false",
            "tracking.experiment=bench-training"]


def steady(values: list[float]) -> float:
    return statistics.median(values[1:] if len(values) > 1 else values)


def in_process(stage: str, store: str, steps: int) -> dict:
    """Runs in a child process (fresh memory high-water mark); prints JSON."""
    import torch

    from slicesr.config import load_config
    from slicesr.stage1.train import Stage1Trainer
    from slicesr.stage2.train import Stage2Trainer

    torch.set_num_threads(2)
    name = f"{stage}-inprocess-{time.time_ns()}"
    config = load_config(CONFIGS[stage], overrides(stage, store, steps, name))
    seen = []

    class Capture:
        def report(self, step, metrics):
            if "samples_per_s" in metrics:
                seen.append(metrics["samples_per_s"])

    (Stage1Trainer if stage == "vae" else Stage2Trainer)(config, Capture()).fit(resume=False)
    return {"samples_per_s": steady(seen), "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def ray_run(stage: str, store: str, steps: int, workers: int, strategy: str, ds: str | None, cpus: int) -> dict:
    from mlflow import MlflowClient

    from cluster.train import train
    from slicesr.config import load_config

    name = f"{stage}-{workers}w-{strategy}-{Path(ds).stem if ds else 'x'}-{time.time_ns()}"
    extra = [f"cluster.num_workers={workers}", f"cluster.strategy={strategy}", f"cluster.cpus_per_worker={cpus}"]
    if ds:
        extra.append(f"cluster.deepspeed_config={ds}")
    result = train(load_config(CONFIGS[stage], overrides(stage, store, steps, name) + extra))
    client = MlflowClient(f"sqlite:///{WORK / 'mlflow.db'}")
    history = sorted(client.get_metric_history(result.run_id, "samples_per_s"), key=lambda m: m.step)
    peak = client.get_run(result.run_id).data.metrics["peak_worker_rss_mib"]
    return {"samples_per_s": steady([m.value for m in history]), "peak_mib": peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lr-store", default="demo_out/lr.zarr")
    parser.add_argument("--hr-store", default="runs/bench-stage2/synthetic_hr.zarr")
    parser.add_argument("--vae-steps", type=int, default=60)
    parser.add_argument("--sr-steps", type=int, default=30)
    parser.add_argument("--child", nargs=3, metavar=("STAGE", "STORE", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(in_process(args.child[0], args.child[1], int(args.child[2]))))
        return 0
    logging.basicConfig(level=logging.WARNING)
    WORK.mkdir(parents=True, exist_ok=True)
    import ray

    # 4 logical CPUs on 2 cores so that Ray Train's controller never waits for a CPU slot
    ray.init(num_cpus=4, runtime_env={"env_vars": {"PYTHONPATH": str(HERE.parent)}},
             logging_level=logging.WARNING)
    stores = {"vae": str(Path(args.lr_store).resolve()), "sr": str(Path(args.hr_store).resolve())}
    steps = {"vae": args.vae_steps, "sr": args.sr_steps}
    rows = []
    for stage in ("vae", "sr"):
        measured = {}
        for label, workers, strategy, ds, cpus in SETTINGS:
            started = time.perf_counter()
            if workers == 0:
                out = subprocess.run([sys.executable, __file__, "--child", stage, stores[stage], str(steps[stage])],
                                     capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
                measured[label] = json.loads(out.stdout.strip().splitlines()[-1])
            else:
                measured[label] = ray_run(stage, stores[stage], steps[stage], workers, strategy, ds, cpus)
            measured[label]["wall_s"] = time.perf_counter() - started
            print(f"{stage} {label}: {measured[label]}", flush=True)
        base = measured["in-process"]["samples_per_s"]
        one = measured["Ray, 1 worker (DDP)"]["samples_per_s"]
        for label, *_ in SETTINGS:
            m = measured[label]
            relative = m["samples_per_s"] / base
            note = ""
            if label.startswith("Ray, 1"):
                note = f"overhead {100 * (1 - relative):+.1f}% vs in-process"
            elif label.startswith("Ray, 2"):
                note = f"speed-up x{m['samples_per_s'] / one:.2f} vs 1 worker"
            stage_name = "I (VAE-GAN)" if stage == "vae" else "II (DeepResolve)"
            rows.append(f"| {stage_name} | {label} | {m['samples_per_s']:.2f} | {relative:.2f} | {m['peak_mib']:.0f} | "
                        f"{m['wall_s']:.0f} | {note} |")
    table = "\n".join(["| stage | setting | samples/s | vs in-process | peak MiB per worker | wall s | note |",
                       "|---|---|---:|---:|---:|---:|---|", *rows])
    print(table)
    body = (f"Command: `python benchmarks/training.py --vae-steps {args.vae_steps} --sr-steps {args.sr_steps}` "
            "(2 CPU cores, no GPU; cpu configs; stage I on the demo's LR store, stage II on the synthetic HR "
            "store of benchmarks/stage2.py). samples/s: median over train.log_every=5-step intervals after "
            "the first, all workers together; wall s includes start-up (Ray workers, DeepSpeed init).\n\n" + table)
    write_section(HERE / "RESULTS.md", "training", "Training throughput: in-process vs Ray Train", body)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
