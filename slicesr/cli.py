"""The `slicesr` command: thin subcommands over the library API.

    slicesr store-info DEST [--storage-option KEY=VALUE ...]
    slicesr config [--config FILE] [--set a.b=value ...]     (print the resolved config)
    slicesr train-vae --config FILE [--set a.b=value ...] [--no-resume] [--device auto|cpu|cuda]
    slicesr train-sr --config FILE [--set a.b=value ...] [--no-resume] [--device auto|cpu|cuda]
    slicesr synthesize --model DIR --input STORE --output STORE [--k K] [--keep-acquired] [--overwrite]
    slicesr infer IN [IN ...] --output OUT --model MODEL [--k K | --spacing MM] [--slice-axis auto|0|1|2] [--no-keep-acquired]
                  [--tta] [--uncertainty] [--tta-angles DEG[,DEG]] [--tta-flips all|slice]
                  [--adapt-steps N [--adapt-patch D,H,W]] [--labels SEG] [--device auto|cpu|cuda] [--precision float32|bfloat16]
    slicesr evaluate HR [HR ...] (--k K | --lr-spacing MM) --methods linear,cubic,MODEL,... --output DIR
                     [--slice-profile point|box|gaussian --slice-thickness MM] [--slice-axis auto|0|1|2]
                     [--no-figures] [--tta] [--uncertainty] [--tta-angles DEG[,DEG]] [--tta-flips all|slice]
                     [--adapt-steps N [--adapt-patch D,H,W]] [--device auto|cpu|cuda]
    slicesr latent-analysis --model DIR [--model DIR ...] --hr HR.nii.gz [...] [--k 4] [--slice-axis auto|0|1|2]

Exit codes: 0 all done, 1 some inputs failed (the rest done), 2 usage or environment error.
"""

from __future__ import annotations

import argparse
import sys

from slicesr.cli_common import (
    ADAPT_PATCH_HELP,
    EXIT_OK,
    TTA_ANGLES_HELP,
    TTA_FLIP_NAMES,
    TTA_FLIPS_HELP,
    UsageError,
    finish,
    parse_angles,
    parse_patch,
    parse_storage_options,
    run_command,
)
from slicesr.config import dump_config, load_config
from slicesr.store import SliceStore, summarize


def _store_info(args: argparse.Namespace) -> int:
    store = SliceStore.open(args.store, parse_storage_options(args.storage_option))
    print(summarize(store))
    return EXIT_OK


def _config(args: argparse.Namespace) -> int:
    print(dump_config(load_config(args.config, args.set)), end="")
    return EXIT_OK


DEVICES = ["auto", "cpu", "cuda"]


def _train(args: argparse.Namespace, stage: str) -> int:
    """train-vae / train-sr: the stage's trainer in this process, resumed from its checkpoint."""
    config = load_config(args.config, args.set + ([f"train.device={args.device}"] if args.device else []))
    if config.stage != stage:
        raise UsageError(f"{args.config}: {args.command} needs stage: {stage}, got {config.stage}")
    if stage == "vae":
        from slicesr.stage1.train import Stage1Trainer

        result = Stage1Trainer(config).fit(resume=not args.no_resume)
        print(f"trained to step {result['step']}; best model: {result['run_dir']}/best "
              f"(val L_center {result['best_val_center']:.4f})")
    else:
        from slicesr.stage2.train import Stage2Trainer, method_label

        trainer = Stage2Trainer(config)
        result = trainer.fit(resume=not args.no_resume)
        print(f"{method_label(config.model.name, config.sr.supervision, config.model.subpixel)}: trained to step {result['step']}; "
              f"best model: {result['run_dir']}/best ({trainer.val_metric} {result['best_' + trainer.val_metric]:.4f})")
    return EXIT_OK


