"""Stage I benchmark: training throughput of the cpu and paper configs, and a time-limited CPU run.

    python benchmarks/stage1.py [--store demo_out/lr.zarr] [--minutes 20] [--skip-run] [--quick]

1. Throughput: iterations of the full phase-3 step (E, D and H forward and backward, all losses:
   slicesr.stage1.train.training_step) on random triplet batches of the config's batch size, after one
   warm-up step, with the default memory format and with channels_last; reported as centre slices per
   second (batch / seconds per step).
2. A `--minutes` CPU run of configs/cpu/stage1.yaml on the LR slice store (the brain training pool with
   every 4th axial slice, made by `make demo`), recording the losses; writes
   benchmarks/figures/stage1_losses.png and benchmarks/figures/stage1_interpolation.png (a held-out HR
   volume: acquired slices n and n+4 and the true slices between them, beside the slices the model
   synthesises from the two acquired ones). The HR volume is used for the figure only.
Writes the tables into benchmarks/RESULTS.md (section "stage1"). `--quick`: the debug config on
synthetic data, a few steps; prints only (figures in a temporary folder).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks import datasets  # noqa: E402
from benchmarks.results import benchmark_parser, figures_dir, parse_arguments, publish, pyplot  # noqa: E402
from slicesr.cli_common import setup_logging  # noqa: E402
from slicesr.config import load_config  # noqa: E402
from slicesr.models.vae_gan import VaeGan  # noqa: E402
from slicesr.stage1.losses import LossWeights  # noqa: E402
from slicesr.stage1.synthesis import synthesize_slices  # noqa: E402
from slicesr.stage1.train import Engine, Stage1Trainer, size_from_config, training_step  # noqa: E402

RUN_CONFIG = "configs/cpu/stage1.yaml"
# config, timed iterations, channels_last, batch (None: the config's). The paper config at its batch of
# 16 did not fit in this machine's 24 GiB (the process was killed), so it is measured at batch 2, one
# timed iteration.
CASES = [(RUN_CONFIG, 10, False, None), (RUN_CONFIG, 10, True, None), ("configs/stage1.yaml", 1, False, 2)]
QUICK_CASES = [(datasets.DEBUG_STAGE1, 2, False, None), (datasets.DEBUG_STAGE1, 2, True, None),
               (datasets.DEBUG_STAGE1, 1, False, 2)]
LOG_EVERY, VAL_EVERY = 25, 100  # steps between recorded losses, between validations (timed run)


def row_label(case: tuple) -> tuple[str, str, str]:
    """The first cells of a case's throughput row: config, batch, memory format."""
    config_path, _, channels_last, batch = case
    return (config_path, str(batch or load_config(config_path).train.batch_size),
            "channels_last" if channels_last else "contiguous")


def throughput(config_path: str, steps: int, channels_last: bool, batch_size: int | None = None) -> tuple[float, float]:
    config = load_config(config_path, [f"train.batch_size={batch_size}"] if batch_size else [])
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    engine = Engine(VaeGan(size_from_config(config)).to(memory_format=memory_format), config.train.lr)
    size, batch_size = config.model.image_size, config.train.batch_size
    noise = torch.Generator().manual_seed(0)
    w = LossWeights(*config.schedule.full)
    times = []
    for step in range(steps + 1):
        batch = torch.rand(batch_size, 3, size, size).contiguous(memory_format=memory_format)
        started = time.perf_counter()
        training_step(engine, batch, noise, w)
        if step:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - started)
    seconds = float(np.median(times))
    return seconds, batch_size / seconds


def timed_run(config_path: str, store: str, minutes: float, runs: str, max_steps: int | None = None
              ) -> tuple[Stage1Trainer, list[dict], float]:
    """Train for `minutes` (or `max_steps` steps, whichever ends first); the losses every LOG_EVERY
    steps, validation every VAL_EVERY; returns the trainer, that history and the seconds taken."""
    config = load_config(config_path, [f"data.store={store}", f"run.storage_path={runs}",
                                       "run.name=bench-stage1", "train.max_steps=1000000"])
    trainer = Stage1Trainer(config)
    history = []
    started = time.perf_counter()
    while time.perf_counter() - started < minutes * 60 and (max_steps is None or trainer.step < max_steps):
        metrics = trainer.train_step()
        if trainer.step % LOG_EVERY == 0:
            metrics.update(step=trainer.step, minutes=(time.perf_counter() - started) / 60)
            if trainer.step % VAL_EVERY == 0:
                metrics["val_center"] = trainer.validate()
            history.append(metrics)
    seconds = time.perf_counter() - started
    trainer.save_checkpoint()
    return trainer, history, seconds


