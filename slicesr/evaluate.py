"""Scoring methods against HR volumes (the paper's Table 1, Fig. 4 and Fig. 5).

Protocol (README, "Scoring protocol"): LR = slices 0, K, 2K, ... of the HR volume's slice axis; each
method runs through the `slicesr infer` code path; the HR volume is mapped to [0, 1] by its own min
and max and each output by the same mapping (no clipping to [0, 1]); only slices from the first to
the last kept slice are scored; PSNR over all voxels of the scored set, SSIM = mean over scored 2D
slices of skimage's structural_similarity with data_range=1. "missing" = the slices T removed
(primary), "all" = every scored slice.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from slicesr.degradation import PROFILES, degrade_profile, keep_every_kth, num_kept_slices, num_lr_slices
from slicesr.geometry import resolve_slice_axis, to_slice_first, voxel_spacing
from slicesr.inference import (
    PRECISIONS,
    UNCERTAINTY_SMOOTHING_MM,
    Method,
    check_adapt_patch,
    check_k,
    check_tta_angles,
    check_tta_flips,
    expand_inputs,
    infer_volume,
    infer_volume_uncertainty,
    load_method,
    tta_label,
)
from slicesr.intensity import FOREGROUND_LEVEL
from slicesr.interpolation import SPACING_RTOL, integer_ratio
from slicesr.nifti import load_volume, strip_nifti_suffix

log = logging.getLogger(__name__)
METRICS = ("psnr_missing", "ssim_missing", "psnr_all", "ssim_all")
# columns present when some row has them (--uncertainty): the map's Spearman and the neighbours' oracle's
OPTIONAL_METRICS = ("uncertainty_spearman", "neighbour_error_spearman")
SETTINGS = ("ratio", "profile", "thickness_mm")  # how the LR scan was simulated (ratio: LR / HR spacing)
FLOAT_COLUMNS = ("ratio", "thickness_mm", *OPTIONAL_METRICS)


def scored_slices(num_slices: int, k: float) -> int:
    """HR slices from the first to the last acquired centre: K*(m-1)+1 with m kept slices (any real ratio:
    the HR slices up to the last centre)."""
    if float(k).is_integer():
        return int(k) * (num_kept_slices(num_slices, int(k)) - 1) + 1
    return int(np.floor((num_lr_slices(num_slices, k) - 1) * k + 1e-6)) + 1


def missing_slices(num_scored: int, k: float) -> np.ndarray:
    """The scored HR slices that are not within half an HR slice of an acquired centre (0, K, 2K, ...;
    for an integer K the slices that are not multiples of K)."""
    j = np.arange(num_scored, dtype=np.float64)
    return np.abs(j - np.round(j / k) * k) >= 0.5 - 1e-9


def score(hr: np.ndarray, prediction: np.ndarray, k: float) -> dict[str, float]:
    """PSNR/SSIM of `prediction` against `hr`, both slice-first; `k` is the spacing ratio (an integer K
    or any real); see the module docstring."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    n = scored_slices(hr.shape[0], k)
    if prediction.shape[0] < n or prediction.shape[1:] != hr.shape[1:]:
        raise ValueError(f"prediction of shape {prediction.shape} does not cover the {n} scored slices of {hr.shape}")
    low, high = float(hr.min()), float(hr.max())
    if high <= low:
        raise ValueError("the HR volume is constant: PSNR and SSIM are undefined")
    truth = ((hr[:n].astype(np.float64) - low) / (high - low))
    guess = ((prediction[:n].astype(np.float64) - low) / (high - low))
    missing = missing_slices(n, k)

    def psnr(index: np.ndarray) -> float:
        return float(peak_signal_noise_ratio(truth[index], guess[index], data_range=1.0))

    def ssim(index: np.ndarray) -> float:
        return float(np.mean([structural_similarity(truth[i], guess[i], data_range=1.0) for i in np.flatnonzero(index)]))

    everything = np.ones(n, dtype=bool)
    return {"psnr_missing": psnr(missing), "ssim_missing": ssim(missing),
            "psnr_all": psnr(everything), "ssim_all": ssim(everything)}


