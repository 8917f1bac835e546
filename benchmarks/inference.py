"""Inference benchmark: seconds and peak memory to super-resolve one knee LR scan with each method.

    python benchmarks/inference.py [--hr ../shared/data/knee/pykneer_dess_echo1.nii.gz] [--k 4] [--quick]

The LR scan is the DESS knee (512x512x80, PIR, int16) with every 4th slice of axis 2 kept: 512x512x20,
up-sampled to 512x512x77. Each method runs as its own `slicesr infer` process (what a user runs: read,
normalise, windows, blend, write the NIfTI); wall-clock seconds and the process's peak resident memory
(ru_maxrss) are reported. Generators are timed with freshly initialised weights (speed does not
depend on the weights), at the sizes of configs/cpu/stage2.yaml and configs/stage2.yaml.
Writes the table into benchmarks/RESULTS.md (section "inference"). `--quick`: a synthetic phantom and
the debug-sized models; prints only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks import datasets  # noqa: E402
from benchmarks.results import benchmark_parser, parse_arguments, publish  # noqa: E402
from slicesr.config import Config, load_config  # noqa: E402
from slicesr.degradation import keep_every_kth  # noqa: E402
from slicesr.modeldir import write_model_dir  # noqa: E402
from slicesr.models.generators import build_generator  # noqa: E402
from slicesr.models.vae_gan import VaeGan  # noqa: E402
from slicesr.stage1.train import size_from_config  # noqa: E402
from slicesr.stage2.train import generator_size, method_label  # noqa: E402

CPU_STAGE1, CPU_STAGE2, REFERENCE_STAGE2 = "configs/cpu/stage1.yaml", "configs/cpu/stage2.yaml", "configs/stage2.yaml"
THROUGH_PLANE = ["model.name=throughplane2d", "model.num_layers=8", "model.num_filters=48"]
SUBPIXEL = [*THROUGH_PLANE, "model.subpixel=true"]
# The rows: label, the config of the model (None: an interpolation baseline, the label is its name), overrides,
# and options of `slicesr infer`. The TTA rows time what the quality table's best knee rows run (benchmarks/
# quality.yaml: the flips, and the flips of the slices turned 45 degrees as well; or the slice axis's flips alone).
CASES = [("linear", None, [], []), ("cubic", None, [], []),
         ("VAE-based up-sample (cpu stage I)", CPU_STAGE1, [], []),
         ("DeepResolve (cpu)", CPU_STAGE2, [], []),
         ("DCSRN (cpu)", CPU_STAGE2, ["model.name=dcsrn"], []),
         ("through-plane 2D (quality.yaml)", CPU_STAGE2, THROUGH_PLANE, []),
         ("through-plane 2D (quality.yaml), --precision bfloat16", CPU_STAGE2, THROUGH_PLANE, ["--precision", "bfloat16"]),
         ("through-plane 2D, sub-pixel (quality.yaml)", CPU_STAGE2, SUBPIXEL, []),
         ("through-plane 2D, sub-pixel (quality.yaml), --tta", CPU_STAGE2, SUBPIXEL, ["--tta"]),
         ("through-plane 2D, sub-pixel (quality.yaml), --tta-angles 45", CPU_STAGE2, SUBPIXEL, ["--tta-angles", "45"]),
         ("through-plane 2D, sub-pixel (quality.yaml), --precision bfloat16", CPU_STAGE2, SUBPIXEL,
          ["--precision", "bfloat16"]),
         ("through-plane 2D, sub-pixel (quality.yaml), --tta --precision bfloat16", CPU_STAGE2, SUBPIXEL,
          ["--tta", "--precision", "bfloat16"]),
         ("through-plane 2D, sub-pixel (quality.yaml), --tta-angles 45 --precision bfloat16", CPU_STAGE2, SUBPIXEL,
          ["--tta-angles", "45", "--precision", "bfloat16"]),
         ("through-plane 2D, sub-pixel (quality.yaml), --tta-angles 45 --tta-flips slice", CPU_STAGE2, SUBPIXEL,
          ["--tta-angles", "45", "--tta-flips", "slice"]),
         ("through-plane 2D, sub-pixel (quality.yaml), --tta-angles 45 --tta-flips slice --precision bfloat16",
          CPU_STAGE2, SUBPIXEL, ["--tta-angles", "45", "--tta-flips", "slice", "--precision", "bfloat16"])]
REFERENCE_CASES = [("DCSRN (reference)", REFERENCE_STAGE2, ["model.name=dcsrn"], []),
                   ("DeepResolve (reference)", REFERENCE_STAGE2, [], [])]
# --quick: the same rows with the debug models
QUICK_CONFIGS = {CPU_STAGE1: datasets.DEBUG_STAGE1, CPU_STAGE2: datasets.DEBUG_STAGE2,
                 REFERENCE_STAGE2: datasets.DEBUG_STAGE2}


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX): without it torch emulates bfloat16,
    about ten times slower than float32 (benchmarks/NOTES.md, ninth session), and the row would time the
    emulation, not what `--precision bfloat16` is for."""
    if torch.cuda.is_available():
        return True  # `slicesr infer` takes the GPU
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # not Linux: time it
    return "avx512_bf16" in flags or "amx_bf16" in flags


