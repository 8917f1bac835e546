"""Training throughput: in-process vs Ray Train (1 worker, 2 workers DDP, 2 workers DeepSpeed ZeRO-1/-2).

    python benchmarks/training.py [--lr-store demo_out/lr.zarr] [--hr-store runs/quality/brain_synthetic.zarr]
        [--vae-steps 60] [--sr-steps 30] [--quick]

Stage I and stage II at the cpu configs (configs/cpu/stage{1,2}.yaml), every setting in a fresh process
or Ray run, one after the other. samples/s is the loop's own throughput metric (samples per second
over each train.log_every interval, all workers together), median over the intervals after the first
(start-up and the first steps excluded); peak memory is the largest peak RSS of one worker (ru_maxrss).
In-process and Ray 1 worker use the same 2 torch threads; the 2-worker runs use 1 thread each.
Writes the table into benchmarks/RESULTS.md (section "training"). `--quick`: stage I only (in-process,
Ray 1 worker, Ray 2 workers ZeRO-2), the debug config on a synthetic store, 10 steps; prints only (runs
and MLflow in a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks import datasets  # noqa: E402
from benchmarks.results import benchmark_parser, parse_arguments, publish  # noqa: E402

WORK = HERE.parent / "runs" / "bench-training"
STAGES = {"vae": "I (VAE-GAN)", "sr": "II (DeepResolve)"}  # stage -> its name in the table
CONFIGS = {"vae": "configs/cpu/stage1.yaml", "sr": "configs/cpu/stage2.yaml"}
QUICK_CONFIGS = {"vae": datasets.DEBUG_STAGE1, "sr": datasets.DEBUG_STAGE2}
SETTINGS = [  # label, num_workers, strategy, deepspeed config, cpus (= torch threads) per worker
    ("in-process", 0, None, None, 2),
    ("Ray, 1 worker (DDP)", 1, "ddp", None, 2),
    ("Ray, 2 workers DDP", 2, "ddp", None, 1),
    ("Ray, 2 workers DeepSpeed ZeRO-1", 2, "deepspeed", "configs/deepspeed/zero1.json", 1),
    ("Ray, 2 workers DeepSpeed ZeRO-2", 2, "deepspeed", "configs/deepspeed/zero2.json", 1),
]
# --quick: a Ray Train run costs about 30 s of start-up here whatever its length, so a quick run measures
# stage I only, in-process and on Ray with 1 worker (DDP) and 2 workers (DeepSpeed ZeRO-2)
QUICK_STAGES = ("vae",)
QUICK_SETTINGS = ("in-process", "Ray, 1 worker (DDP)", "Ray, 2 workers DeepSpeed ZeRO-2")


def plan(quick: bool) -> list[tuple[str, list[tuple]]]:
    """(stage, its settings) in the order of the table's rows."""
    if not quick:
        return [(stage, SETTINGS) for stage in STAGES]
    return [(stage, [s for s in SETTINGS if s[0] in QUICK_SETTINGS]) for stage in QUICK_STAGES]


def overrides(store: str, steps: int, name: str, work: Path) -> list[str]:
    return [f"data.store={store}", f"train.max_steps={steps}", "train.log_every=5", f"train.val_every={steps}",
            f"train.checkpoint_every={steps}", "train.val_batches=1", f"run.storage_path={work / 'runs'}",
            f"run.name={name}", f"tracking.uri=sqlite:///{work / 'mlflow.db'}", "tracking.register=false",
            "tracking.experiment=bench-training"]


def steady(values: list[float]) -> float:
    return statistics.median(values[1:] if len(values) > 1 else values)


def in_process(config_path: str, stage: str, store: str, steps: int, work: Path) -> dict:
    """Runs in a child process (fresh memory high-water mark); prints JSON."""
    import torch

    from slicesr.config import load_config
    from slicesr.stage1.train import Stage1Trainer
    from slicesr.stage2.train import Stage2Trainer

    torch.set_num_threads(2)
    name = f"{stage}-inprocess-{time.time_ns()}"
    config = load_config(config_path, overrides(store, steps, name, work))
    seen = []

    class Capture:
        def report(self, step, metrics):
            if "samples_per_s" in metrics:
                seen.append(metrics["samples_per_s"])

    (Stage1Trainer if stage == "vae" else Stage2Trainer)(config, Capture()).fit(resume=False)
    return {"samples_per_s": steady(seen), "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def ray_run(config_path: str, stage: str, store: str, steps: int, work: Path, workers: int, strategy: str,
            ds: str | None, cpus: int) -> dict:
    from mlflow import MlflowClient

    from cluster.train import train
    from slicesr.config import load_config

    name = f"{stage}-{workers}w-{strategy}-{Path(ds).stem if ds else 'x'}-{time.time_ns()}"
    extra = [f"cluster.num_workers={workers}", f"cluster.strategy={strategy}", f"cluster.cpus_per_worker={cpus}"]
    if ds:
        extra.append(f"cluster.deepspeed_config={ds}")
    result = train(load_config(config_path, overrides(store, steps, name, work) + extra))
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    history = sorted(client.get_metric_history(result.run_id, "samples_per_s"), key=lambda m: m.step)
    peak = client.get_run(result.run_id).data.metrics["peak_worker_rss_mib"]
    return {"samples_per_s": steady([m.value for m in history]), "peak_mib": peak}