def parse_methods(text: str | list[str]) -> list[tuple[str | None, str]]:
    """`linear,cubic,Proposed=runs/sr/best` -> [(None, 'linear'), ..., ('Proposed', 'runs/sr/best')]."""
    items = text.split(",") if isinstance(text, str) else list(text)
    parsed = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        label, sep, spec = item.partition("=")
        parsed.append((label.strip(), spec.strip()) if sep else (None, item))
    if not parsed:
        raise ValueError("--methods names no method")
    return parsed


@dataclass
class EvaluationResult:
    rows: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    # volume -> method -> uncertainty_calibration (with uncertainty maps)
    calibration: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)

    def summary_table(self) -> str:
        lines = ["| method | PSNR missing (dB) | SSIM missing | PSNR all (dB) | SSIM all | volumes |",
                 "|---|---:|---:|---:|---:|---:|"]
        for method in self.methods:
            rows = [r for r in self.rows if r["method"] == method]
            cells = []
            for key in METRICS:
                values = np.array([r[key] for r in rows], dtype=np.float64)
                digits = 2 if key.startswith("psnr") else 3
                if values.size == 0:
                    cells.append("-")
                elif values.size == 1:
                    cells.append(f"{values[0]:.{digits}f}")
                else:
                    cells.append(f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}")
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {len(rows)} |")
        return "\n".join(lines)


