"""Super-resolve whole scans along their slice axis: one geometry path for every method.

A method (linear, cubic, a stage I VAE, a stage II generator) only maps normalised slices
(n, rows, cols) to K*(n-1)+1 slices. Everything else is shared here: slice-axis detection, intensity
normalisation and its inverse, keeping the acquired slices, clipping to the input's value range, the
output affine (slice step / K, acquired slices at their exact world positions), the input's axis
order and data type, and atomic writing.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from tqdm import tqdm

from slicesr.errors import InputError
from slicesr.geometry import resolve_slice_axis, scale_axis, to_slice_first, voxel_spacing
from slicesr.intensity import denormalize, normalize, robust_intensity_params
from slicesr.interpolation import (
    SPACING_RTOL,
    InPlaneRotation,
    cubic_at,
    cubic_slices,
    hr_num_slices,
    integer_ratio,
    linear_at,
    linear_slices,
    target_positions,
)
from slicesr.nifti import (
    Volume,
    is_nifti_name,
    load_volume,
    read_slice_sidecar,
    save_nifti_atomic,
    strip_nifti_suffix,
)
from slicesr.windows import sliding_window_apply

log = logging.getLogger(__name__)
BASELINES = ("linear", "cubic")


# Test-time augmentation: every combination of flips of the (slices, rows, cols) axes
FLIPS = tuple(itertools.product((False, True), repeat=3))
# Which flips test-time augmentation averages (`tta_flips`): the 8 of the three axes, or those of the slice axis
# alone. A through-plane 2D generator's in-plane flips add 0.004 / 0.006 dB on the training pool's validation
# brains (with the 45-degree rotations) for twice the passes (benchmarks/NOTES.md, twentieth session).
TTA_FLIPS = {"all": FLIPS, "slice": tuple(f for f in FLIPS if not (f[1] or f[2]))}
# The SD of the augmented predictions is itself a noisy estimate voxel by voxel; a Gaussian in each slice's
# plane ranks the errors better: 1 voxel of the 1-mm brains (Spearman 0.400 -> 0.447 and 0.267 -> 0.311 on the
# training pool's validation brains, 1 to 1.5 voxels best; a model-free term from the bracketing slices added
# nothing). In millimetres, because a scan's own in-plane axis, decimated and restored without any HR, wants
# the same length: 1.5 voxels on those brains, as their HR said, and 3 to 6 voxels of the 0.3125-mm knee
# (benchmarks/NOTES.md, twenty-first session). In-plane only, so that the acquired slices keep their zero.
UNCERTAINTY_SMOOTHING_MM = 1.0


def flip(array: np.ndarray, flips: tuple[bool, bool, bool]) -> np.ndarray:
    return array[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]


class Method:
    """Maps normalised slices (n, rows, cols) to (K*(n-1)+1, rows, cols)."""

    label: str = ""
    trained_k: int | None = None  # a generator works for the K it was trained for only
    ratio_range: tuple[float, float] | None = None  # ... or for the spacing ratios of its training range
    copies_acquired = True  # False for a model of thick slices: an acquired slice is then not an HR slice
    supports_tta = True  # whether its predictions change under flips (interpolation's do not)

    def upsample(self, slices: np.ndarray, k: int, progress: bool = False) -> np.ndarray:
        raise NotImplementedError

    adaptable = False  # whether `adapted` can fine-tune it on a scan (stage II generators)

    def resample(self, slices: np.ndarray, positions: np.ndarray, progress: bool = False) -> np.ndarray:
        """Slices at any input-slice coordinates (a target spacing that is not 1/K of the input's)."""
        raise ValueError(f"{self.label} up-samples by an integer factor K only"
                         + (f" (trained for K={self.trained_k})" if self.trained_k else "")
                         + ": choose a --spacing that divides the input spacing by an integer")

    def adapted(self, slices: np.ndarray, spacing_mm: tuple[float, float, float], k: int, steps: int,
                patch: tuple[int, int, int] | None = None) -> Method:
        """A copy fine-tuned on this scan's own in-plane pairs (per-scan adaptation)."""
        raise NotImplementedError

    def augmented(self, slices: np.ndarray, k: int, progress: bool = False,
                  support: np.ndarray | None = None, flips: str = "all") -> Iterator[np.ndarray]:
        """Test-time augmentation: the method on each flip of the three axes, flipped back. Flipping the
        slice axis keeps the acquired slices on the HR grid's multiples of K (the grid is symmetric).
        `support`: an in-plane (rows, cols) mask of where the predictions are needed (a rotated canvas's
        field of view); a method may leave the rest as linear interpolation (through-plane 2D generators
        do: `planes_on_grid`), this one computes everything. `flips`: a key of TTA_FLIPS ("slice": the slice
        axis's flips alone)."""
        for axes in check_tta_flips(flips):
            yield flip(self.upsample(np.ascontiguousarray(flip(slices, axes)), k, progress), axes)


@dataclass
class Interpolation(Method):
    name: str = "linear"

    supports_tta = False

    def __post_init__(self) -> None:
        self.label = self.name

    def upsample(self, slices: np.ndarray, k: int, progress: bool = False) -> np.ndarray:
        return linear_slices(slices, k) if self.name == "linear" else cubic_slices(slices, k)

    def resample(self, slices: np.ndarray, positions: np.ndarray, progress: bool = False) -> np.ndarray:
        return linear_at(slices, positions) if self.name == "linear" else cubic_at(slices, positions)


class VaeUpsampling(Method):
    """Stage I alone: encode neighbouring slices, interpolate the means, decode (the paper's
    'VAE-Based Up-Sample'). Latent interpolation works for any K."""

    def __init__(self, path: str, device: torch.device | None = None):
        from slicesr.stage1.train import load_vae

        self.model, self.config, self.metadata = load_vae(path)
        if device is not None:
            self.model.to(device)
        self.label = "VAE-based up-sample"

    def upsample(self, slices: np.ndarray, k: int, progress: bool = False) -> np.ndarray:
        from slicesr.stage1.synthesis import synthesize_slices

        synthesis = self.config.synthesis
        return synthesize_slices(self.model, slices, k, batch_size=synthesis.batch_size,
                                 overlap=synthesis.tile_overlap)

    def resample(self, slices: np.ndarray, positions: np.ndarray, progress: bool = False) -> np.ndarray:
        from slicesr.stage1.synthesis import synthesize_slices

        synthesis = self.config.synthesis  # latent interpolation at any xi
        return synthesize_slices(self.model, slices, 1, batch_size=synthesis.batch_size,
                                 overlap=synthesis.tile_overlap, positions=positions)


class GeneratorUpsampling(Method):
    """Stage II: linear up-sampling to the HR grid, then the 3D generator in overlapping windows.

    Windows start on acquired slices (multiples of K along the slice axis), as training patches do, and
    the outputs within the generator's receptive-field radius of an inner window edge are discarded, so
    that no voxel's value depends on where a window was cut.
    """

    adaptable = True

    def __init__(self, path: str, window: tuple[int, int, int] | None = None, device: torch.device | None = None,
                 precision: str = "float32"):
        from slicesr.stage2.train import load_generator

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision

        self.model, self.config, self.metadata = load_generator(path)
        if precision != "float32" and not self.supports_precision:
            raise ValueError(f"{path}: --precision {precision} is for through-plane 2D generators; this one is "
                             f"{self.config.model.name}")
        if device is not None:
            self.model.to(device)
        self.label = str(self.metadata.get("method", self.config.model.name))
        if self.metadata.get("ratio_range"):
            self.ratio_range = tuple(float(r) for r in self.metadata["ratio_range"])
        else:
            self.trained_k = int(self.metadata["k"])
        self.slice_profile = str(self.metadata.get("slice_profile", "point"))
        self.copies_acquired = self.slice_profile == "point"
        self.window = tuple(window or self.config.sr.window)
        self.overlap = self.config.sr.window_overlap

    @property
    def supports_precision(self) -> bool:
        """Whether it runs in bfloat16 as well (through-plane 2D generators: `planes_on_grid`)."""
        return hasattr(self.model, "plane_residual")

    def upsample(self, slices: np.ndarray, k: int, progress: bool = False) -> np.ndarray:
        return generator_upsample(self.model, slices, k, self.window, self.overlap, progress,
                                  precision=self.precision)

    def resample(self, slices: np.ndarray, positions: np.ndarray, progress: bool = False) -> np.ndarray:
        """A model trained over a ratio range, at any ratio in it: linear interpolation onto the positions,
        then the generator in windows (not aligned: the acquired slices fall anywhere)."""
        if self.ratio_range is None:
            return super().resample(slices, positions, progress)
        check_ratio(self, 1.0 / float(positions[1] - positions[0]))
        return generator_on_grid(self.model, linear_at(slices, positions), self.window, self.overlap, (1, 1, 1),
                                 progress, precision=self.precision)

    def adapted(self, slices: np.ndarray, spacing_mm: tuple[float, float, float], k: int, steps: int,
                patch: tuple[int, int, int] | None = None) -> Method:
        """A copy of this method whose generator is fine-tuned for `steps` steps (the training config's Adam,
        learning rate, batch and patch, or `patch` (slices, rows, cols) instead; L1) on in-plane pairs of
        `slices` (normalised, slice axis first, `spacing_mm` in that order); this object and the model
        directory are left as they are. A step costs about what its patch holds: a model trained on long
        planes adapts in half the time on planes half as long (benchmarks/NOTES.md)."""
        import copy

        from slicesr.stage2.data import Degradation
        from slicesr.stage2.inplane import InplanePairSampler
        from slicesr.stage2.train import PLANE_GENERATORS

        config = self.config
        depth, rows, cols = check_adapt_patch(patch, k) or config.sr.patch_size
        length = max(k + 1, (depth - 1) // k * k + 1)  # K*m + 1 lines: pairs start and end on kept lines
        # the pairs degraded as the model's were: a thick-slice model adapts on its own slice profile
        degradation = Degradation(k, profile=self.slice_profile,
                                  thickness_mm=float(self.metadata.get("slice_thickness_mm") or 0.0))
        sampler = InplanePairSampler.from_scan(slices, spacing_mm, (length, rows, cols), k, config.sr.min_foreground,
                                               planes=config.model.name in PLANE_GENERATORS, degradation=degradation)
        model = copy.deepcopy(self.model).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
        generator = torch.Generator().manual_seed(config.train.seed)
        parameter = next(model.parameters())
        with torch.inference_mode(False), torch.enable_grad():
            for _ in range(steps):
                inputs, target = (t.to(parameter.device, parameter.dtype)
                                  for t in sampler.sample(config.train.batch_size, generator))
                loss = torch.nn.functional.l1_loss(model(inputs), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        adapted = copy.copy(self)
        adapted.model = model.eval()
        return adapted

    def augmented(self, slices: np.ndarray, k: int, progress: bool = False,
                  support: np.ndarray | None = None, flips: str = "all") -> Iterator[np.ndarray]:
        """The flips; for a generator with orientations (through-plane 2D), each orientation on its own.
        Such a network sees one plane at a time, so flipping the axis across an orientation's planes only
        reorders them and gives that orientation's prediction again: each orientation runs on the 4 flips
        of its own plane's axes, 8 distinct predictions for the cost of 4 whole passes (the 16 flip x
        orientation predictions hold each of them twice: the same mean and SD); with `flips` "slice", on
        the 2 flips of the slice axis, 4 predictions for 2 passes. `support`: see `Method.augmented` (a
        through-plane 2D generator runs only where it is needed)."""
        orientations = getattr(self.model, "orientations", (None,))
        across = getattr(self.model, "axis_across_planes", {})
        for axes in check_tta_flips(flips):
            wanted = [o for o in orientations if o is None or not axes[across[o]]]
            if not wanted:
                continue
            flipped = np.ascontiguousarray(flip(slices, axes))
            flipped_support = None if support is None else np.ascontiguousarray(flip(support, axes[1:]))
            for orientation in wanted:
                yield flip(generator_upsample(self.model, flipped, k, self.window, self.overlap, progress,
                                              orientation, self.precision, flipped_support), axes)


@torch.inference_mode()
def generator_upsample(model: torch.nn.Module, slices: np.ndarray, k: int, window: tuple[int, int, int],
                       overlap: float, progress: bool = False, orientation: int | None = None,
                       precision: str = "float32", support: np.ndarray | None = None) -> np.ndarray:
    """A stage II generator on normalised slices (n, rows, cols) -> (K*(n-1)+1, rows, cols): linear
    up-sampling, then the generator in K-aligned windows with its receptive-field margins discarded.
    Runs on the model's device and parameter type (a model in training too). `orientation`: one of a
    through-plane 2D generator's orientations alone (test-time augmentation); `precision`, `support`: see
    `planes_on_grid` (through-plane 2D generators only)."""

    return generator_on_grid(model, linear_slices(slices, k), window, overlap, (k, 1, 1), progress, orientation,
                             precision, support)


@torch.inference_mode()
def generator_on_grid(model: torch.nn.Module, grid_input: np.ndarray, window: tuple[int, int, int], overlap: float,
                      align: tuple[int, int, int], progress: bool = False, orientation: int | None = None,
                      precision: str = "float32", support: np.ndarray | None = None) -> np.ndarray:
    """A generator over its interpolated input on the output grid, in windows whose starts are multiples
    of `align`, the receptive-field margins of inner window edges discarded. A through-plane 2D generator
    takes whole planes instead (`planes_on_grid`: no window, no margin recomputed; only where `support`
    needs it); the others compute everything."""
    from slicesr.models.generators import receptive_radius

    if hasattr(model, "plane_residual"):
        return planes_on_grid(model, grid_input, orientation, precision, progress, support)
    parameter = next(model.parameters())

    def run(part: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(part))[None, None].to(parameter.device, parameter.dtype)
        out = model(x) if orientation is None else model(x, orientation=orientation)
        return out[0, 0].float().cpu().numpy()

    return sliding_window_apply(run, grid_input, window, overlap, progress=progress, desc="super-resolve",
                                margin=(receptive_radius(model),) * 3, align=align)


# Voxels of one batch of planes: 8 planes of 80 x 512 (the knee) were the fastest batch measured here.
PLANE_BATCH_VOXELS = 8 * 80 * 512
PRECISIONS = ("float32", "bfloat16")
# planes_on_grid's stretches of a plane's width (a `support`) start and end on multiples of this
PLANE_WIDTH_STEP = 32


@torch.inference_mode()
def planes_on_grid(model: torch.nn.Module, grid_input: np.ndarray, orientation: int | None = None,
                   precision: str = "float32", progress: bool = False,
                   support: np.ndarray | None = None) -> np.ndarray:
    """A through-plane 2D generator over its interpolated input (slices, rows, cols): every whole
    (slices, rows) and (slices, cols) plane through its network, the orientations' residuals averaged
    (or `orientation` alone), which is what its forward computes on a volume, without windows.

    `support`: a (rows, cols) mask of the in-plane positions whose result is needed (a rotated canvas's
    field of view, whose corners are about half its area). Each batch of planes then runs only on the
    stretch of its width that its needed positions span, widened by the network's receptive radius, so the
    result there is the whole planes' exactly; outside it the residual is 0 (the input is returned). A
    batch of planes with no needed position is skipped.

    `precision` "bfloat16" runs a copy of the network in bfloat16 (the knee: 18 s against 66 s in float32,
    benchmarks/inference.py); the residual is added to the input in float32. Planes go in channels-last
    layout, as the network's weights are (oneDNN's fast path for 2D convolutions on a CPU)."""
    import copy

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    orientations = model.orientations if orientation is None else (orientation,)
    if any(o not in model.orientations for o in orientations):
        raise ValueError(f"orientation must be one of {model.orientations} or None, got {orientation!r}")
    parameter = next(model.parameters())
    dtype = torch.bfloat16 if precision == "bfloat16" else parameter.dtype
    network = model if dtype == parameter.dtype else copy.deepcopy(model).to(dtype=dtype)
    volume = torch.from_numpy(np.ascontiguousarray(grid_input, dtype=np.float32))
    if support is not None:
        support = np.asarray(support, dtype=bool)
        if support.shape != volume.shape[1:]:
            raise ValueError(f"support must be a (rows, cols) mask of shape {tuple(volume.shape[1:])}, "
                             f"got {support.shape}")
        from slicesr.models.generators import receptive_radius

        reach = receptive_radius(network)
    residual = torch.zeros_like(volume)
    for o in orientations:
        # orientation 0: the (slices, rows) plane at each column; 1: the (slices, cols) plane at each row
        planes = volume.permute(2, 0, 1) if o == 0 else volume.permute(1, 0, 2)
        target = residual.permute(2, 0, 1) if o == 0 else residual.permute(1, 0, 2)
        needed = None if support is None else (support.T if o == 0 else support)  # (planes, width)
        width = planes.shape[2]
        batch = max(1, PLANE_BATCH_VOXELS // (planes.shape[1] * width))
        for start in tqdm(range(0, planes.shape[0], batch), desc=f"super-resolve (planes {o})", unit="batch",
                          disable=not progress, file=sys.stderr, leave=False):
            low, high = 0, width
            if needed is not None:
                span = np.flatnonzero(needed[start:start + batch].any(axis=0))
                if not span.size:
                    continue
                # widened to multiples of PLANE_WIDTH_STEP: a few distinct batch shapes, whose convolution
                # set-ups the CPU backend caches, rather than one per batch
                low = max(0, (int(span[0]) - reach) // PLANE_WIDTH_STEP * PLANE_WIDTH_STEP)
                high = min(width, -(-(int(span[-1]) + 1 + reach) // PLANE_WIDTH_STEP) * PLANE_WIDTH_STEP)
            chunk = planes[start:start + batch, None, :, low:high].to(parameter.device, dtype)
            chunk = chunk.contiguous(memory_format=torch.channels_last)
            target[start:start + batch, :, low:high] += network.plane_residual(chunk)[:, 0].float().cpu()
    return (volume + residual / len(orientations)).numpy()


def load_method(spec: str, window: tuple[int, int, int] | None = None, tracking_uri: str | None = None,
                device: str = "auto", precision: str = "float32") -> Method:
    """`linear`, `cubic`, a model directory (stage I VAE or stage II generator) or a registered model
    (`models:/slicesr-sr@champion`, resolved through MLflow at `tracking_uri` or MLFLOW_TRACKING_URI);
    a model runs on `device` (auto, cpu or cuda); a through-plane 2D generator in `precision` (float32 or
    bfloat16, see `planes_on_grid`)."""
    from slicesr.training import resolve_device

    torch_device = resolve_device(device)  # a usage error before anything is read
    if spec in BASELINES:
        return Interpolation(spec)
    if spec.startswith("models:/"):
        from slicesr.registry import resolve_model_uri

        spec = str(resolve_model_uri(spec, tracking_uri))
    folder = Path(spec)
    if not folder.is_dir():
        raise ValueError(f"--model {spec}: not linear, cubic or a model directory")
    from slicesr.modeldir import read_model_dir

    _, _, metadata = read_model_dir(folder)  # validates the folder before choosing the loader
    if metadata.get("stage") == "vae":
        return VaeUpsampling(spec, torch_device)
    if metadata.get("stage") == "sr":
        return GeneratorUpsampling(spec, window, torch_device, precision)
    raise ValueError(f"{spec}: unknown model stage {metadata.get('stage')!r}")


def check_ratio(method: Method, ratio: float) -> None:
    """A model trained over a ratio range refuses a spacing ratio outside it."""
    if method.ratio_range is not None:
        low, high = method.ratio_range
        if not low * (1 - SPACING_RTOL) <= ratio <= high * (1 + SPACING_RTOL):
            raise ValueError(f"{method.label} was trained for spacing ratios {low:g} to {high:g} (sr.ratio_range); "
                             f"this scan needs {ratio:.3g}")


def check_k(method: Method, k: int) -> None:
    if k < 2:
        raise ValueError(f"K must be 2 or more, got {k}")
    check_ratio(method, float(k))
    if method.trained_k is not None and method.trained_k != k:
        raise ValueError(f"{method.label} was trained for K={method.trained_k} and cannot up-sample by K={k}; "
                         f"pass --k {method.trained_k} or train a model for K={k}")


def check_adaptable(method: Method) -> None:
    if not method.adaptable:
        raise ValueError(f"{method.label} cannot be adapted to a scan (--adapt-steps): only stage II generators can")


def check_adapt_patch(patch, k: int | None = None, adapt_steps: int | None = None) -> tuple[int, int, int] | None:
    """The per-scan adaptation's training patch (slices, rows, cols), or None for the model's own; with
    `adapt_steps`, a patch without any adaptation is refused."""
    if patch is None:
        return None
    if adapt_steps is not None and not adapt_steps:
        raise ValueError("--adapt-patch is the patch of the per-scan adaptation: it needs --adapt-steps")
    values = tuple(patch)
    if len(values) != 3 or any(isinstance(v, bool) or int(v) != v or v < 1 for v in values):
        raise ValueError(f"an adaptation patch is 3 positive whole numbers (slices, rows, cols), got {patch!r}")
    if k is not None and values[0] < k + 1:
        raise ValueError(f"an adaptation patch needs at least K + 1 = {k + 1} slices, got {values[0]}")
    return tuple(int(v) for v in values)


def check_tta_angles(angles) -> tuple[float, ...]:
    """The in-plane rotations of test-time augmentation (degrees), as a tuple of floats."""
    try:
        values = tuple(float(a) for a in (angles or ()))
    except (TypeError, ValueError):
        raise ValueError(f"TTA rotation angles must be numbers of degrees, got {angles!r}") from None
    for angle in values:
        if not np.isfinite(angle) or angle % 360 == 0:
            raise ValueError(f"a TTA rotation angle must be a finite number of degrees that is not a multiple of "
                             f"360 (the unrotated augmentations always run), got {angle:g}")
    if len(set(v % 360 for v in values)) != len(values):
        raise ValueError(f"TTA rotation angles repeat one another: {', '.join(f'{v:g}' for v in values)}")
    return values


def check_tta_flips(flips: str) -> tuple[tuple[bool, bool, bool], ...]:
    """The flips (slice, rows, cols) that test-time augmentation averages, by their name in TTA_FLIPS."""
    if flips not in TTA_FLIPS:
        raise ValueError(f"TTA flips must be one of {', '.join(TTA_FLIPS)}, got {flips!r}")
    return TTA_FLIPS[flips]


def tta_label(angles: tuple[float, ...] = (), flips: str = "all") -> str:
    """The suffix of a method's name (`slicesr evaluate`'s rows) for its test-time augmentation."""
    details = (["slice flips"] if flips == "slice" else []) + (
        [f"rotations {', '.join(f'{a:g}' for a in angles)}"] if angles else [])
    return f" (TTA{''.join(', ' + d for d in details)})"


def check_tta(method: Method) -> None:
    if not method.supports_tta:
        raise ValueError(f"{method.label} gives the same result under every flip: test-time augmentation and "
                         "uncertainty (--tta, --uncertainty) need a trained model")


@dataclass
class OutputGrid:
    """Where the output slices lie along the slice axis, in input-slice coordinates."""

    positions: np.ndarray
    ratio: float  # input spacing / output spacing
    k: int | None  # the integer factor, when the ratio is one (the --k path)

    @property
    def acquired(self) -> tuple[np.ndarray, np.ndarray]:
        """(output indices, input indices) of the output slices that coincide with input slices."""
        exact = np.flatnonzero(self.positions == np.round(self.positions))  # snapped by output_grid
        return exact, np.round(self.positions[exact]).astype(np.int64)


def output_grid(num_slices: int, slice_spacing_mm: float, k: int | None = None,
                spacing_mm: float | None = None) -> OutputGrid:
    """The grid of `--k K` (K*(n-1)+1 slices) or `--spacing MM`: output slice 0 at input slice 0, slices
    MM apart up to the last input slice (floor((n-1) * s_in / MM) + 1 of them); a spacing that divides the
    input's by an integer (within interpolation.SPACING_RTOL) is that integer K."""
    if spacing_mm is not None:
        if not spacing_mm > 0:
            raise ValueError(f"--spacing must be positive, got {spacing_mm}")
        if spacing_mm > slice_spacing_mm * (1 + SPACING_RTOL):
            raise ValueError(f"--spacing {spacing_mm:g} mm is over the input's slice spacing "
                             f"({slice_spacing_mm:g} mm): nothing to super-resolve")
        ratio = slice_spacing_mm / spacing_mm
        k = integer_ratio(ratio)
        if k is None:
            positions = target_positions(num_slices, ratio)
            # a position within rounding of an input slice is that slice (a spacing typed in mm, an oblique
            # affine's column norm): the acquired slice is then kept exactly
            nearest = np.round(positions)
            near = np.abs(positions - nearest) <= SPACING_RTOL
            positions[near] = nearest[near]
            return OutputGrid(positions, ratio, None)
    if k is None:
        raise ValueError("give K or a target spacing")
    return OutputGrid(np.arange(hr_num_slices(num_slices, k), dtype=np.float64) / k, float(k), int(k))


@dataclass
class Prediction:
    data: np.ndarray  # the input's axis order, float32, input intensity scale
    affine: np.ndarray
    uncertainty: np.ndarray | None = None  # SD of the augmented predictions (smoothed in-plane), same grid and units
    adapt_seconds: float = 0.0  # time spent adapting the method to this scan


def rotated_predictions(method: Method, slices: np.ndarray, k: int, rotation: InPlaneRotation,
                        progress: bool = False, flips: str = "all") -> Iterator[np.ndarray]:
    """Test-time augmentation by a rotation about the slice axis: `method.augmented` on the slices rotated
    in-plane (`rotation`), each prediction brought back. What comes back is only the method's departure from
    linear interpolation on the rotated slices; it is added to the linear interpolation of the slices
    themselves (the two commute: one acts in-plane, the other along the slice axis), so the acquired
    content is not resampled there and back, only the part the method invented. The method needs to run only
    where the rotation back reads (`InPlaneRotation.canvas_support`: about half the canvas at 45 degrees).
    `flips`: which flips (`Method.augmented`)."""
    turned = rotation.forward(slices)
    turned_linear = linear_slices(turned, k)
    linear = linear_slices(slices, k)
    for sample in method.augmented(turned, k, progress, rotation.canvas_support(), flips):
        departure = np.subtract(sample, turned_linear, dtype=np.float32)
        yield linear + rotation.backward(departure)


def rotated_mean(method: Method, slices: np.ndarray, k: int, rotation: InPlaneRotation,
                 progress: bool = False, flips: str = "all") -> tuple[np.ndarray, int]:
    """The mean of `rotated_predictions` and how many predictions it holds, with one rotation back instead of
    one per prediction: turning back is linear, so the mean of the departures from linear interpolation is
    turned back once (what `predict` does when no uncertainty map needs the predictions one by one)."""
    turned = rotation.forward(slices)
    turned_linear = linear_slices(turned, k)
    total, count = None, 0
    for sample in method.augmented(turned, k, progress, rotation.canvas_support(), flips):
        count += 1
        if total is None:
            total = np.subtract(sample, turned_linear, dtype=np.float32)
        else:
            total += sample
            total -= turned_linear
    del turned, turned_linear
    total /= np.float32(count)
    return linear_slices(slices, k) + rotation.backward(total), count


def predict(volume: Volume, method: Method, k: int | None, slice_axis: int | str = "auto", keep_acquired: bool = True,
            progress: bool = False, tta: bool = False, uncertainty: bool = False, adapt_steps: int = 0,
            spacing_mm: float | None = None,
            uncertainty_smoothing_mm: float = UNCERTAINTY_SMOOTHING_MM,
            tta_angles: tuple[float, ...] = (), adapt_patch: tuple[int, int, int] | None = None,
            tta_flips: str = "all") -> Prediction:
    """The super-resolved volume on the grid of K or of `spacing_mm` (`output_grid`); with `tta` the mean
    of the augmented predictions (`Method.augmented`), with `uncertainty` (implies `tta`) also their standard
    deviation, smoothed in each slice's plane by a Gaussian of `uncertainty_smoothing_mm` millimetres (each
    in-plane axis in its own voxels; 0: the raw per-voxel SD), zero at kept acquired slices; with
    `adapt_steps`, by a copy of the method fine-tuned on the scan's own in-plane pairs (`Method.adapted`; on patches of `adapt_patch` rather than the model's
    training patch when given). `tta_angles` (implies `tta`): the augmentations again on
    the slices rotated in-plane by each angle in degrees (`rotated_predictions`; 45 is the one measured to
    help, benchmarks/NOTES.md). `tta_flips` (a key of TTA_FLIPS; other than "all" implies `tta`): which flips
    the augmentations are ("slice": the slice axis's alone, half the passes of a through-plane 2D generator)."""
    if uncertainty_smoothing_mm < 0:
        raise ValueError(f"uncertainty_smoothing_mm must be 0 or more, got {uncertainty_smoothing_mm}")
    tta_angles = check_tta_angles(tta_angles)
    check_tta_flips(tta_flips)
    adapt_patch = check_adapt_patch(adapt_patch, adapt_steps=adapt_steps)
    tta = tta or uncertainty or bool(tta_angles) or tta_flips != "all"
    if tta:
        check_tta(method)
    if keep_acquired and not method.copies_acquired:
        log.info("%s: trained for %s slices of %s mm: the acquired slices are not copied back", method.label,
                 getattr(method, "slice_profile", "thick"), method.metadata.get("slice_thickness_mm"))
        keep_acquired = False
    axis = resolve_slice_axis(volume.affine, slice_axis)
    slices, _ = to_slice_first(volume.data, volume.affine, axis)
    if slices.shape[0] < 2:
        raise InputError(f"{slices.shape[0]} slice along axis {axis}: nothing to interpolate")
    spacing = voxel_spacing(volume.affine)
    rotations = [InPlaneRotation(slices.shape[1:], tuple(float(v) for v in np.delete(spacing, axis)), angle)
                 for angle in tta_angles]
    grid = output_grid(slices.shape[0], float(spacing[axis]), k, spacing_mm)
    if spacing_mm is not None and spacing_mm < min(np.delete(spacing, axis)):
        log.warning("%s: --spacing %g mm is finer than the in-plane spacing (%s mm)", volume.source, spacing_mm,
                    " x ".join(f"{v:g}" for v in np.delete(spacing, axis)))
    if grid.k is None:
        if tta or adapt_steps:
            raise ValueError("--tta, --uncertainty and --adapt-steps need a spacing that divides the input's by "
                             "an integer")
        return _predict_positions(volume, method, slices, grid, axis, keep_acquired, progress)
    k = grid.k
    check_k(method, k)
    params = robust_intensity_params(slices)
    normalised = normalize(slices, params)
    adapt_seconds = 0.0
    if adapt_steps:
        check_adaptable(method)
        started = time.perf_counter()
        method = method.adapted(normalised, (spacing[axis], *np.delete(spacing, axis)), k, adapt_steps,
                                patch=adapt_patch)
        adapt_seconds = time.perf_counter() - started
        log.info("adapted %s to the scan in %d steps: %.1f s", method.label, adapt_steps, adapt_seconds)
    spread = None
    if tta and not uncertainty:
        out, count = None, 0
        parts = itertools.chain(((sample, 1) for sample in method.augmented(normalised, k, progress, flips=tta_flips)),
                                (rotated_mean(method, normalised, k, rotation, progress, tta_flips)
                                 for rotation in rotations))
        for part, weight in parts:
            # a running mean, each part weighted by the number of predictions it averages (one prediction: the
            # same float32 steps as the Welford loop below, so that --tta gives what --uncertainty's mean gives)
            count += weight
            if out is None:
                out = np.array(part, dtype=np.float32)
                continue
            delta = np.subtract(part, out, dtype=np.float32)
            out += delta / np.float32(count) if weight == 1 else delta * np.float32(weight / count)
    elif tta:
        # Welford's running mean and sum of squared deviations, float32 and in place: 3 volumes besides the
        # sample, whatever the number of augmentations (float32 is ample for 8 or 16 of them)
        count, out, squares, delta = 0, None, None, None
        samples = itertools.chain(method.augmented(normalised, k, progress, flips=tta_flips),
                                  *(rotated_predictions(method, normalised, k, rotation, progress, tta_flips)
                                    for rotation in rotations))
        for sample in samples:
            count += 1
            sample = np.asarray(sample, dtype=np.float32)
            if not sample.flags.writeable:
                sample = sample.copy()
            if out is None:
                out, squares, delta = sample.copy(), np.zeros_like(sample), np.empty_like(sample)
                continue
            np.subtract(sample, out, out=delta)
            out += delta / np.float32(count)
            np.subtract(sample, out, out=sample)
            sample *= delta
            squares += sample
        spread = squares
        spread /= np.float32(count)
        np.sqrt(spread, out=spread)
        spread *= np.float32(abs(params.scale))  # intensity units
        if uncertainty_smoothing_mm:
            smooth_in_plane(spread, tuple(uncertainty_smoothing_mm / float(v) for v in np.delete(spacing, axis)))
    else:
        out = method.upsample(normalised, k, progress=progress)
    expected = (hr_num_slices(slices.shape[0], k), *slices.shape[1:])
    if out.shape != expected:
        raise RuntimeError(f"{method.label} returned shape {out.shape}, expected {expected}")
    out = denormalize(out, params)
    # An MR intensity outside the acquired range is an overshoot, not information.
    np.clip(out, slices.min(), slices.max(), out=out)
    if keep_acquired:
        out[::k] = slices  # the input's own values, bit for bit (not normalised and back)
        if spread is not None:
            spread[::k] = 0.0
    affine = scale_axis(volume.affine, axis, 1.0 / k)
    return Prediction(np.moveaxis(out, 0, axis), affine,
                      np.moveaxis(spread, 0, axis) if uncertainty and spread is not None else None, adapt_seconds)


def smooth_in_plane(slices: np.ndarray, sigma_voxels: float | tuple[float, float]) -> None:
    """A Gaussian of `sigma_voxels` (one for both in-plane axes, or (rows, cols)) within each slice (n, rows,
    cols), in place, one slice at a time (no second volume in memory)."""
    from scipy.ndimage import gaussian_filter

    for index in range(slices.shape[0]):
        slices[index] = gaussian_filter(slices[index], sigma_voxels, mode="nearest")


def _predict_positions(volume: Volume, method: Method, slices: np.ndarray, grid: OutputGrid, axis: int,
                       keep_acquired: bool, progress: bool) -> Prediction:
    """A grid whose ratio is not an integer: the method at every output position."""
    params = robust_intensity_params(slices)
    out = method.resample(normalize(slices, params), grid.positions, progress)
    expected = (grid.positions.size, *slices.shape[1:])
    if out.shape != expected:
        raise RuntimeError(f"{method.label} returned shape {out.shape}, expected {expected}")
    out = denormalize(out, params)
    np.clip(out, slices.min(), slices.max(), out=out)
    if keep_acquired:
        kept, source = grid.acquired
        out[kept] = slices[source]
    return Prediction(np.moveaxis(out, 0, axis), scale_axis(volume.affine, axis, 1.0 / grid.ratio))


def super_resolve(volume: Volume, method: Method, k: int, slice_axis: int | str = "auto",
                  keep_acquired: bool = True, progress: bool = False, tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(data in the input's axis order, float32, input intensity scale; its affine)."""
    prediction = predict(volume, method, k, slice_axis, keep_acquired, progress, tta)
    return prediction.data, prediction.affine


def predicted_images(volume: Volume, prediction: Prediction):
    """(the output image, the uncertainty image or None) of a prediction of `volume`."""
    image = output_image(volume, prediction.data, prediction.affine)
    if prediction.uncertainty is None:
        return image, None
    return image, uncertainty_image(volume, prediction.uncertainty, prediction.affine)


def output_image(volume: Volume, data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image | nib.Nifti2Image:
    """A NIfTI in the input's format and data type: float stays float; integers are rounded and clipped,
    unless the input was scaled (`volume.scaled`): then nibabel picks a slope for the new values."""
    dtype = np.dtype(volume.source_dtype)
    header = volume.header.copy() if volume.header is not None else None
    if dtype.kind in "iu" and not volume.scaled:
        info = np.iinfo(dtype)
        data = np.clip(np.rint(data), info.min, info.max).astype(dtype)
    elif dtype.kind == "f":
        data = data.astype(dtype, copy=False)
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    image = image_class(data, affine, header=header)
    image.set_data_dtype(dtype)  # scaled integer inputs: nibabel picks a new slope for the new values
    sform_code = int(header["sform_code"]) if header is not None else 0
    qform_code = int(header["qform_code"]) if header is not None else 0
    image.set_sform(affine, code=sform_code or 1)
    image.set_qform(affine, code=qform_code or 1)
    return image


def uncertainty_image(volume: Volume, data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image | nib.Nifti2Image:
    """The uncertainty map as float32 on the output's grid (header and codes as the output's, unscaled)."""
    image = output_image(replace(volume, source_dtype="float32", scaled=False), data, affine)
    image.header.set_slope_inter(1.0, 0.0)
    return image


def beside(output: str, suffix: str) -> str:
    """A file written beside an output: `sr.nii.gz` -> `sr_<suffix>.nii.gz`."""
    folder, name = os.path.split(output)
    return os.path.join(folder, f"{strip_nifti_suffix(name)}_{suffix}.nii.gz")


def labels_path(output: str) -> str:
    return beside(output, "labels")


def check_label_grid(labels: Volume, volume: Volume) -> None:
    if labels.data.shape != volume.data.shape or not np.allclose(labels.affine, volume.affine, atol=1e-3):
        raise InputError(f"label image {labels.source}: its grid ({labels.data.shape}, affine "
                         f"{np.round(labels.affine, 3).tolist()}) differs from the scan's {volume.source} "
                         f"({volume.data.shape}, affine {np.round(volume.affine, 3).tolist()}); resample it onto "
                         "the scan first")
    if not np.array_equal(labels.data, np.round(labels.data)):
        raise InputError(f"label image {labels.source}: holds non-integer values; a label map holds integers")


def carried_labels_image(labels: Volume, volume: Volume, k: int | None, slice_axis: int | str = "auto",
                         spacing_mm: float | None = None):
    """The label image `labels` (on `volume`'s grid) carried to the grid `slicesr infer` gives `volume`
    (slicesr.labels: shape-based interpolation, no new label values), in the label file's integer type."""
    from slicesr.labels import carry_labels

    check_label_grid(labels, volume)
    axis = resolve_slice_axis(volume.affine, slice_axis)
    slices, _ = to_slice_first(labels.data, labels.affine, axis)
    spacing = voxel_spacing(volume.affine)
    grid = output_grid(slices.shape[0], float(spacing[axis]), k, spacing_mm)
    dtype = np.dtype(labels.source_dtype) if np.dtype(labels.source_dtype).kind in "iu" else np.dtype(np.int32)
    carried = carry_labels(slices.astype(np.int64), grid.positions, tuple(np.delete(spacing, axis)))
    affine = scale_axis(volume.affine, axis, 1.0 / grid.ratio)
    header = labels.header.copy() if labels.header is not None else None
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    image = image_class(np.moveaxis(carried, 0, axis).astype(dtype), affine, header=header)
    image.set_data_dtype(dtype)
    image.header.set_slope_inter(1.0, 0.0)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    return image


def uncertainty_path(output: str) -> str:
    return beside(output, "uncertainty")


def infer_volume(volume: Volume, method: Method, k: int | None, slice_axis: int | str = "auto",
                 keep_acquired: bool = True, progress: bool = False, tta: bool = False,
                 spacing_mm: float | None = None, adapt_steps: int = 0,
                 tta_angles: tuple[float, ...] = (), adapt_patch: tuple[int, int, int] | None = None,
                 tta_flips: str = "all") -> nib.Nifti1Image | nib.Nifti2Image:
    prediction = predict(volume, method, k, slice_axis, keep_acquired, progress, tta, adapt_steps=adapt_steps,
                         spacing_mm=spacing_mm, tta_angles=tta_angles, adapt_patch=adapt_patch, tta_flips=tta_flips)
    return output_image(volume, prediction.data, prediction.affine)


def infer_volume_uncertainty(volume: Volume, method: Method, k: int, slice_axis: int | str = "auto",
                             keep_acquired: bool = True, progress: bool = False, spacing_mm: float | None = None,
                             smoothing_mm: float = UNCERTAINTY_SMOOTHING_MM, adapt_steps: int = 0,
                             tta_angles: tuple[float, ...] = (), adapt_patch: tuple[int, int, int] | None = None,
                             tta_flips: str = "all"):
    """(the test-time-augmented output image, its uncertainty image)."""
    return predicted_images(volume, predict(volume, method, k, slice_axis, keep_acquired, progress, uncertainty=True,
                                            adapt_steps=adapt_steps, spacing_mm=spacing_mm,
                                            uncertainty_smoothing_mm=smoothing_mm, tta_angles=tta_angles,
                                            adapt_patch=adapt_patch, tta_flips=tta_flips))


@dataclass
class InferenceReport:
    written: list[str] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    adapt_seconds: list[float] = field(default_factory=list)  # per written scan, with adapt_steps


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files as given; folders -> their NIfTI files (sorted, not recursive)."""
    files: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(str(p) for p in Path(item).iterdir() if p.is_file() and is_nifti_name(p.name))
            if not found:
                raise ValueError(f"input folder {item} holds no .nii or .nii.gz files")
            files += found
        else:
            files.append(item)
    return files


def output_paths(files: list[str], output: str) -> list[str]:
    """A single input may name an output file; otherwise OUT is a folder of <name>.nii.gz files."""
    if is_nifti_name(output):
        if len(files) != 1:
            raise ValueError(f"--output {output} names one file but there are {len(files)} inputs; give a folder")
        if os.path.abspath(files[0]) == os.path.abspath(output):
            raise ValueError(f"--output {output} is the input: it would be overwritten")
        return [output]
    if os.path.isfile(output):
        raise ValueError(f"--output {output} is a file, not a folder")
    names = [strip_nifti_suffix(Path(f).name) for f in files]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"several inputs are named {duplicates[0]}: their outputs would collide in {output}")
    targets = [os.path.join(output, f"{name}.nii.gz") for name in names]
    for source, target in zip(files, targets):
        if os.path.abspath(source) == os.path.abspath(target):
            raise ValueError(f"the output for {source} would overwrite it: choose another --output")
    return targets


def warn_stale_companions(target: str, uncertainty_written: bool, labels_written: bool) -> None:
    """Warn of an uncertainty map or label map beside `target` that this run did not write: an earlier run's,
    which no longer belongs to the output (left in place: nothing already written is deleted)."""
    for written, path, what in ((uncertainty_written, uncertainty_path(target), "uncertainty map"),
                                (labels_written, labels_path(target), "label map")):
        if not written and os.path.exists(path):
            log.warning("%s: an earlier run's %s lies beside this new output and does not belong to it: %s",
                        target, what, path)


def check_target_spacing(files: list[str], spacing_mm: float, slice_axis: int | str = "auto",
                         method: Method | None = None, integer_only: bool = False) -> None:
    """Refuse, before any work, a target spacing that is not positive or over an input's slice spacing, a
    ratio outside the range `method` was trained for (`check_ratio`), or, with `integer_only` (TTA, the
    uncertainty map, adaptation), a ratio that is not an integer: all read from the headers, each naming the
    file (an unreadable file is left to be reported as that input's failure)."""
    if not spacing_mm > 0:
        raise ValueError(f"--spacing must be positive, got {spacing_mm}")
    for path in files:
        try:
            affine = np.asarray(nib.load(path).affine, dtype=np.float64)
            axis = resolve_slice_axis(affine, slice_axis)
        except Exception:  # noqa: BLE001 - reported by the inference loop with its reason
            continue
        slice_spacing = float(voxel_spacing(affine)[axis])
        grid = output_grid(2, slice_spacing, spacing_mm=spacing_mm)  # raises with the reason
        if grid.ratio < 1 + SPACING_RTOL:
            raise ValueError(f"--spacing {spacing_mm:g} mm is the slice spacing of {path} ({slice_spacing:g} mm): "
                             "nothing to super-resolve")
        if method is not None:
            try:
                check_ratio(method, grid.ratio)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
        if integer_only and grid.k is None:
            raise ValueError(f"--tta, --uncertainty and --adapt-steps need a spacing that divides the input's by an "
                             f"integer: {path} has {slice_spacing:g} mm slices, --spacing {spacing_mm:g} mm is a "
                             f"ratio of {grid.ratio:.3g}")


def log_slice_sidecar(source: str, method: Method) -> None:
    """Log what the scan's BIDS sidecar says of its slices beside what the method was trained for (a bad
    sidecar fails the scan, naming the file); warn when a thick-slice model meets another thickness."""
    sidecar = read_slice_sidecar(source)
    if sidecar is None:
        return
    profile = getattr(method, "slice_profile", None)
    trained = getattr(method, "metadata", {}).get("slice_thickness_mm") if profile not in (None, "point") else None
    log.info("%s: %s; %s", source, sidecar.describe(),
             f"{method.label} was trained for {profile} slices of {trained:g} mm" if trained
             else f"{method.label} assumes point-like slices" if profile == "point" else method.label)
    if trained and sidecar.thickness_mm and abs(sidecar.thickness_mm - trained) > 0.1 * trained:
        log.warning("%s: its slices are %g mm thick, but %s was trained for %g mm slices", source,
                    sidecar.thickness_mm, method.label, trained)


def infer_files(inputs: list[str], output: str, method: Method, k: int, slice_axis: int | str = "auto",
                keep_acquired: bool = True, progress: bool = True, tta: bool = False,
                uncertainty: bool = False, adapt_steps: int = 0, labels: str | None = None,
                spacing_mm: float | None = None, tta_angles: tuple[float, ...] = (),
                adapt_patch: tuple[int, int, int] | None = None, tta_flips: str = "all") -> InferenceReport:
    """Super-resolve every input into `output`; a bad file is reported and the others still done. With
    `uncertainty`, `<stem>_uncertainty.nii.gz` is written beside each output (`tta` implied); with
    `adapt_steps`, each scan by a copy of the method fine-tuned on that scan's in-plane pairs; `labels`
    (one input only): a label image on the input's grid, carried to the output's as `<stem>_labels.nii.gz`;
    `spacing_mm`: the output's slice spacing instead of K (`output_grid`; k is then None); `tta_angles`: TTA
    on the slices rotated in-plane by these angles as well (`predict`; `tta` implied); `adapt_patch`: the
    adaptation's training patch instead of the model's (`Method.adapted`); `tta_flips`: which flips TTA averages
    (`predict`; other than "all", `tta` implied)."""
    tta_angles = check_tta_angles(tta_angles)
    check_tta_flips(tta_flips)
    adapt_patch = check_adapt_patch(adapt_patch, k, adapt_steps)
    tta = tta or bool(tta_angles) or tta_flips != "all"
    if tta or uncertainty:
        check_tta(method)
    if adapt_steps < 0:
        raise ValueError(f"--adapt-steps must be 0 or more, got {adapt_steps}")
    if adapt_steps:
        check_adaptable(method)
    files = expand_inputs(inputs)
    targets = output_paths(files, output)
    if spacing_mm is not None:
        check_target_spacing(files, spacing_mm, slice_axis, method, integer_only=tta or uncertainty or adapt_steps > 0)
    label_volume = None
    if labels is not None:
        if len(files) != 1:
            raise ValueError(f"--labels {labels} belongs to one scan, but there are {len(files)} inputs")
        if os.path.abspath(labels_path(targets[0])) == os.path.abspath(labels):
            raise ValueError(f"--labels {labels} is where the carried labels would be written: choose another --output")
        label_volume = load_volume(labels)  # a bad label file stops the run before anything is written
        try:
            scan = load_volume(files[0])
        except InputError:
            scan = None  # reported as that input's failure below
        if scan is not None:
            check_label_grid(label_volume, scan)
    if uncertainty:
        clashes = sorted(set(map(uncertainty_path, targets)) & set(targets))
        if clashes:
            raise ValueError(f"an uncertainty map would overwrite the output {clashes[0]}: rename that input")
    report = InferenceReport()
    for source, target in tqdm(list(zip(files, targets)), desc="infer", unit="scan", disable=not progress or len(files) < 2,
                               file=sys.stderr):
        try:
            volume = load_volume(source)
            log_slice_sidecar(source, method)
            prediction = predict(volume, method, k, slice_axis, keep_acquired, progress, tta, uncertainty, adapt_steps,
                                 spacing_mm, tta_angles=tta_angles, adapt_patch=adapt_patch, tta_flips=tta_flips)
            image, spread = predicted_images(volume, prediction)
            carried = (carried_labels_image(label_volume, volume, k, slice_axis, spacing_mm)
                       if label_volume is not None else None)
            if carried is not None:
                save_nifti_atomic(carried, labels_path(target))
            if spread is not None:
                save_nifti_atomic(spread, uncertainty_path(target))
            save_nifti_atomic(image, target)
            warn_stale_companions(target, uncertainty_written=spread is not None, labels_written=carried is not None)
            report.written.append(target)
            if adapt_steps:
                report.adapt_seconds.append(prediction.adapt_seconds)
        except (InputError, ValueError) as exc:
            report.failures.append({"source": source, "error": str(exc)})
        except Exception as exc:  # one bad scan must not stop the others
            log.debug("inference on %s failed", source, exc_info=True)
            report.failures.append({"source": source, "error": f"{type(exc).__name__}: {exc}"})
    return report