def quick_settings(scratch: Path) -> dict:
    return {"lr_store": lambda args: datasets.lr_store(scratch), "vae_steps": 10, "sr_steps": 10,
            "work": str(scratch / "bench-training")}


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--lr-store", default="demo_out/lr.zarr")
    parser.add_argument("--hr-store", default="runs/quality/brain_synthetic.zarr")
    parser.add_argument("--vae-steps", type=int, default=60)
    parser.add_argument("--sr-steps", type=int, default=30)
    parser.add_argument("--work", default=str(WORK), help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=4, metavar=("CONFIG", "STAGE", "STORE", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        config_path, stage, store, steps = args.child
        print(json.dumps(in_process(config_path, stage, store, int(steps), Path(args.work))))
        return 0
    with parse_arguments(parser, argv, quick_settings) as args:
        run(args)
    return 0


def run(args) -> None:
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    import ray

    options = {}
    if args.quick:  # a local Ray instance of its own, whatever else runs on this machine, in its own temp
        # folder (short, under /tmp: Ray's socket paths have a length limit), removed afterwards
        options = {"address": "local", "_temp_dir": tempfile.mkdtemp(prefix="ray-", dir="/tmp")}
    # 4 logical CPUs on 2 cores so that Ray Train's controller never waits for a CPU slot
    ray.init(num_cpus=4, runtime_env={"env_vars": {"PYTHONPATH": str(HERE.parent)}},
             logging_level=logging.WARNING, **options)
    try:
        measure(args, work)
    finally:
        ray.shutdown()
        if args.quick:
            shutil.rmtree(options["_temp_dir"], ignore_errors=True)


def measure(args, work: Path) -> None:
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    stores = {"vae": str(Path(args.lr_store).resolve()), "sr": str(Path(args.hr_store).resolve())}
    steps = {"vae": args.vae_steps, "sr": args.sr_steps}
    rows = []
    for stage, settings in plan(args.quick):
        measured = {}
        for label, workers, strategy, ds, cpus in settings:
            started = time.perf_counter()
            if workers == 0:
                out = subprocess.run([sys.executable, __file__, "--work", str(work), "--child", configs[stage], stage,
                                      stores[stage], str(steps[stage])],
                                     capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
                measured[label] = json.loads(out.stdout.strip().splitlines()[-1])
            else:
                measured[label] = ray_run(configs[stage], stage, stores[stage], steps[stage], work, workers, strategy,
                                          ds, cpus)
            measured[label]["wall_s"] = time.perf_counter() - started
            print(f"{stage} {label}: {measured[label]}", flush=True)
        base = measured["in-process"]["samples_per_s"]
        one = measured["Ray, 1 worker (DDP)"]["samples_per_s"]
        for label, *_ in settings:
            m = measured[label]
            relative = m["samples_per_s"] / base
            note = ""
            if label.startswith("Ray, 1"):
                note = f"overhead {100 * (1 - relative):+.1f}% vs in-process"
            elif label.startswith("Ray, 2"):
                note = f"speed-up x{m['samples_per_s'] / one:.2f} vs 1 worker"
            rows.append(f"| {STAGES[stage]} | {label} | {m['samples_per_s']:.2f} | {relative:.2f} | {m['peak_mib']:.0f} | "
                        f"{m['wall_s']:.0f} | {note} |")
    table = "\n".join(["| stage | setting | samples/s | vs in-process | peak MiB per worker | wall s | note |",
                       "|---|---|---:|---:|---:|---:|---|", *rows])
    body = (f"Command: `python benchmarks/training.py --vae-steps {args.vae_steps} --sr-steps {args.sr_steps}` "
            "(2 CPU cores, no GPU; cpu configs; stage I on the demo's LR store, stage II on the synthetic HR "
            "store of benchmarks/quality.py). samples/s: median over train.log_every=5-step intervals after "
            "the first, all workers together; wall s includes start-up (Ray workers, DeepSpeed init).\n\n" + table)
    publish(args, "training", "Training throughput: in-process vs Ray Train", body)


if __name__ == "__main__":
    sys.exit(main())
