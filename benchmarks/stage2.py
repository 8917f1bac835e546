"""Stage II quality benchmark: the paper's Table 1 on this machine, from LR scans only.

    python benchmarks/stage2.py --vae runs/bench-stage1/checkpoints/latest [--lr-store demo_out/lr.zarr]
        [--hr-train ../shared/data/brain/train] [--eval ../shared/data/brain/eval/*.nii.gz] [--steps 1500]
    python benchmarks/stage2.py --quick [--with-dcsrn]

1. Synthesises HR volumes from the LR slice store (every 4th axial slice of the brain training pool,
   made by `make demo`) with the stage I model (`--vae`, e.g. the 20-minute run of benchmarks/stage1.py).
2. Trains the proposed generator on them (configs/cpu/stage2.yaml) and, with the same code, config and
   step count, the supervised upper bound ("DeepResolve only") on the real HR volumes of the same pool.
3. Runs `slicesr evaluate` on the held-out HR volumes: linear, cubic, VAE-based up-sampling, proposed,
   DeepResolve only. Writes the table and figures into benchmarks/RESULTS.md (section "stage2").
Every step resumes or is skipped when its output exists (runs/bench-stage2). `--quick`: synthetic data,
a VAE trained a few steps, the debug stage II config; prints only (figures in a temporary folder).
"""

from __future__ import annotations

import glob
import shutil
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks import datasets  # noqa: E402
from benchmarks.results import benchmark_parser, figures_dir, parse_arguments, publish  # noqa: E402
from slicesr.cli_common import setup_logging  # noqa: E402
from slicesr.config import load_config  # noqa: E402

# The rows of the table, in order (the proposed method with DCSRN before the upper bound, with --with-dcsrn)
LINEAR, CUBIC, VAE, PROPOSED, SUPERVISED = ("linear", "cubic", "VAE-based up-sample", "Proposed with DeepResolve",
                                            "DeepResolve only")
PROPOSED_DCSRN = "Proposed with DCSRN"


def prepare(args, work: Path) -> tuple[str, str]:
    """The synthetic HR store (the stage I model on the LR store) and the store of the real HR volumes."""
    from preprocessing.to_zarr import convert

    synthetic, real = str(work / "synthetic_hr.zarr"), str(work / "real_hr.zarr")
    datasets.synthesize_hr(args.vae, args.lr_store, synthetic, args.k)
    convert([args.hr_train], real, workers=0, slice_axis=2)
    return synthetic, real


def train(name: str, store: str, supervision: str, args, work: Path, generator: str = "deepresolve"
          ) -> tuple[str, int, float]:
    from slicesr.stage2.train import Stage2Trainer

    config = load_config(args.config, [f"data.store={store}", f"run.storage_path={work}", f"run.name={name}",
                                       f"sr.supervision={supervision}", f"train.max_steps={args.steps}",
                                       f"sr.k={args.k}", f"model.name={generator}"])
    trainer = Stage2Trainer(config)
    started = time.perf_counter()
    trainer.fit()
    return str(trainer.best_dir), trainer.step, time.perf_counter() - started


def quick_settings(scratch: Path) -> dict:
    return {"lr_store": lambda args: datasets.lr_store(scratch), "hr_train": lambda args: datasets.hr_train(scratch),
            "vae": lambda args: datasets.tiny_vae(scratch, args.lr_store),
            "eval": lambda args: datasets.hr_volumes(scratch / "hr_eval", 1), "config": datasets.DEBUG_STAGE2,
            "steps": 6, "work": str(scratch / "bench-stage2")}


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--vae", default=None, help="stage I model directory (required but with --quick)")
    parser.add_argument("--lr-store", default="demo_out/lr.zarr")
    parser.add_argument("--hr-train", default="../shared/data/brain/train")
    parser.add_argument("--eval", nargs="+", default=sorted(glob.glob("../shared/data/brain/eval/*.nii.gz")))
    parser.add_argument("--config", default="configs/cpu/stage2.yaml")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--work", default="runs/bench-stage2")
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument("--with-dcsrn", action="store_true", help="also the proposed method with DCSRN")
    with parse_arguments(parser, argv, quick_settings) as args:
        if args.vae is None:
            parser.error("--vae is required (a stage I model directory), except with --quick")
        return run(args)


def run(args) -> int:
    setup_logging()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    synthetic, real = prepare(args, work)
    proposed, steps_p, seconds_p = train("proposed-deepresolve", synthetic, "synthetic", args, work)
    supervised, steps_s, seconds_s = train("deepresolve-only", real, "real", args, work)
    dcsrn = train("proposed-dcsrn", synthetic, "synthetic", args, work, "dcsrn")[0] if args.with_dcsrn else None
    print(f"trained: proposed {steps_p} steps ({seconds_p:.0f} s this call), supervised {steps_s} ({seconds_s:.0f} s)")
    if args.train_only:
        return 0
    from slicesr.evaluate import evaluate

    out = work / "eval"
    methods = [LINEAR, CUBIC, f"{VAE}={args.vae}", f"{PROPOSED}={proposed}", f"{SUPERVISED}={supervised}"]
    if dcsrn:
        methods.insert(3, f"{PROPOSED_DCSRN}={dcsrn}")
    result = evaluate(args.eval, args.k, methods, str(out), slice_axis="2", progress=False)
    figures = figures_dir(args)
    for figure in sorted(out.glob("*.png")):
        shutil.copy(figure, figures / f"stage2_{figure.name}")
    lines = [
        f"Command: `python benchmarks/stage2.py --vae {args.vae} --steps {args.steps}"
        f"{' --with-dcsrn' if args.with_dcsrn else ''}`  ",
        f"Stage I model: {args.vae}; stage II: {args.config}, {args.steps} iterations each, "
        f"{torch.get_num_threads()} torch threads on 2 cores. Training pool: every {args.k}th axial slice of "
        f"{args.hr_train} (LR) for the proposed method; the full-resolution volumes of the same pool for "
        "'DeepResolve only' (the supervised upper bound). Held out: " + ", ".join(Path(p).name for p in args.eval) + ".",
        "Scoring: README 'Scoring protocol' (K = 4 along axis 2, HR min-max normalisation, missing slices primary).",
        "",
        result.summary_table(),
        "",
        *[f"![{f.stem}](figures/stage2_{f.name})" for f in sorted(out.glob("*.png"))],
    ]
    publish(args, "stage2", "Stage II: Table 1 on the brain volumes (CPU-sized models)", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
