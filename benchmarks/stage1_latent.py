"""Latent-space analysis (paper Fig. 9): Stage I trained with and without L_comp, distances on held-out HR.

    python benchmarks/stage1_latent.py [--store demo_out/lr.zarr] [--steps 1200] [--phase-steps 300,300] [--quick]

Trains two CPU-sized models (configs/cpu/stage1.yaml) on the LR slice store only (no HR is read for
training), identical but for schedule.no_compactness, then reports on held-out HR volumes
(../shared/data/brain/eval, slice axis 2, K = 4) the mean distances d1 (xi = 1/4, 3/4) and d2
(xi = 2/4) between interpolated and encoded ground-truth codes, and d3 between the codes of
adjacent true slices (slicesr.stage1.synthesis.latent_distance_samples). Writes the table into benchmarks/RESULTS.md (section "stage1-latent"). `--quick`:
the debug config on synthetic data, a few steps; prints only.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks import datasets  # noqa: E402
from benchmarks.results import benchmark_parser, parse_arguments, publish  # noqa: E402
from slicesr.cli_common import setup_logging  # noqa: E402
from slicesr.config import load_config  # noqa: E402
from slicesr.stage1.synthesis import latent_distances  # noqa: E402
from slicesr.stage1.train import Stage1Trainer, load_vae  # noqa: E402

CONFIG = "configs/cpu/stage1.yaml"
VARIANTS = (("with L_comp", False), ("without L_comp (eta = 0)", True))  # row label, schedule.no_compactness


def quick_settings(scratch: Path) -> dict:
    return {"store": lambda args: datasets.lr_store(scratch), "steps": 12, "phase_steps": "2,2",
            "hr": lambda args: datasets.hr_volumes(scratch / "hr_eval", 2), "runs": str(scratch / "runs")}


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--store", default="demo_out/lr.zarr")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--phase-steps", default="300,300")
    parser.add_argument("--hr", nargs="+", default=sorted(str(p) for p in Path("../shared/data/brain/eval").glob("*.nii.gz")))
    parser.add_argument("--runs", default="runs/bench-latent")
    with parse_arguments(parser, argv, quick_settings) as args:
        setup_logging()
        config_path = datasets.DEBUG_STAGE1 if args.quick else CONFIG
        phases = [int(v) for v in args.phase_steps.split(",")]
        volumes = [datasets.normalized_slices(path, 2) for path in args.hr]
        rows = []
        for label, no_comp in VARIANTS:
            config = load_config(config_path, [
                f"data.store={args.store}", f"run.storage_path={args.runs}", f"run.name={'comp' if not no_comp else 'nocomp'}",
                f"train.max_steps={args.steps}", f"schedule.phase_steps={phases}", f"schedule.no_compactness={no_comp}"])
            started = time.perf_counter()
            result = Stage1Trainer(config).fit()
            minutes = (time.perf_counter() - started) / 60
            model, _, _ = load_vae(Path(result["run_dir"]) / "best")
            distances = [latent_distances(model, v, 4) for v in volumes]
            mean = {key: float(np.mean([d[key] for d in distances])) for key in ("d1", "d2", "d3")}
            rows.append((label, result["step"], minutes, result["best_val_center"], mean))
        size = load_config(config_path).model
        lines = [
            f"Command: `python benchmarks/stage1_latent.py --store {args.store} --steps {args.steps} --phase-steps {args.phase_steps}`  ",
            f"Training data: the LR slice store only ({args.store}); HR volumes for the distances: "
            f"{', '.join(Path(p).name for p in args.hr)} (slice axis 2, K = 4, normalised like the store).  ",
            f"Models: {config_path} ({size.image_size}x{size.image_size} tiles, Z = {size.latent_dim}), {args.steps} steps, "
            f"phases {phases} then all losses; a short CPU run, far from the paper's 2e6 iterations.",
            "",
            "| model | steps | minutes | best val L_center | d1 (xi=1/4,3/4) | d2 (xi=2/4) | d3 (adjacent true slices) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for label, steps, minutes, val, mean in rows:
            lines.append(f"| {label} | {steps} | {minutes:.1f} | {val:.4f} | {mean['d1']:.3f} | {mean['d2']:.3f} | {mean['d3']:.3f} |")
        publish(args, "stage1-latent", "Stage I latent space with and without L_comp (Fig. 9)", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