def _synthesize(args: argparse.Namespace) -> int:
    from slicesr.modeldir import model_fingerprint
    from slicesr.registry import is_model_uri, resolve_model_uri
    from slicesr.stage1.synthesis import synthesize_store
    from slicesr.stage1.train import load_vae

    if is_model_uri(args.model):
        args.model = str(resolve_model_uri(args.model))
    model, config, metadata = load_vae(args.model)
    options = parse_storage_options(args.storage_option)
    k = args.k or config.synthesis.k
    if k < 2:
        raise UsageError(f"--k must be 2 or more, got {k}")
    source = SliceStore.open(args.input, options)
    if SliceStore(args.output, options).url == source.url:
        raise UsageError(f"--output {args.output} is the input store: synthesis would overwrite the LR scans")
    output = SliceStore.create(args.output, options)
    report = synthesize_store(model, source, output, k, batch_size=args.batch_size or config.synthesis.batch_size,
                              overlap=config.synthesis.tile_overlap, keep_acquired=args.keep_acquired,
                              overwrite=args.overwrite, model_id=model_fingerprint(args.model))
    return finish(f"synthesised {len(report.written)} HR scans (K={k}), already done {len(report.skipped)}, "
                  f"failed {len(report.failures)} -> {output.url}", report.failures, "scan_id")


def _infer(args: argparse.Namespace) -> int:
    from slicesr.inference import check_k, check_tta, infer_files, load_method

    method = load_method(args.model, device=args.device, precision=args.precision)
    if args.spacing is not None and args.k is not None:
        raise UsageError("give --k or --spacing, not both")
    k = None if args.spacing is not None else args.k or method.trained_k
    if k is None and args.spacing is None:
        raise UsageError(f"--k or --spacing is needed with {args.model} (it was not trained for one K)")
    if k is not None:
        check_k(method, k)
    augmented = args.tta or args.uncertainty or bool(args.tta_angles) or args.tta_flips != "all"
    if augmented:
        check_tta(method)
    report = infer_files(args.inputs, args.output, method, k, args.slice_axis, keep_acquired=not args.no_keep_acquired,
                         tta=args.tta, uncertainty=args.uncertainty, adapt_steps=args.adapt_steps, labels=args.labels,
                         spacing_mm=args.spacing, tta_angles=args.tta_angles, adapt_patch=args.adapt_patch,
                         tta_flips=args.tta_flips)
    adapted = (f", adapted to each scan in {args.adapt_steps} steps: {sum(report.adapt_seconds) / len(report.adapt_seconds):.1f} s per scan"
               if report.adapt_seconds else "")
    return finish(f"super-resolved {len(report.written)} scans with {method.label} ("
                  + (f"K={k}" if k is not None else f"spacing {args.spacing:g} mm")
                  + (", test-time augmentation" if augmented else "")
                  + (" (slice flips)" if args.tta_flips == "slice" else "")
                  + (f" (rotations {', '.join(f'{a:g}' for a in args.tta_angles)})" if args.tta_angles else "")
                  + (", uncertainty maps" if args.uncertainty else "") + adapted + "), "
                  f"failed {len(report.failures)} -> {args.output}", report.failures)


def _evaluate(args: argparse.Namespace) -> int:
    from slicesr.evaluate import evaluate

    if (args.k is None) == (args.lr_spacing is None):
        raise UsageError("give --k K or --lr-spacing MM (one of them)")
    result = evaluate(args.hr, args.k, args.methods, args.output, args.slice_axis, figures=not args.no_figures,
                      tta=args.tta, uncertainty=args.uncertainty, device=args.device, lr_spacing=args.lr_spacing,
                      profile=args.slice_profile, thickness_mm=args.slice_thickness, adapt_steps=args.adapt_steps,
                      precision=args.precision, tta_angles=args.tta_angles, adapt_patch=args.adapt_patch,
                      tta_flips=args.tta_flips)
    print(result.summary_table())
    return finish(f"-> {args.output}/metrics.csv, summary.md" + ("" if args.no_figures else ", *_slices.png, *_through_plane.png"),
                  result.failures)