def _save(fig, path: Path) -> None:
    """Image panels without ticks, laid out tightly, written and closed."""
    import matplotlib.pyplot as plt

    for ax in fig.axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _calibration_figure(calibration: dict, path: Path) -> None:
    """Mean absolute error against mean uncertainty per uncertainty decile, one line per (volume, method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(5, 4))
    top = 0.0
    for volume, methods in calibration.items():
        for method, curve in methods.items():
            if not curve["uncertainty"]:  # no foreground voxel on the missing slices
                continue
            axis.plot(curve["uncertainty"], curve["abs_error"], marker="o", label=f"{volume}: {method}")
            top = max(top, *curve["uncertainty"], *curve["abs_error"])
    axis.plot([0, top or 1.0], [0, top or 1.0], color="grey", linestyle=":", label="error = uncertainty")
    axis.set_xlabel("mean uncertainty (SD) per decile")
    axis.set_ylabel("mean absolute error")
    axis.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _figures(name: str, hr: np.ndarray, outputs: dict[str, np.ndarray], k: int, spacing: np.ndarray,
             folder: Path) -> None:
    """Fig. 4 (K+1 consecutive slices of each method, with error maps of the missing ones) and
    Fig. 5 (the two through-plane views through the centre, with error maps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    low, high = float(hr.min()), float(hr.max())
    norm = lambda a: (a - low) / (high - low)  # noqa: E731
    n = scored_slices(hr.shape[0], k)
    start = (n // 2) // k * k
    rows = {"ground truth": hr, **outputs}
    columns = k + 1 + (k - 1)
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.7 * columns, 1.8 * len(rows)), squeeze=False)
    for r, (label, volume) in enumerate(rows.items()):
        for j in range(k + 1):
            axes[r, j].imshow(norm(volume[start + j]), cmap="gray", vmin=0, vmax=1)
            if r == 0:
                axes[r, j].set_title(("acquired " if j in (0, k) else "") + f"slice {start + j}", fontsize=7)
        for j in range(1, k):
            error = np.abs(norm(volume[start + j]) - norm(hr[start + j]))
            axes[r, k + j].imshow(error, cmap="inferno", vmin=0, vmax=0.25)
            if r == 0:
                axes[r, k + j].set_title(f"|error| slice {start + j}", fontsize=7)
        axes[r, 0].set_ylabel(label, fontsize=7)
    _save(fig, folder / f"{name}_slices.png")

    # through-plane: index (slice, row) at the central column and (slice, col) at the central row
    views = [("row", lambda v: v[:n, :, v.shape[2] // 2], spacing[0] / spacing[1]),
             ("col", lambda v: v[:n, v.shape[1] // 2, :], spacing[0] / spacing[2])]
    fig, axes = plt.subplots(len(rows), 4, figsize=(9, 2.0 * len(rows)), squeeze=False)
    for r, (label, volume) in enumerate(rows.items()):
        for c, (_, view, aspect) in enumerate(views):
            axes[r, 2 * c].imshow(norm(view(volume)), cmap="gray", vmin=0, vmax=1, aspect=aspect)
            axes[r, 2 * c + 1].imshow(np.abs(norm(view(volume)) - norm(view(hr))), cmap="inferno", vmin=0, vmax=0.25,
                                      aspect=aspect)
        axes[r, 0].set_ylabel(label, fontsize=7)
    for c, title in enumerate(("through-plane A", "|error| A", "through-plane B", "|error| B")):
        axes[0, c].set_title(title, fontsize=8)
    _save(fig, folder / f"{name}_through_plane.png")


def _missing_errors(hr: np.ndarray, prediction: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(absolute error, foreground mask) on the missing slices (slice-first arrays): the foreground is the
    HR above FOREGROUND_LEVEL of its range."""
    n = scored_slices(hr.shape[0], k)
    missing = missing_slices(n, k)
    truth = hr[:n][missing].astype(np.float64)
    low, high = float(hr.min()), float(hr.max())
    return np.abs(prediction[:n][missing].astype(np.float64) - truth), (truth - low) > FOREGROUND_LEVEL * (high - low)


def _uncertainty_and_error(hr: np.ndarray, prediction: np.ndarray, spread: np.ndarray,
                           k: int) -> tuple[np.ndarray, np.ndarray]:
    """(uncertainty, absolute error) over the foreground voxels of the missing slices, slice-first arrays."""
    error, foreground = _missing_errors(hr, prediction, k)
    n = scored_slices(hr.shape[0], k)
    return spread[:n][missing_slices(n, k)][foreground].astype(np.float64), error[foreground]


def uncertainty_spearman(hr: np.ndarray, prediction: np.ndarray, spread: np.ndarray, k: int) -> float:
    """Spearman correlation between the uncertainty map and the absolute error over the foreground voxels
    of the missing slices: does the map point at the errors? NaN where the map is constant there (an
    untrained generator's flips all agree): it ranks nothing."""
    from scipy.stats import spearmanr

    uncertainty, error = _uncertainty_and_error(hr, prediction, spread, k)
    if uncertainty.size < 2 or np.ptp(uncertainty) == 0 or np.ptp(error) == 0:
        return float("nan")
    return float(spearmanr(uncertainty, error).statistic)


# the in-plane Gaussian of `neighbour_error_spearman` (voxels): the brains' map's smoothing (1 mm)
NEIGHBOUR_SIGMA_VOXELS = 1.0


def neighbour_mean(values: np.ndarray, sigma_voxels: float) -> np.ndarray:
    """Each voxel's Gaussian-weighted mean (`sigma_voxels`) of its in-plane neighbours in (n, rows, cols),
    the voxel itself left out, normalised by the weights inside the field of view (so that no border value
    repeats the voxel's own)."""
    from scipy.ndimage import correlate

    radius = int(np.ceil(3 * sigma_voxels))
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma_voxels ** 2))
    weights[radius, radius] = 0.0  # never the voxel's own value
    weights = weights[None]  # in-plane only: the neighbouring missing slices' errors are as unknown
    return correlate(values, weights, mode="constant") / correlate(np.ones_like(values), weights, mode="constant")


def neighbour_error_spearman(hr: np.ndarray, prediction: np.ndarray, k: int,
                             sigma_voxels: float = NEIGHBOUR_SIGMA_VOXELS) -> float:
    """A reference for `uncertainty_spearman` (it reads the HR: evaluation only): the Spearman, over the same
    voxels, of an oracle map that knows the absolute errors of each voxel's in-plane neighbours (Gaussian
    weights of `sigma_voxels`, the voxel itself left out) but not the voxel's own. The part of an error that
    is the voxel's own (the HR's noise, detail finer than a voxel) no map computed without the HR can know;
    what the error shares with its surroundings is what a map can hope to rank, and a map made from the LR
    scan knows far less of it than this oracle: the figure to read a map's Spearman against, not a strict
    bound (benchmarks/NOTES.md, twenty-first session). NaN where nothing varies."""
    if sigma_voxels <= 0:
        raise ValueError(f"sigma_voxels must be positive, got {sigma_voxels}")
    from scipy.stats import spearmanr

    error, foreground = _missing_errors(hr, prediction, k)
    oracle, target = neighbour_mean(error, sigma_voxels)[foreground], error[foreground]
    if oracle.size < 2 or np.ptp(oracle) == 0 or np.ptp(target) == 0:
        return float("nan")
    return float(spearmanr(oracle, target).statistic)


def uncertainty_calibration(hr: np.ndarray, prediction: np.ndarray, spread: np.ndarray, k: int,
                            bins: int = 10) -> dict[str, list[float]]:
    """Mean uncertainty and mean absolute error per uncertainty decile (same voxels as the Spearman):
    a calibrated map has the error rise with the decile, in the same units."""
    uncertainty, error = _uncertainty_and_error(hr, prediction, spread, k)
    order = np.argsort(uncertainty, kind="stable")
    groups = np.array_split(order, bins)
    return {"uncertainty": [float(uncertainty[g].mean()) for g in groups if g.size],
            "abs_error": [float(error[g].mean()) for g in groups if g.size]}


def evaluate(hr_inputs: list[str], k: int | None, methods: str | list[str], output: str, slice_axis: int | str = "auto",
             figures: bool = True, progress: bool = True, tta: bool = False, uncertainty: bool = False,
             device: str = "auto", lr_spacing: float | None = None, profile: str = "point",
             thickness_mm: float | None = None,
             uncertainty_smoothing_mm: float = UNCERTAINTY_SMOOTHING_MM,
             adapt_steps: int = 0, precision: str = "float32",
             tta_angles: tuple[float, ...] = (), adapt_patch: tuple[int, int, int] | None = None,
             tta_flips: str = "all") -> EvaluationResult:
    """Score every method on every HR volume; write metrics.csv, summary.md and the figures into `output`.

    The LR scan keeps every K-th slice, or with `lr_spacing` (mm, any multiple of the HR spacing) has its
    slices at i * lr_spacing; `profile` / `thickness_mm` is the slice profile of T
    (slicesr.degradation.degrade_profile; acquired slices are copied back only with the point profile).
    `tta` / `uncertainty` apply to the trained methods (labelled "... (TTA)"; linear and cubic are scored
    as they are); `uncertainty` adds `uncertainty_spearman` to their rows (maps smoothed in-plane by
    `uncertainty_smoothing_mm`, slicesr.inference.predict), and `neighbour_error_spearman`, the figure of an
    oracle that knows the neighbours' errors, to read it against. With `adapt_steps`, each trained stage II
    generator is fine-tuned on each simulated LR scan's own in-plane pairs first (per-scan adaptation, no HR;
    rows labelled '... (adapted, N steps)'); the other methods are scored as they are. `precision` bfloat16
    runs the through-plane 2D generators in bfloat16 (rows labelled '... (bfloat16)'; slicesr.inference
    `planes_on_grid`); the other methods as they are. `tta_angles` (implies `tta`): the trained methods'
    augmentations again on the slices rotated in-plane by each angle (degrees; slicesr.inference.predict;
    rows labelled '... (TTA, rotations 45)'). `adapt_patch`: the adaptation's training patch (slices, rows, cols)
    instead of each model's own (rows labelled '... (adapted, N steps, patch DxHxW)'). `tta_flips` "slice" (implies
    `tta`): the augmentations are the slice axis's flips alone (rows labelled '... (TTA, slice flips)')."""
    if adapt_steps < 0:
        raise ValueError(f"--adapt-steps must be 0 or more, got {adapt_steps}")
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if lr_spacing is None and (k is None or k < 2):
        raise ValueError(f"K must be 2 or more, got {k}")
    if lr_spacing is not None and not lr_spacing > 0:
        raise ValueError(f"--lr-spacing must be positive, got {lr_spacing}")
    if profile not in PROFILES:
        raise ValueError(f"unknown slice profile {profile!r} (one of {', '.join(PROFILES)})")
    if profile != "point" and not (thickness_mm and thickness_mm > 0):
        raise ValueError(f"the {profile} slice profile needs a positive slice thickness (--slice-thickness MM)")
    if profile == "point" and thickness_mm:
        log.warning("--slice-thickness %g mm is not used with the point profile (the paper's T keeps slices as they "
                    "are); give --slice-profile box or gaussian to simulate thick slices", thickness_mm)
    tta_angles = check_tta_angles(tta_angles)
    check_tta_flips(tta_flips)
    adapt_patch = check_adapt_patch(adapt_patch, k, adapt_steps)
    tta = tta or uncertainty or bool(tta_angles) or tta_flips != "all"
    loaded: dict[str, Method] = {}
    for label, spec in parse_methods(methods):
        method = load_method(spec, device=device)
        if lr_spacing is None:
            check_k(method, k)
        name = label or method.label
        if precision != "float32" and getattr(method, "supports_precision", False):
            method.precision = precision
            name += f" ({precision})"
        if tta and method.supports_tta:
            name += tta_label(tta_angles, tta_flips)
        if adapt_steps and method.adaptable:
            name += (f" (adapted, {adapt_steps} steps"
                     + (f", patch {'x'.join(map(str, adapt_patch))})" if adapt_patch else ")"))
        if name in loaded:
            raise ValueError(f"two methods are labelled {name!r}: name them with LABEL=MODEL")
        loaded[name] = method
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    result = EvaluationResult(methods=list(loaded))
    for path in tqdm(expand_inputs(hr_inputs), desc="evaluate", unit="volume", disable=not progress, file=sys.stderr):
        name = strip_nifti_suffix(Path(path).name)
        try:
            volume = load_volume(path)
            axis = resolve_slice_axis(volume.affine, slice_axis)
            hr, _ = to_slice_first(volume.data, volume.affine, axis)
            hr_spacing = float(voxel_spacing(volume.affine)[axis])
            ratio = lr_spacing / hr_spacing if lr_spacing is not None else float(k)
            factor = integer_ratio(ratio)
            if not ratio > 1 + SPACING_RTOL:
                raise ValueError(f"--lr-spacing {lr_spacing:g} mm is not coarser than the HR spacing ({hr_spacing:g} mm)")
            if hr.shape[0] < ratio + 1:
                raise ValueError(f"{hr.shape[0]} slices along axis {axis}: need at least {ratio:g} + 1")
            if not missing_slices(scored_slices(hr.shape[0], ratio), ratio).any():
                raise ValueError(f"a ratio of {ratio:.3g} leaves no HR slice more than half a slice from an acquired "
                                 "one: nothing to score")
            if profile == "point" and factor is not None:
                lr_data, lr_affine = keep_every_kth(volume.data, volume.affine, factor, axis)  # bit-exact
            else:
                lr_data, lr_affine = degrade_profile(volume.data, volume.affine, factor or ratio, axis, profile,
                                                     None if thickness_mm is None else thickness_mm / hr_spacing)
            lr = replace(volume, data=np.ascontiguousarray(lr_data, dtype=np.float32), affine=lr_affine)
            keep = profile == "point"  # a thick slice is an average over its thickness, not the HR slice
            grid = {"k": factor} if factor is not None else {"k": None, "spacing_mm": hr_spacing}
            scored_ratio = float(factor) if factor is not None else ratio
            outputs = {}
            for label, method in loaded.items():
                augmented = tta and method.supports_tta
                adapt = adapt_steps if method.adaptable else 0
                if uncertainty and augmented:
                    image, spread_image = infer_volume_uncertainty(lr, method, grid["k"], axis, keep_acquired=keep,
                                                                   spacing_mm=grid.get("spacing_mm"),
                                                                   smoothing_mm=uncertainty_smoothing_mm,
                                                                   adapt_steps=adapt, tta_angles=tta_angles,
                                                                   adapt_patch=adapt_patch if adapt else None,
                                                                   tta_flips=tta_flips)
                else:
                    image = infer_volume(lr, method, grid["k"], axis, keep_acquired=keep, tta=augmented,
                                         spacing_mm=grid.get("spacing_mm"), adapt_steps=adapt,
                                         tta_angles=tta_angles if augmented else (),
                                         adapt_patch=adapt_patch if adapt else None,
                                         tta_flips=tta_flips if augmented else "all")
                    spread_image = None
                prediction, _ = to_slice_first(np.asarray(image.get_fdata(dtype=np.float32)), image.affine, axis)
                outputs[label] = prediction
                row = {"volume": name, "method": label, "ratio": scored_ratio, "profile": profile,
                       "thickness_mm": "" if profile == "point" else float(thickness_mm),
                       **score(hr, prediction, scored_ratio)}
                if spread_image is not None:
                    spread, _ = to_slice_first(np.asarray(spread_image.get_fdata(dtype=np.float32)), image.affine, axis)
                    row["uncertainty_spearman"] = uncertainty_spearman(hr, prediction, spread, scored_ratio)
                    row["neighbour_error_spearman"] = neighbour_error_spearman(hr, prediction, scored_ratio)
                    result.calibration.setdefault(name, {})[label] = uncertainty_calibration(hr, prediction, spread,
                                                                                             scored_ratio)
                result.rows.append(row)
            if figures and factor is not None:  # the slice figure is laid out for an integer factor
                spacing = voxel_spacing(volume.affine)
                _figures(name, hr, outputs, factor, np.array([spacing[axis], *np.delete(spacing, axis)]), folder)
        except Exception as exc:  # a bad volume is listed; the others are still scored
            log.debug("evaluation of %s failed", path, exc_info=True)
            result.failures.append({"source": path, "error": f"{type(exc).__name__}: {exc}"})
    _write_outputs(result, folder, f"LR spacing {lr_spacing:g} mm" if lr_spacing is not None else f"K = {k}",
                   figures)
    return result


def write_metrics(rows: list[dict], path: Path) -> None:
    """metrics.csv: one row per (volume, method) with the four scores (the `slicesr evaluate` format)."""
    extra = [key for key in OPTIONAL_METRICS if any(key in row for row in rows)]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["volume", "method", *SETTINGS, *METRICS, *extra], restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: (f"{value:.6f}" if isinstance(value, float) and math.isfinite(value) else value)
                             for key, value in row.items()})


def read_metrics(path: Path) -> list[dict]:
    """Rows written by `write_metrics`, scores as floats."""
    with open(path, newline="") as handle:
        return [{key: (float(value) if key in METRICS or (key in FLOAT_COLUMNS and value) else value)
                 for key, value in row.items()} for row in csv.DictReader(handle)]


def _write_outputs(result: EvaluationResult, folder: Path, simulated: str, figures: bool = False) -> None:
    write_metrics(result.rows, folder / "metrics.csv")
    if result.calibration:
        (folder / "calibration.json").write_text(json.dumps(result.calibration, indent=1))
        if figures:
            _calibration_figure(result.calibration, folder / "uncertainty_calibration.png")
    lines = [f"# Evaluation ({simulated})", "",
             "Mean ± SD over volumes. Missing = the slices the degradation removed (primary); all = every slice "
             "from the first to the last kept one. HR min-max normalisation, SSIM per slice with data_range=1.",
             "", result.summary_table(), ""]
    if result.failures:
        lines += ["Volumes that could not be scored:", ""]
        lines += [f"- {f['source']}: {f['error']}" for f in result.failures]
    (folder / "summary.md").write_text("\n".join(lines) + "\n")