def model_size(config: Config) -> str:
    m = config.model
    if config.stage == "vae":
        return f"{m.image_size}x{m.image_size} tiles, {m.num_blocks} blocks, Z={m.latent_dim}"
    if m.name == "dcsrn":
        return f"{m.dense_units} units, growth {m.growth_rate}"
    return f"{m.num_layers} layers x {m.num_filters} filters" + (", sub-pixel" if m.subpixel else "")


def make_model(config: Config, folder: Path) -> str:
    """A model directory with freshly initialised weights."""
    torch.manual_seed(0)
    if config.stage == "vae":
        model, metadata = VaeGan(size_from_config(config)), {"stage": "vae", "k": config.synthesis.k}
    else:
        model = build_generator(generator_size(config))
        metadata = {"stage": "sr", "k": config.sr.k, "method": method_label(config.model.name, "synthetic", config.model.subpixel)}
    write_model_dir(folder, model.state_dict(), config, metadata)
    return str(folder)


def run_infer(lr_path: str, model: str, output: str, k: int, options: list[str]) -> tuple[float, float]:
    # stderr into a file, not a pipe read after the wait: the progress bars of a long run (TTA) fill a pipe's
    # buffer, and the process then blocks on its next write while we wait for it to end
    with tempfile.TemporaryFile() as log_file:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "slicesr.cli", "infer", lr_path, "--output", output,
                                    "--model", model, "--k", str(k), *options], cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=log_file)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        log_file.seek(0)
        stderr = log_file.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"slicesr infer failed with {model}:\n{stderr[-2000:]}")
    return seconds, usage.ru_maxrss / 1024  # KiB -> MiB


def quick_settings(scratch: Path) -> dict:
    return {"hr": lambda args: datasets.hr_volumes(scratch / "knee", 1)[0], "work": str(scratch / "bench-inference")}


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--hr", default="../shared/data/knee/pykneer_dess_echo1.nii.gz")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--work", default="runs/bench-inference")
    parser.add_argument("--skip-reference", action="store_true", help="leave out the reference-size generators")
    with parse_arguments(parser, argv, quick_settings) as args:
        run(args)
    return 0


def run(args) -> None:
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    image = nib.load(args.hr)
    data = np.asanyarray(image.dataobj)
    lr_data, lr_affine = keep_every_kth(data, image.affine, args.k, 2)
    lr_image = nib.Nifti1Image(np.ascontiguousarray(lr_data), lr_affine, header=image.header)
    lr_path = str(work / "knee_lr.nii.gz")
    nib.save(lr_image, lr_path)
    configs = QUICK_CONFIGS if args.quick else {}
    cases = []  # label, model, size, options of `slicesr infer`
    skipped = []
    for index, (label, config_path, overrides, options) in enumerate(CASES + ([] if args.skip_reference
                                                                              else REFERENCE_CASES)):
        if "bfloat16" in options and not (native_bfloat16() or args.quick):
            skipped.append(label)
            continue
        if config_path is None:
            cases.append((label, label, "-", options))
        else:
            config = load_config(configs.get(config_path, config_path), overrides)
            cases.append((label, make_model(config, work / f"model{index}"), model_size(config), options))
    sr = load_config(configs.get(CPU_STAGE2, CPU_STAGE2)).sr
    out_shape = list(lr_data.shape)
    out_shape[2] = args.k * (out_shape[2] - 1) + 1
    lines = [
        f"Command: `python benchmarks/inference.py{' --skip-reference' if args.skip_reference else ''}`  ",
        f"Input: {Path(args.hr).name} with every {args.k}th slice of axis 2 kept: {'x'.join(map(str, lr_data.shape))} "
        f"{lr_data.dtype} -> {'x'.join(map(str, out_shape))}; one `slicesr infer` process per method, "
        f"{torch.get_num_threads()} torch threads on 2 CPU cores, no GPU. Windows and overlap from the model's "
        f"config (sr.window [{', '.join(map(str, sr.window))}], overlap {sr.window_overlap:g}); the through-plane "
        "2D generator takes whole planes, no windows.",
        "",
        "| method | size | seconds | peak memory (MiB) |",
        "|---|---|---:|---:|",
    ]
    for label, model, size, options in cases:
        seconds, peak = run_infer(lr_path, model, str(work / "out.nii.gz"), args.k, options)
        lines.append(f"| {label} | {size} | {seconds:.1f} | {peak:.0f} |")
        print(lines[-1], flush=True)
    if skipped:
        lines += ["", f"Not run: {', '.join(skipped)}: this CPU has no native bfloat16 (AVX-512 BF16 or AMX in "
                  "/proc/cpuinfo); torch would time its emulation."]
    publish(args, "inference", "Inference: one 512x512x20 knee scan, K = 4", "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