def _latent_analysis(args: argparse.Namespace) -> int:
    from slicesr.geometry import resolve_slice_axis, to_slice_first
    from slicesr.intensity import normalize, robust_intensity_params
    from slicesr.nifti import load_volume
    from slicesr.stage1.synthesis import latent_distances
    from slicesr.stage1.train import load_vae

    if args.k < 2:
        raise UsageError(f"--k must be 2 or more, got {args.k}")
    volumes = []
    for path in args.hr:
        volume = load_volume(path)
        slices, _ = to_slice_first(volume.data, volume.affine, resolve_slice_axis(volume.affine, args.slice_axis))
        if slices.shape[0] < args.k + 1:
            raise UsageError(f"{path}: {slices.shape[0]} slices along the slice axis, need at least K+1 = {args.k + 1}")
        volumes.append(normalize(slices, robust_intensity_params(slices)))
    print("| model | d1 (xi=1/4,3/4) | d2 (xi=2/4) | d3 (adjacent true slices) |")
    print("|---|---:|---:|---:|")
    for model_dir in args.model:
        model, _, _ = load_vae(model_dir)
        rows = [latent_distances(model, v, args.k) for v in volumes]
        mean = {key: sum(r[key] for r in rows) / len(rows) for key in ("d1", "d2", "d3")}
        print(f"| {model_dir} | {mean['d1']:.3f} | {mean['d2']:.3f} | {mean['d3']:.3f} |")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slicesr", description="Reduce the slice spacing of thick-slice MR scans.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("store-info", help="summarise a slice store")
    info.add_argument("store", metavar="DEST")
    info.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE")
    info.set_defaults(handler=_store_info)
    config = sub.add_parser("config", help="print the resolved config")
    config.add_argument("--config", default=None)
    config.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    config.set_defaults(handler=_config)
    train = sub.add_parser("train-vae", help="train the stage I VAE-GAN in this process")
    train.add_argument("--config", required=True)
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    train.add_argument("--device", choices=DEVICES, default=None, help="sets train.device (default: the config's)")
    train.add_argument("--no-resume", action="store_true", help="start again even if a checkpoint exists")
    train.set_defaults(handler=lambda args: _train(args, "vae"))
    train_sr = sub.add_parser("train-sr", help="train a stage II generator (DeepResolve, DCSRN) in this process")
    train_sr.add_argument("--config", required=True)
    train_sr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    train_sr.add_argument("--device", choices=DEVICES, default=None, help="sets train.device (default: the config's)")
    train_sr.add_argument("--no-resume", action="store_true", help="start again even if a checkpoint exists")
    train_sr.set_defaults(handler=lambda args: _train(args, "sr"))
    synth = sub.add_parser("synthesize", help="synthetic HR slice store from an LR store (stage I)")
    synth.add_argument("--model", required=True, help="stage I model directory (e.g. runs/stage1/best) or a "
                       "registered model (models:/slicesr-vae@champion; MLflow at MLFLOW_TRACKING_URI, default "
                       "sqlite:///mlflow.db)")
    synth.add_argument("--input", required=True, help="LR slice store")
    synth.add_argument("--output", required=True, help="synthetic HR slice store")
    synth.add_argument("--k", type=int, default=None)
    synth.add_argument("--batch-size", type=int, default=None)
    synth.add_argument("--keep-acquired", action="store_true", help="write the real acquired slices at i*K")
    synth.add_argument("--overwrite", action="store_true")
    synth.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE")
    synth.set_defaults(handler=_synthesize)
    infer = sub.add_parser("infer", help="super-resolve scans along their slice axis")
    infer.add_argument("inputs", nargs="+", metavar="IN", help="NIfTI files or folders of them")
    infer.add_argument("--output", required=True, metavar="OUT", help="a .nii/.nii.gz file (one input) or a folder")
    infer.add_argument("--model", required=True,
                       help="linear, cubic, a stage I model directory (VAE up-sampling), a stage II one, or a "
                       "registered model (models:/slicesr-sr@champion; MLflow at MLFLOW_TRACKING_URI, default "
                       "sqlite:///mlflow.db)")
    infer.add_argument("--k", type=int, default=None, help="slices per acquired gap (default: the model's)")
    infer.add_argument("--spacing", type=float, default=None, metavar="MM",
                       help="the output's slice spacing in mm instead of --k (any value below the input spacing; "
                       "one that divides it by an integer K is --k K)")
    infer.add_argument("--slice-axis", default="auto", choices=["auto", "0", "1", "2"])
    infer.add_argument("--no-keep-acquired", action="store_true", help="take the network's output at acquired slices too")
    infer.add_argument("--tta", action="store_true", help="average the predictions over the 8 flips of the three axes "
                       "(and both orientations of a through-plane 2D generator); not for linear or cubic")
    infer.add_argument("--uncertainty", action="store_true", help="--tta, and write <stem>_uncertainty.nii.gz beside "
                       "each output: the per-voxel SD of the augmented predictions (float32, intensity units, zero at "
                       "kept acquired slices)")
    infer.add_argument("--tta-angles", type=parse_angles, default=(), metavar="DEG[,DEG]", help=TTA_ANGLES_HELP)
    infer.add_argument("--tta-flips", choices=TTA_FLIP_NAMES, default="all", help=TTA_FLIPS_HELP)
    infer.add_argument("--adapt-steps", type=int, default=0, metavar="N",
                       help="fine-tune a copy of the model on each scan's own in-plane pairs for N steps first (the "
                       "model on disk is not changed; the time per scan is printed)")
    infer.add_argument("--adapt-patch", type=parse_patch, default=None, metavar="D,H,W", help=ADAPT_PATCH_HELP)
    infer.add_argument("--labels", default=None, metavar="SEG", help="a label image on the input's grid (one "
                       "input): carried to the output grid as <stem>_labels.nii.gz (shape-based interpolation)")
    infer.add_argument("--device", choices=DEVICES, default="auto",
                       help="where a model runs: auto (cuda when torch sees one, else cpu; default), cpu or cuda")
    infer.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                       help="bfloat16 runs a through-plane 2D generator's network in bfloat16: faster on a CPU "
                       "with AVX-512 BF16 (benchmarks/inference.py), slightly different values")
    infer.set_defaults(handler=_infer)
    evaluation = sub.add_parser("evaluate", help="score methods on HR volumes (simulated LR: every K-th slice)")
    evaluation.add_argument("hr", nargs="+", metavar="HR", help="HR NIfTI files or folders of them")
    evaluation.add_argument("--k", type=int, default=None, help="keep every K-th slice (or --lr-spacing)")
    evaluation.add_argument("--lr-spacing", type=float, default=None, metavar="MM",
                            help="the simulated LR slice spacing in mm (any multiple of the HR spacing, non-integer "
                            "included) instead of --k")
    evaluation.add_argument("--slice-profile", default="point", choices=["point", "box", "gaussian"],
                            help="what a simulated LR slice integrates (slicesr.degradation)")
    evaluation.add_argument("--slice-thickness", type=float, default=None, metavar="MM",
                            help="slice thickness for the box and gaussian profiles")
    evaluation.add_argument("--slice-axis", default="auto", choices=["auto", "0", "1", "2"])
    evaluation.add_argument("--methods", required=True,
                            help="comma-separated: linear, cubic, model directories; LABEL=MODEL names a row")
    evaluation.add_argument("--output", required=True, metavar="DIR")
    evaluation.add_argument("--no-figures", action="store_true")
    evaluation.add_argument("--tta", action="store_true", help="trained methods with test-time augmentation "
                            "(rows labelled '... (TTA)'); linear and cubic as they are")
    evaluation.add_argument("--uncertainty", action="store_true", help="--tta, and the Spearman correlation of "
                            "each trained method's uncertainty map with its absolute error (uncertainty_spearman), beside that of an "
                            "oracle that knows each voxel's in-plane neighbours' errors (neighbour_error_spearman)")
    evaluation.add_argument("--tta-angles", type=parse_angles, default=(), metavar="DEG[,DEG]", help=TTA_ANGLES_HELP)
    evaluation.add_argument("--tta-flips", choices=TTA_FLIP_NAMES, default="all", help=TTA_FLIPS_HELP)
    evaluation.add_argument("--adapt-steps", type=int, default=0, metavar="N",
                            help="fine-tune each stage II generator on each simulated LR scan's own in-plane pairs "
                            "for N steps first (rows labelled '... (adapted, N steps)'); the model is not changed")
    evaluation.add_argument("--adapt-patch", type=parse_patch, default=None, metavar="D,H,W", help=ADAPT_PATCH_HELP)
    evaluation.add_argument("--device", choices=DEVICES, default="auto",
                            help="where the trained methods run: auto (default), cpu or cuda")
    evaluation.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                            help="bfloat16 runs the through-plane 2D generators in bfloat16 (rows labelled "
                            "'... (bfloat16)'); the other methods as they are")
    evaluation.set_defaults(handler=_evaluate)
    latent = sub.add_parser("latent-analysis", help="Fig. 9 latent distances on HR volumes")
    latent.add_argument("--model", action="append", required=True)
    latent.add_argument("--hr", nargs="+", required=True)
    latent.add_argument("--k", type=int, default=4)
    latent.add_argument("--slice-axis", default="auto", choices=["auto", "0", "1", "2"])
    latent.set_defaults(handler=_latent_analysis)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, lambda args: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