def plot_losses(history: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
    steps = [h["step"] for h in history]
    for ax, key in zip(axes, ("center", "prior", "comp", "adv")):
        values = [h.get(key, np.nan) for h in history]
        ax.plot(steps, values, label=f"L_{key} (train)")
        if key == "center":
            val = [(h["step"], h["val_center"]) for h in history if "val_center" in h]
            if val:
                ax.plot(*zip(*val), "o-", label="L_center (val, z = mu)")
        ax.set_xlabel("iteration")
        ax.set_title(key)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_interpolation(model: VaeGan, hr_path: str, path: Path, k: int = 4) -> float:
    plt = pyplot()
    slices = datasets.normalized_slices(hr_path, 2)
    start = (slices.shape[0] // 2) // k * k
    truth = slices[start : start + k + 1]
    synthetic = synthesize_slices(model, truth[[0, k]], k, batch_size=64)
    fig, axes = plt.subplots(2, k + 1, figsize=(2.4 * (k + 1), 5))
    for j in range(k + 1):
        axes[0, j].imshow(truth[j], cmap="gray", vmin=0, vmax=1)
        axes[0, j].set_title(("acquired " if j in (0, k) else "true ") + f"n+{j}", fontsize=8)
        axes[1, j].imshow(synthetic[j], cmap="gray", vmin=0, vmax=1)
        axes[1, j].set_title(f"VAE xi={j}/{k}", fontsize=8)
        for row in axes[:, j]:
            row.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return float(np.abs(synthetic[1:k] - truth[1:k]).mean())


def run_section(args, config_path: str, figures: Path) -> list[str]:
    trainer, history, seconds = timed_run(config_path, args.store, args.minutes, args.runs, args.max_steps)
    if not history:
        raise SystemExit(f"fewer than {LOG_EVERY} iterations in {args.minutes} minutes: nothing to plot")
    plot_losses(history, figures / "stage1_losses.png")
    l1 = plot_interpolation(trainer.model, args.hr, figures / "stage1_interpolation.png")
    first, last = history[0], history[-1]
    vals = [h["val_center"] for h in history if "val_center" in h]
    return [
        "",
        f"{args.minutes:g}-minute run of {config_path} on {args.store}: {trainer.step} iterations "
        f"({trainer.step / seconds:.2f} it/s), phases switch at "
        f"{trainer.config.schedule.phase_steps[0]} and {sum(trainer.config.schedule.phase_steps)}.",
        f"L_center (train) {first['center']:.4f} at step {first['step']} -> {last['center']:.4f} at step {last['step']}; "
        f"validation L_center (z = mu) {vals[0]:.4f} -> {vals[-1]:.4f}." if vals else "",
        f"Held-out {Path(args.hr).name}: mean |synthesised - true| on the 3 in-between slices = {l1:.4f} "
        "(intensities normalised to about [0, 1]).",
        "",
        "![losses](figures/stage1_losses.png)",
        "![interpolation](figures/stage1_interpolation.png)",
    ]


def quick_settings(scratch: Path) -> dict:
    return {"store": lambda args: datasets.lr_store(scratch), "minutes": 1.0, "max_steps": VAL_EVERY,
            "hr": lambda args: datasets.hr_volumes(scratch / "hr_eval", 1)[0], "runs": str(scratch / "runs")}


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--store", default="demo_out/lr.zarr")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--max-steps", type=int, default=None, help="end the timed run earlier, after this many steps")
    parser.add_argument("--hr", default="../shared/data/brain/eval/brats18_case7_t1.nii.gz")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--skip-run", action="store_true", help="throughput only")
    with parse_arguments(parser, argv, quick_settings) as args:
        setup_logging()
        lines = [
            f"Command: `python benchmarks/stage1.py --store {args.store} --minutes {args.minutes:g}`  ",
            f"Machine: {torch.get_num_threads()} torch threads on 2 cores, torch {torch.__version__}.",
            "",
            "| config | batch | memory format | seconds / iteration | centre slices / s |",
            "|---|---:|---|---:|---:|",
        ]
        for case in QUICK_CASES if args.quick else CASES:
            seconds, rate = throughput(*case)
            lines.append("| " + " | ".join(row_label(case)) + f" | {seconds:.3f} | {rate:.2f} |")
            print(lines[-1], flush=True)
        if not args.skip_run:
            lines += run_section(args, datasets.DEBUG_STAGE1 if args.quick else RUN_CONFIG, figures_dir(args))
        publish(args, "stage1", "Stage I: training throughput and a CPU run", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
