"""One typed config tree, loaded from YAML, overridable with `--set a.b=value`, validated at load.

Sections and names reserved for every stage (never renamed): stage, data, model, train, cluster,
run, tracking. Each component receives only its own section.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

import yaml

from slicesr.cli_common import parse_scalar


@dataclass
class DataConfig:
    store: str = "runs/data/lr.zarr"  # the training input slice store (local folder or s3://)
    storage_options: dict[str, str] = field(default_factory=dict)  # fsspec options for s3:// stores
    # Stage II with sr.supervision=both: the slice store of LR scans that gives the in-plane pairs.
    # Empty: the store the synthetic volumes of data.store were synthesised from (their records name it).
    lr_store: str = ""
    # MiB of scans each training sampler holds decompressed in memory (the first scans it draws; the rest
    # are read window by window). 0: every window read from the store.
    cache_mb: float = 2048.0

    def validate(self) -> None:
        _require(bool(self.store), "data.store must name a slice store (folder or s3:// URL)")
        _require(self.cache_mb >= 0, f"data.cache_mb must be >= 0, got {self.cache_mb}")


@dataclass
class ModelConfig:
    # stage I: vae_gan; stage II: a generator. Unset: vae_gan for stage vae, deepresolve for stage sr.
    name: Literal["vae_gan", "deepresolve", "dcsrn", "throughplane2d"] | None = None
    # Stage I (VAE-GAN) size; the paper: image_size 256, num_blocks 6, latent_dim 512.
    image_size: int = 64
    channels: int = 16
    max_channels: int = 256
    num_blocks: int = 3
    latent_dim: int = 64
    disc_channels: int = 32
    spectral_norm: bool = True
    # Stage II generators; the references: DeepResolve 20 layers x 64 filters, DCSRN 4 units, growth 24.
    num_layers: int = 20  # DeepResolve (3x3x3) and throughplane2d (3x3): conv layers, ReLU between them
    num_filters: int = 64  # DeepResolve and throughplane2d: filters per layer
    dense_units: int = 4  # DCSRN: BN-ELU-conv units in the dense block
    growth_rate: int = 24  # DCSRN: filters each unit adds (its first conv has 2 x growth_rate)
    # throughplane2d: run the network on the acquired lines only (the LR grid) and let its last conv give the
    # K - 1 lines after each of them (a sub-pixel convolution), instead of on every line of the interpolated
    # input: K times fewer pixels per layer, and each layer sees K times further along the slice axis.
    # For one integer ratio (sr.k) and the point profile: the acquired lines must sit at 0, K, 2K, ...
    subpixel: bool = False

    # keys added after runs had been saved: left out of a run's identity at these defaults, so that the
    # checkpoints saved before them still resume
    LATER_KEYS: ClassVar[dict[str, Any]] = {"subpixel": False}

    def identity(self) -> dict[str, Any]:
        """The settings a checkpoint must have been trained with to resume (slicesr.training)."""
        values = dataclasses.asdict(self)
        for key, default in self.LATER_KEYS.items():
            if values[key] == default:
                del values[key]
        return values

    def validate(self) -> None:
        for key in ("image_size", "channels", "max_channels", "num_blocks", "latent_dim", "disc_channels",
                    "num_filters", "dense_units", "growth_rate"):
            _require(getattr(self, key) >= 1, f"model.{key} must be >= 1, got {getattr(self, key)}")
        _require(self.image_size % 2**self.num_blocks == 0 and self.image_size // 2**self.num_blocks >= 2,
                 f"model.image_size ({self.image_size}) must be divisible by 2**model.num_blocks "
                 f"({2**self.num_blocks}) with at least 2 pixels left at the bottom")
        _require(self.num_layers >= 2, f"model.num_layers must be >= 2 (input and output convs), got {self.num_layers}")
        _require(self.image_size >= 16, f"model.image_size must be >= 16 (the critic halves it three times), "
                 f"got {self.image_size}")


@dataclass
class ScheduleConfig:
    """Stage I loss weights (alpha, beta, gamma, eta) in three phases (paper section 3.1)."""

    phase_steps: list[int] = field(default_factory=lambda: [100, 800])  # lengths of phases 1 and 2
    warmup: list[float] = field(default_factory=lambda: [10000.0, 0.0, 1.0, 0.0])
    adversarial: list[float] = field(default_factory=lambda: [100.0, 1.0, 0.05, 0.0])
    full: list[float] = field(default_factory=lambda: [100.0, 1.0, 0.05, 0.02])
    no_adversarial: bool = False  # ablation: beta = 0 throughout
    no_compactness: bool = False  # ablation: eta = 0 throughout

    def validate(self) -> None:
        _require(len(self.phase_steps) == 2 and min(self.phase_steps) >= 0,
                 f"schedule.phase_steps must be two non-negative lengths, got {self.phase_steps}")
        for key in ("warmup", "adversarial", "full"):
            weights = getattr(self, key)
            _require(len(weights) == 4 and min(weights) >= 0,
                     f"schedule.{key} must be four non-negative weights (alpha, beta, gamma, eta), got {weights}")


@dataclass
class SynthesisConfig:
    """Stage I HR synthesis: K slices per acquired gap, written as a slice store."""

    k: int = 4
    output: str = "runs/data/synthetic_hr.zarr"
    batch_size: int = 32
    keep_acquired: bool = False  # the paper decodes the acquired slices too; True keeps the real ones
    tile_overlap: float = 0.25

    def validate(self) -> None:
        _require(self.k >= 2, f"synthesis.k must be >= 2, got {self.k}")
        _require(self.batch_size >= 1, f"synthesis.batch_size must be >= 1, got {self.batch_size}")
        _require(0 <= self.tile_overlap < 1, f"synthesis.tile_overlap must be in [0, 1), got {self.tile_overlap}")


@dataclass
class SrConfig:
    """Stage II: degradation T (keep 1 slice in K), 3D training patches, sliding-window inference.

    Sizes are (slices, rows, cols) on the HR grid, slice axis first.
    """

    k: int = 4
    patch_size: list[int] = field(default_factory=lambda: [17, 64, 64])  # slices = K * m + 1
    window: list[int] = field(default_factory=lambda: [81, 192, 192])  # shrunk to fit evenly
    window_overlap: float = 0.125
    keep_acquired: bool = True  # the acquired slices are copied to the output unchanged
    # Redraw a training patch (up to 20 times) until this fraction of its voxels is foreground
    # (normalised intensity > 0.05): scans with a large empty background otherwise teach mostly zeros.
    min_foreground: float = 0.0
    # Where the training pairs come from: synthetic (the paper: stage I's synthetic HR volumes in
    # data.store), inplane (data.store holds the LR scans; pairs from their own in-plane axes,
    # slicesr.stage2.inplane), both (synthetic pairs from data.store and in-plane pairs from
    # data.lr_store, a fraction sr.inplane_fraction of the steps in-plane), or real (HR volumes: the
    # supervised upper bound).
    supervision: Literal["synthetic", "inplane", "both", "real"] = "synthetic"
    inplane_fraction: float = 0.5
    # [low, high]: each training pair is degraded at its own spacing ratio drawn uniformly from this range
    # (real numbers), so that one model serves every ratio in it (infer --spacing); empty: the ratio sr.k.
    ratio_range: list[float] = field(default_factory=list)
    # The share of those pairs drawn at one of the range's integer ratios instead (each integer equally
    # likely; slicesr.stage2.data.draw_ratios): a fractional ratio's acquired lines are linear samples between
    # grid lines (blurred), an integer ratio's are sharp, as a scan's acquired slices. 0: uniform only.
    ratio_integer_share: float = 0.0
    # The slice profile of T in the training pairs (slicesr.degradation): point (the paper), or box /
    # gaussian (FWHM) of slice_thickness mm: a model for thick clinical slices (it copies nothing back).
    slice_profile: Literal["point", "box", "gaussian"] = "point"
    slice_thickness: float = 0.0  # mm; 0 with box / gaussian: from the scans' BIDS sidecars (SliceThickness)
    # Which slices of a patch the L1 counts: all (the paper's eq. 12) or only the missing ones (slicesr
    # recipe): at the acquired slices, 0, K, 2K, ..., the input equals the target and the loss there only
    # teaches the identity.
    loss_slices: Literal["all", "missing"] = "all"
    # What picks best/: L1 on fixed patches of the training store's validation scans (patches), or the
    # LR hold-out (lr_holdout): every other slice of each validation scan's LR version dropped and
    # restored by the model, scored on the dropped slices (no HR needed; slicesr.stage2.holdout), on the
    # central `holdout_crop` (rows, cols) of each scan; at the ratio sr.k, or for a ratio range at every
    # integer ratio in the range, averaged (`holdout_ratios`).
    validation: Literal["patches", "lr_holdout"] = "patches"
    holdout_crop: list[int] = field(default_factory=lambda: [96, 96])
    # A stage II model directory whose weights the generator starts from (same model.* size), instead of
    # random weights: fine-tuning a model on a site's own scans, or another ratio range, or another profile.
    # A resumed run continues from its checkpoint, whatever this says.
    init_from: str = ""

    def validate(self) -> None:
        _require(self.k >= 2, f"sr.k must be >= 2, got {self.k}")
        for key in ("patch_size", "window"):
            size = getattr(self, key)
            _require(len(size) == 3 and min(size) >= 1, f"sr.{key} must be three sizes (slices, rows, cols), got {size}")
        _require(self.patch_size[0] >= self.k + 1 and (self.patch_size[0] - 1) % self.k == 0,
                 f"sr.patch_size[0] ({self.patch_size[0]}) must be K*m + 1 slices with m >= 1 (K = {self.k}), "
                 f"e.g. {2 * self.k + 1}: a patch starts and ends on an acquired slice")
        _require(0 <= self.window_overlap < 1, f"sr.window_overlap must be in [0, 1), got {self.window_overlap}")
        _require(0 <= self.min_foreground <= 1, f"sr.min_foreground must be in [0, 1], got {self.min_foreground}")
        if self.ratio_range:
            _require(len(self.ratio_range) == 2 and 1 < self.ratio_range[0] <= self.ratio_range[1],
                     f"sr.ratio_range must be [low, high] with 1 < low <= high, got {self.ratio_range}")
            _require(self.patch_size[0] >= self.ratio_range[1] + 1,
                     f"sr.patch_size[0] ({self.patch_size[0]}) must span the largest ratio of sr.ratio_range + 1")
            _require(self.loss_slices == "all", "sr.loss_slices: missing is for a single ratio (sr.k); with "
                     "sr.ratio_range use all")
        _require(0 <= self.ratio_integer_share <= 1,
                 f"sr.ratio_integer_share must be in [0, 1], got {self.ratio_integer_share}")
        if self.ratio_integer_share > 0:
            _require(bool(self.ratio_range) and math.floor(self.ratio_range[1]) >= math.ceil(self.ratio_range[0]),
                     f"sr.ratio_integer_share needs an sr.ratio_range holding an integer ratio, got "
                     f"{self.ratio_range or 'none'}")
        _require(self.slice_thickness >= 0, f"sr.slice_thickness must be 0 (from the scans' BIDS sidecars) or "
                 f"a thickness in mm, got {self.slice_thickness}")
        _require(self.slice_profile == "point" or self.loss_slices == "all",
                 "sr.loss_slices: missing needs the point profile (a thick acquired slice is not the HR slice)")
        # The hold-out drops every other acquired slice and compares the model's output there with it: with
        # a thick profile the kept slices are then twice as far apart for the same thickness (another gap
        # than trained for), and the dropped slice is an average, not the HR slice the model returns.
        _require(self.slice_profile == "point" or self.validation == "patches",
                 "sr.validation: lr_holdout needs the point profile (a thick acquired slice is an average over its "
                 "thickness, not what the model returns, and the hold-out doubles the gap); use patches (pairs "
                 "degraded with the same profile)")
        if self.validation == "lr_holdout":
            self.holdout_ratios()  # a range without an integer ratio cannot be checked by the hold-out
        _require(0 < self.inplane_fraction < 1, f"sr.inplane_fraction must be in (0, 1), got {self.inplane_fraction}"
                 " (for only one source set sr.supervision to synthetic or inplane)")
        _require(len(self.holdout_crop) == 2 and min(self.holdout_crop) >= 1,
                 f"sr.holdout_crop must be two sizes (rows, cols), got {self.holdout_crop}")


    def holdout_ratios(self) -> list[int]:
        """The integer ratios the LR hold-out runs the model at: sr.k, or for a ratio range every integer
        ratio in it. A range model is judged over its range: at one ratio only, best/ would be the step
        that suits that ratio (a model run at a ratio it was not trained for stays near linear whatever
        it learned, so sr.k outside the range is not used either)."""
        if not self.ratio_range:
            return [self.k]
        low, high = self.ratio_range
        inside = list(range(max(2, math.ceil(low)), math.floor(high) + 1))
        _require(len(inside) > 0, f"sr.validation: lr_holdout needs an integer ratio in sr.ratio_range {self.ratio_range} "
                 "(the hold-out restores every other slice at an integer ratio); use patches")
        return inside


@dataclass
class TrainConfig:
    max_steps: int = 1000
    batch_size: int = 16
    lr: float = 2e-4
    # The learning rate rises linearly from lr / lr_warmup_steps to lr over the first lr_warmup_steps steps
    # and falls linearly to 0 over the last lr_decay_steps steps before max_steps; constant otherwise (0, 0:
    # the default); where the two overlap (a run shorter than both) their factors multiply. A warm-up lets
    # Adam's moment estimates settle before full-size steps; a final decay anneals the noise of a constant
    # rate (benchmarks/NOTES.md, twelfth session).
    lr_warmup_steps: int = 0
    lr_decay_steps: int = 0
    seed: int = 0
    checkpoint_every: int = 500
    val_fraction: float = 0.1
    val_every: int = 100
    val_batches: int = 4
    log_every: int = 10
    # Where an in-process run trains (slicesr train-vae / train-sr; Ray workers take cluster.use_gpu):
    # auto = a CUDA device when torch sees one, else the CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def validate(self) -> None:
        _require(self.max_steps >= 1, f"train.max_steps must be >= 1, got {self.max_steps}")
        _require(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        _require(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _require(self.lr_warmup_steps >= 0 and self.lr_decay_steps >= 0,
                 f"train.lr_warmup_steps and train.lr_decay_steps must be >= 0, got {self.lr_warmup_steps} and "
                 f"{self.lr_decay_steps}")
        _require(self.checkpoint_every >= 1, f"train.checkpoint_every must be >= 1, got {self.checkpoint_every}")
        _require(0 <= self.val_fraction < 1, f"train.val_fraction must be in [0, 1), got {self.val_fraction}")
        _require(self.val_every >= 1 and self.log_every >= 1 and self.val_batches >= 1,
                 "train.val_every, train.val_batches and train.log_every must be >= 1")


@dataclass
class ClusterConfig:
    """How `python -m cluster.train` runs: Ray address, workers, DDP or DeepSpeed, retries.

    train.batch_size is per worker: a step of N workers sees N * batch_size samples.
    """

    num_workers: int = 1
    use_gpu: bool = False
    strategy: Literal["ddp", "deepspeed"] = "ddp"
    address: str | None = None  # Ray cluster ("ray://...", "host:port", "auto"); None: RAY_ADDRESS or a local instance
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # used when use_gpu
    deepspeed_config: str = "configs/deepspeed/zero1.json"  # ZeRO stage 0, 1 or 2 (relative to the repository)
    bf16: bool = False  # DeepSpeed bf16 mixed precision; GPU only
    max_failures: int = 0  # Ray Train restarts the workers from the latest checkpoint this many times
    checkpoints_to_keep: int = 2

    def validate(self) -> None:
        _require(self.num_workers >= 1, f"cluster.num_workers must be >= 1, got {self.num_workers}")
        _require(self.cpus_per_worker > 0, f"cluster.cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        _require(self.gpus_per_worker > 0, f"cluster.gpus_per_worker must be > 0, got {self.gpus_per_worker}")
        _require(self.max_failures >= -1, f"cluster.max_failures must be >= -1 (-1: no limit), got {self.max_failures}")
        _require(self.checkpoints_to_keep >= 1, f"cluster.checkpoints_to_keep must be >= 1, got {self.checkpoints_to_keep}")
        _require(not self.bf16 or (self.strategy == "deepspeed" and self.use_gpu),
                 "cluster.bf16 needs cluster.strategy=deepspeed and cluster.use_gpu=true (bf16 training is a GPU path)")
        _require(not self.use_gpu or self.num_workers == 1 or self.gpus_per_worker >= 1,
                 f"cluster.gpus_per_worker {self.gpus_per_worker} would put several workers on one GPU, which NCCL "
                 "refuses: give each worker a whole GPU (1 or more)")


@dataclass
class RunConfig:
    name: str = "slicesr"
    storage_path: str = "runs"  # checkpoints and run outputs (local folder or s3://)

    def validate(self) -> None:
        _require(bool(self.name) and "/" not in self.name, f"run.name must be a non-empty name without '/', got {self.name!r}")
        _require(bool(self.storage_path), "run.storage_path must not be empty")


@dataclass
class TrackingConfig:
    """MLflow: where runs go and which registered model a training run becomes a version of."""

    uri: str = "sqlite:///mlflow.db"  # any MLflow tracking URI (http://..., postgresql://..., sqlite:///...)
    experiment: str = "slicesr"
    registered_model: str | None = None  # None: slicesr-vae, slicesr-sr or slicesr-sr-supervised by stage
    register: bool = True
    image_every: int = 0  # PNG previews every N steps (0: at the end only)

    def validate(self) -> None:
        _require(bool(self.experiment), "tracking.experiment must not be empty")
        _require(bool(self.uri), "tracking.uri must not be empty")
        _require(self.image_every >= 0, f"tracking.image_every must be >= 0, got {self.image_every}")


@dataclass
class Config:
    stage: Literal["vae", "sr"] = "vae"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    sr: SrConfig = field(default_factory=SrConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    run: RunConfig = field(default_factory=RunConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def resolve_defaults(self) -> None:
        if self.model.name is None:
            self.model.name = "vae_gan" if self.stage == "vae" else "deepresolve"

    def validate(self) -> None:
        self.resolve_defaults()
        for section in dataclasses.fields(self):
            value = getattr(self, section.name)
            if dataclasses.is_dataclass(value):
                value.validate()
        generators = ("deepresolve", "dcsrn", "throughplane2d")
        if self.stage == "vae":
            _require(self.model.name == "vae_gan", f"stage vae trains model.name vae_gan, got {self.model.name}")
        else:
            _require(self.model.name in generators,
                     f"stage sr trains a generator: model.name must be one of {', '.join(generators)}, got {self.model.name}")
        if self.model.subpixel:
            _require(self.model.name == "throughplane2d",
                     f"model.subpixel is for the throughplane2d generator, got model.name {self.model.name}")
            _require(not self.sr.ratio_range and self.sr.slice_profile == "point",
                     "model.subpixel needs one integer ratio (sr.k, no sr.ratio_range) and the point profile: "
                     "it reads the acquired lines at 0, K, 2K, ...")
        # the supervised upper bound must never become a version (let alone the champion) of the proposed method
        _require(not (self.stage == "sr" and self.sr.supervision == "real"
                      and self.tracking.registered_model in ("slicesr-sr", "slicesr-vae")),
                 f"tracking.registered_model {self.tracking.registered_model}: a model trained on real HR "
                 "(sr.supervision=real) registers as slicesr-sr-supervised or a name of its own")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """Check/convert a YAML value against a field annotation; ValueError naming the key otherwise."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping, got {value!r}")
        return _build(annotation, value, where)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ValueError(f"{where} must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {value!r}")
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        items = [_convert(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type, values: dict[str, Any], where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(
            f"unknown key {prefix}{unknown[0]!s} (known keys{' of ' + where if where else ''}: {', '.join(sorted(known))})"
        )
    kwargs = {}
    for name, value in values.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _convert(value, hints[name], key)
    return cls(**kwargs)  # missing keys keep their defaults


def build_dataclass(cls: type, values: dict[str, Any], where: str = "") -> Any:
    """Any config dataclass from a mapping, with the same checks as Config (unknown keys, types)."""
    return _build(cls, values, where)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_override(tree: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Apply one `a.b=value` assignment (YAML scalar value) to a nested dict."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set expects KEY=VALUE (e.g. train.lr=1e-4), got {assignment!r}")
    parts = key.strip().split(".")
    update: dict[str, Any] = {}
    target = update
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = parse_scalar(text)
    return _merge(tree, update)


def config_from_dict(values: dict[str, Any], where: str = "config") -> Config:
    try:
        config = _build(Config, values)
        config.validate()
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return config


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- overrides, validated. ValueError names the file and the key."""
    tree: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read config {path}: {exc.strerror or exc}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path} must hold a mapping of sections, got {type(loaded).__name__}")
        tree = loaded
    for assignment in overrides or []:
        tree = apply_override(tree, assignment)
    return config_from_dict(tree, where)


def config_to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_config(config: Config) -> str:
    """The resolved config as YAML (saved with every run)."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
