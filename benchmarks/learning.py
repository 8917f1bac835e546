"""Stage II learning probe: how far below its linear input a generator's training L1 gets in a short run.

    python benchmarks/learning.py [--store runs/quality/brain_hr.zarr] [--steps 200] [--cases NAME ...]
    python benchmarks/learning.py --quick

Trains each case of CASES (a generator and its settings; the supervised setting: real HR patches, so
the probe measures the generator and its optimisation, not stage I) for --steps steps with the library's
Stage2Trainer, and reports the training L1 divided by the L1 of the linearly interpolated input on the
same batches, over the first 20 steps (how far Adam's first updates move away from linear) and the last
60 (what has been learnt; below 1 = better than linear), with the seconds per step. The store is a slice
store of HR volumes (benchmarks/quality.py writes runs/quality/brain_hr.zarr from the brain training pool).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks import datasets  # noqa: E402
from benchmarks.results import benchmark_parser, parse_arguments, publish  # noqa: E402
from slicesr.config import load_config  # noqa: E402

CONFIG = "configs/cpu/stage2.yaml"
THROUGHPLANE = ["model.name=throughplane2d", "model.num_layers=8", "model.num_filters=48", "sr.patch_size=[17,64,64]",
                "train.batch_size=1"]
# name -> settings over configs/cpu/stage2.yaml (DeepResolve 8 x 32, 4 patches of 17x48x48, lr 3e-4)
CASES = {
    "DeepResolve, lr 3e-4 (shipped)": [],
    "DeepResolve, lr 1e-4": ["train.lr=1e-4"],
    "DeepResolve, lr 1e-3": ["train.lr=1e-3"],
    "DeepResolve, lr 1e-3, min_foreground 0.05": ["train.lr=1e-3", "sr.min_foreground=0.05"],
    "DeepResolve, lr 1e-3, 8 patches of 17x32x32": ["train.lr=1e-3", "train.batch_size=8", "sr.patch_size=[17,32,32]"],
    "through-plane 2D 8 x 48, 1 patch of 17x64x64": THROUGHPLANE,
}
FIRST, LAST = 20, 60


class Recorder:
    def __init__(self):
        self.rows: list[dict[str, float]] = []

    def report(self, step: int, metrics: dict[str, float]) -> None:
        if "l1" in metrics and "l1_linear" in metrics:
            self.rows.append(metrics)


def ratio(rows: list[dict[str, float]]) -> float:
    return float(np.mean([r["l1"] for r in rows]) / np.mean([r["l1_linear"] for r in rows]))


def probe(config_path: str, store: str, settings: list[str], steps: int, work: Path) -> dict[str, float]:
    from slicesr.stage2.train import Stage2Trainer

    config = load_config(config_path, [f"data.store={store}", f"run.storage_path={work}", "run.name=probe",
                                       "sr.supervision=real", f"train.max_steps={steps}", "train.seed=0",
                                       "train.log_every=1", f"train.val_every={steps + 1}",
                                       f"train.checkpoint_every={steps + 1}", *settings])
    recorder = Recorder()
    trainer = Stage2Trainer(config, reporter=recorder)
    trainer.validate_untrained = False  # the probe measures training only
    started = time.perf_counter()
    trainer.fit(resume=False)
    seconds = (time.perf_counter() - started) / steps
    return {"first": ratio(recorder.rows[:FIRST]), "last": ratio(recorder.rows[-LAST:]), "seconds": seconds}


def quick_settings(scratch: Path) -> dict:
    def store(args) -> str:
        from preprocessing.to_zarr import convert

        convert([datasets.hr_train(scratch)], str(scratch / "hr.zarr"), workers=0, progress=False)
        return str(scratch / "hr.zarr")

    return {"config": "configs/debug/stage2.yaml", "steps": 4, "store": store}


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--store", default="runs/quality/brain_hr.zarr", help="slice store of HR volumes")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), metavar="NAME")
    with parse_arguments(parser, argv, quick_settings) as args:
        if not Path(args.store).exists() and "://" not in args.store:
            parser.error(f"--store {args.store}: no such slice store (benchmarks/quality.py writes it)")
        if args.quick:  # the debug config's patches; the cases' patch sizes are for the real volumes
            cases = {name: [s for s in CASES[name] if not s.startswith(("sr.patch_size", "model.num_"))]
                     for name in args.cases}
        else:
            cases = {name: CASES[name] for name in args.cases}
        lines = [f"Command: `python benchmarks/learning.py{' --quick' if args.quick else ''} --steps {args.steps}` "
                 f"(store {args.store}, {args.config}, real HR patches, seed 0)", "",
                 f"| case | L1 / linear L1, first {FIRST} steps | last {LAST} steps | s / step |", "|---|---:|---:|---:|"]
        for name, settings in cases.items():
            with tempfile.TemporaryDirectory(prefix="slicesr-probe-") as work:
                result = probe(args.config, args.store, settings, args.steps, Path(work))
            lines.append(f"| {name} | {result['first']:.4f} | {result['last']:.4f} | {result['seconds']:.3f} |")
            print(lines[-1], flush=True)
        publish(args, "learning", "Stage II learning probe (supervised, short runs)", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
