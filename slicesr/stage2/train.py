"""Stage II training (eq. 12): L1 between G(upsampled T(X')) and X' on 3D patches, in-process.

X' are the synthetic HR volumes of stage I, or real HR volumes for the supervised upper bound
("DeepResolve only"), which is labelled as such in its metadata and everywhere it is reported.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn

from slicesr.config import Config
from slicesr.modeldir import load_model_dir
from slicesr.models.generators import GeneratorSize, build_generator, display_name
from slicesr.stage2.data import Degradation, PatchSampler
from slicesr.stage2.inplane import InplanePairSampler
from slicesr.store import SliceStore
from slicesr.training import Checkpointer, Engine, Reporter, TrainingLoop, resolve_device

log = logging.getLogger(__name__)
# generators that train on 2D planes when given in-plane pairs (their forward takes (N, 1, slices, width))
PLANE_GENERATORS = ("throughplane2d",)


def generator_size(config: Config) -> GeneratorSize:
    m = config.model
    return GeneratorSize(name=m.name, num_layers=m.num_layers, num_filters=m.num_filters,
                         dense_units=m.dense_units, growth_rate=m.growth_rate,
                         subpixel_k=config.sr.k if m.subpixel else 0)


def method_label(name: str, supervision: str, subpixel: bool = False) -> str:
    """The paper's names ('Proposed with DeepResolve', the upper bound 'DeepResolve only') and slicesr's
    ('DeepResolve, in-plane pairs', 'Proposed with DeepResolve + in-plane pairs'; 'through-plane 2D
    (sub-pixel), ...' for `model.subpixel`)."""
    generator = display_name(name) + (" (sub-pixel)" if subpixel else "")
    return {"real": f"{generator} only", "inplane": f"{generator}, in-plane pairs",
            "both": f"Proposed with {generator} + in-plane pairs"}.get(supervision, f"Proposed with {generator}")


def generator_engine(model: nn.Module, lr: float, device: torch.device | None = None) -> Engine:
    return Engine(model, {"generator": model}, lr, device=device)


def check_store_matches(store: SliceStore, ids: list[str], supervision: str, k: int) -> None:
    """Refuse training data that would mislabel the method: synthetic vs real (HR or LR) scans, and K."""
    for scan_id in ids:
        values = store.record(scan_id).values
        synthesis = values.get("synthesis")
        if supervision in ("synthetic", "both") and synthesis is None:
            raise ValueError(f"data.store {store.url}: scan {scan_id} is not a synthetic HR volume (not written by "
                             "`slicesr synthesize`); for the supervised upper bound on real HR set sr.supervision=real, "
                             "for in-plane pairs from LR scans sr.supervision=inplane")
        if supervision in ("real", "inplane") and synthesis is not None:
            raise ValueError(f"data.store {store.url} holds synthetic HR volumes but sr.supervision is {supervision}")
        if synthesis is not None and int(synthesis["k"]) != k:
            raise ValueError(f"data.store {store.url} was synthesised with K={synthesis['k']}, but sr.k is {k}")


def thickness_from_sidecars(store: SliceStore, scan_ids: list[str]) -> float:
    """The slice thickness (mm) the scans' BIDS sidecars gave at conversion (`slice_thickness_mm` of their
    records); every scan must have one, and all must agree within 2%."""
    records = store.records(scan_ids)
    values = {scan_id: record.values.get("slice_thickness_mm") for scan_id, record in records.items()}
    missing = sorted(scan_id for scan_id, value in values.items() if value is None)
    if missing or not values:
        raise ValueError(f"sr.slice_thickness is 0 (take it from the scans' BIDS sidecars), but the scans "
                         f"{', '.join(missing[:5]) or '(none)'} of {store.url} have no SliceThickness sidecar: "
                         "set sr.slice_thickness (mm)")
    low, high = min(values.values()), max(values.values())
    if high - low > 0.02 * high:
        raise ValueError(f"the scans of {store.url} have slice thicknesses from {low:g} to {high:g} mm (sidecars): "
                         "train one model per thickness, or set sr.slice_thickness")
    return float(np.median(list(values.values())))


class Stage2Trainer(TrainingLoop):
    val_metric = "val_l1"
    # Untrained, DeepResolve and the through-plane 2D generator are their interpolated input (zero last
    # layer): best/ then never holds a model that validates worse than interpolation.
    validate_untrained = True

    def __init__(self, config: Config, reporter: Reporter | None = None,
                 engine_factory: Callable[[nn.Module, float], Engine] | None = None,
                 shard: tuple[int, int] = (0, 1), checkpointer: Checkpointer | None = None):
        super().__init__(config, reporter, shard, checkpointer)
        torch.manual_seed(config.train.seed)  # initial weights
        # in-process: the generator on train.device; a distributed adapter passes its own engine
        engine_factory = engine_factory or functools.partial(generator_engine, device=resolve_device(config.train.device))
        generator = build_generator(generator_size(config))
        if config.sr.init_from:
            generator.load_state_dict(initial_weights(config.sr.init_from, generator_size(config)))
            log.info("generator initialised from %s", config.sr.init_from)
        self.engine = engine_factory(generator, config.train.lr)
        self.model = self.engine.model
        ids = self.open_store_and_split()
        sr = config.sr
        check_store_matches(self.store, ids, sr.supervision, sr.k)
        # Pair sources: `sampler` (volumes of data.store, degraded along the slice axis) and `inplane` (the
        # LR scans' own in-plane axes); `both` draws from each, a fraction sr.inplane_fraction of steps in-plane.
        self.sampler = self.val_sampler = self.inplane = self.inplane_val = None
        self.slice_thickness, self.thickness_source = sr.slice_thickness, "sr.slice_thickness"
        if sr.slice_profile != "point" and not sr.slice_thickness:
            self.slice_thickness = thickness_from_sidecars(self.store, self.train_ids + self.val_ids)
            self.thickness_source = "BIDS sidecars (SliceThickness)"
            log.info("slice thickness %g mm from the scans' BIDS sidecars", self.slice_thickness)
        self.degradation = Degradation(sr.k, tuple(sr.ratio_range) or None, sr.slice_profile, self.slice_thickness,
                                       sr.ratio_integer_share)
        self.lr_store_url = ""
        if sr.supervision != "inplane":
            aligned = sr.supervision in ("synthetic", "both")
            self.sampler = PatchSampler(self.store, self.shard_ids, tuple(sr.patch_size), sr.k, aligned,
                                        sr.min_foreground, self.degradation, self.config.data.cache_mb)
            self.val_sampler = (PatchSampler(self.store, self.val_sample_ids, tuple(sr.patch_size), sr.k, aligned,
                                             sr.min_foreground, self.degradation) if self.val_sample_ids else None)
        if sr.supervision in ("inplane", "both"):
            lr_store, train_lr_ids, val_lr_ids = self.lr_scans()
            self.lr_store_url = lr_store.url
            self.inplane = self.inplane_sampler(lr_store, train_lr_ids, self.config.data.cache_mb)
            self.inplane_val = self.inplane_sampler(lr_store, val_lr_ids) if val_lr_ids else None
        self.data_rng = torch.Generator().manual_seed(self.seed_for(0))
        self.generators = {"data": self.data_rng}
        self.holdout_scans: dict[str, np.ndarray] | None = None  # read at the first hold-out validation
        if sr.validation == "lr_holdout":
            self.val_metric = "val_holdout_l1"

    def may_become_best(self) -> bool:
        # Started from another model (sr.init_from), step 0 is that model, trained for another task (ratio
        # range, profile, scans) that the validation here may not tell apart from this one (a ratio-4 model
        # already scores well at ratio 4 of a range): best/ comes from this run's own steps.
        return self.step > 0 or not self.config.sr.init_from

    @staticmethod
    def min_slices(config: Config) -> int:
        # in-plane pairs take any LR scan (a shorter one is zero-padded along its slice axis)
        return 1 if config.sr.supervision == "inplane" else config.sr.patch_size[0]

    def inplane_sampler(self, store: SliceStore, scan_ids: list[str], cache_mb: float = 0.0) -> InplanePairSampler:
        sr = self.config.sr
        return InplanePairSampler(store, scan_ids, tuple(sr.patch_size), sr.k, sr.min_foreground,
                                  planes=self.config.model.name in PLANE_GENERATORS, degradation=self.degradation,
                                  cache_mb=cache_mb)

    def lr_scans(self) -> tuple[SliceStore, list[str], list[str]]:
        """The LR store of the in-plane pairs and the LR scan ids of this shard's training scans and of the
        validation scans: data.store itself (inplane), or the LR scans the synthetic volumes were made from
        (both; data.lr_store, else the store their records name)."""
        if self.config.sr.supervision == "inplane":
            return self.store, self.shard_ids, self.val_sample_ids
        data = self.config.data
        records = self.store.records(self.shard_ids + self.val_sample_ids)
        urls = {records[s].values.get("lr_store") for s in records}
        url = data.lr_store or (urls.pop() if len(urls) == 1 else "")
        if not url:
            raise ValueError(f"data.store {self.store.url}: its synthetic volumes name {len(urls)} LR stores; set "
                             "data.lr_store to the slice store of LR scans for the in-plane pairs")
        lr_store = SliceStore.open(url, data.storage_options)
        available = set(lr_store.completed_ids())

        def lr_ids(ids: list[str]) -> list[str]:
            mapped = [records[s].values.get("lr_scan_id", s) for s in ids]
            missing = sorted(set(mapped) - available)
            if missing:
                raise ValueError(f"data.lr_store {url} lacks the LR scans {', '.join(missing[:5])} of data.store "
                                 f"{self.store.url}")
            return mapped

        return lr_store, lr_ids(self.shard_ids), lr_ids(self.val_sample_ids)

    def metadata(self) -> dict[str, Any]:
        sr = self.config.sr
        return {"stage": "sr", "k": sr.k, "step": self.step, "generator": self.config.model.name,
                "supervision": sr.supervision, "method": method_label(self.config.model.name, sr.supervision,
                                                                      self.config.model.subpixel),
                "normalisation": "slicesr.intensity.robust_intensity_params (per scan)",
                "model_size": asdict(generator_size(self.config)), "training_store": self.store.url,
                "train_scans": self.train_ids, "val_scans": self.val_ids, f"best_{self.val_metric}": self.best_val,
                **({"ratio_range": [float(r) for r in sr.ratio_range]} if sr.ratio_range else {}),
                **({"ratio_integer_share": sr.ratio_integer_share} if sr.ratio_integer_share else {}),
                "slice_profile": sr.slice_profile, "validation": sr.validation,
                **({"holdout_ratios": sr.holdout_ratios()} if sr.validation == "lr_holdout" else {}),
                **({"init_from": sr.init_from} if sr.init_from else {}),
                **({"slice_thickness_mm": self.slice_thickness, "slice_thickness_source": self.thickness_source}
                   if sr.slice_profile != "point" else {}),
                **({"inplane": {"lr_store": self.lr_store_url, "fraction": 1.0 if sr.supervision == "inplane"
                                else sr.inplane_fraction}} if self.inplane is not None else {})}

    def identity(self) -> dict[str, Any]:
        c = self.config
        sr = {"k": c.sr.k, "patch_size": c.sr.patch_size, "supervision": c.sr.supervision,
              "min_foreground": c.sr.min_foreground}  # not the inference settings
        for key, default in (("loss_slices", "all"), ("validation", "patches")):
            if getattr(c.sr, key) != default:  # older checkpoints (the defaults) resume unchanged
                sr[key] = getattr(c.sr, key)
        if c.sr.supervision == "both":
            sr["inplane_fraction"], sr["lr_store"] = c.sr.inplane_fraction, self.lr_store_url
        if c.sr.ratio_range:
            sr["ratio_range"] = list(c.sr.ratio_range)
        if c.sr.ratio_integer_share:  # older checkpoints (the uniform draw) resume unchanged
            sr["ratio_integer_share"] = c.sr.ratio_integer_share
        if c.sr.slice_profile != "point":
            sr["slice_profile"], sr["slice_thickness"] = c.sr.slice_profile, c.sr.slice_thickness
        if c.sr.validation != "patches":
            sr["holdout_crop"] = c.sr.holdout_crop
        if c.sr.validation == "lr_holdout" and c.sr.ratio_range:
            # the ratios that chose best/: a run of a range model validated otherwise does not resume
            sr["holdout_ratios"] = c.sr.holdout_ratios()
        if c.sr.init_from:
            sr["init_from"] = c.sr.init_from
        return {"data.store": c.data.store, "model": c.model.identity(), "sr": sr,
                "train.seed": c.train.seed, "train.batch_size": c.train.batch_size, "train.lr": c.train.lr,
                "train.val_fraction": c.train.val_fraction, "split": {"train": self.train_ids, "val": self.val_ids}}

    def lr_scan(self, scan_id: str) -> np.ndarray:
        """The LR version of a training-store scan: the LR scan a synthetic volume was synthesised from
        (its record names the store and scan; data.lr_store, when set, is that store, as for the in-plane
        pairs of `both`), or a real HR volume's every K-th slice."""
        if self.config.sr.supervision == "inplane":  # data.store holds the LR scans themselves
            return np.asarray(self.store.slices(scan_id)[...])
        values = self.store.record(scan_id).values
        if "lr_store" in values:
            url = self.config.data.lr_store or values["lr_store"]
            lr_store = SliceStore.open(url, self.config.data.storage_options)
            return np.asarray(lr_store.slices(values.get("lr_scan_id", scan_id))[...])
        return np.asarray(self.store.slices(scan_id)[:: self.config.sr.k])

    def validate_holdout(self) -> float:
        """Mean L1 on the dropped slices of the LR hold-out (slicesr.stage2.holdout) over the validation
        scans' central crops and the hold-out's ratios (`SrConfig.holdout_ratios`: a range model at every
        integer ratio of its range); their mean PSNR is reported as val_holdout_psnr, and with several
        ratios each ratio's as val_holdout_psnr_k<ratio>."""
        from slicesr.inference import generator_upsample
        from slicesr.stage2.holdout import HOLDOUT_MIN_SLICES, center_crop, holdout_score

        sr = self.config.sr
        if self.holdout_scans is None:
            scans = {scan_id: center_crop(self.lr_scan(scan_id), tuple(sr.holdout_crop)) for scan_id in self.val_ids}
            self.holdout_scans = {s: lr for s, lr in scans.items() if lr.shape[0] >= HOLDOUT_MIN_SLICES}
        if not self.holdout_scans:
            return float("nan")
        self.model.eval()
        ratios = sr.holdout_ratios()
        results = {k: [holdout_score(lambda kept, k: generator_upsample(self.model, kept, k, tuple(sr.window),
                                                                        sr.window_overlap), lr, k)
                       for lr in self.holdout_scans.values()] for k in ratios}
        self.model.train()
        psnr = {k: float(np.mean([r["psnr_missing"] for r in rows])) for k, rows in results.items()}
        report = {"val_holdout_psnr": float(np.mean(list(psnr.values())))}
        if len(ratios) > 1:
            report.update({f"val_holdout_psnr_k{k}": value for k, value in psnr.items()})
        self.reporter.report(self.step, report)
        return float(np.mean([r["l1_missing"] for rows in results.values() for r in rows]))

    def validate(self) -> float:
        if self.config.sr.validation == "lr_holdout":
            return self.validate_holdout()
        sampler = self.val_sampler or self.inplane_val  # both: the synthetic patches
        if sampler is None:
            return float("nan")
        rng = torch.Generator().manual_seed(self.config.train.seed + 2)  # the same patches every time
        total = 0.0
        self.model.eval()
        with torch.no_grad():
            for _ in range(self.config.train.val_batches):
                inputs, target = sampler.sample(self.config.train.batch_size, rng)
                output = self.model(self.model_input(inputs)).float()
                total += float(self.loss(output, target.to(output.device)))
        self.model.train()
        return total / self.config.train.val_batches

    def preview_images(self) -> dict[str, np.ndarray]:
        """'patches': for 4 patches, a missing slice of the interpolated input, the output, the target."""
        sampler = self.val_sampler or self.sampler or self.inplane_val or self.inplane
        inputs, target = sampler.sample(4, torch.Generator().manual_seed(self.config.train.seed + 3))
        inputs, target = inputs[:4], target[:4]
        self.model.eval()
        with torch.no_grad():
            output = self.model(self.model_input(inputs)).float().cpu()
        self.model.train()
        missing = min(self.config.sr.k // 2, inputs.shape[2] - 1)  # halfway between two acquired slices
        # volumes: that missing slice; planes (in-plane pairs): the whole plane
        view = (lambda t, i: t[i, 0, missing]) if inputs.dim() == 5 else (lambda t, i: t[i, 0])
        rows = [np.concatenate([view(t, i).numpy() for t in (inputs, output, target)], axis=1) for i in range(4)]
        return {"patches": np.concatenate(rows, axis=0)}

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Eq. 12's L1 over the patch, or over its missing slices only (`sr.loss_slices: missing`)."""
        if self.config.sr.loss_slices == "missing":
            missing = torch.arange(output.shape[2], device=output.device) % self.config.sr.k != 0
            output, target = output[:, :, missing], target[:, :, missing]
        return torch.nn.functional.l1_loss(output, target)

    def training_source(self):
        """The sampler of this step's pairs; `both` draws in-plane with probability sr.inplane_fraction."""
        if self.inplane is None:
            return self.sampler
        if self.sampler is None:
            return self.inplane
        draw = float(torch.rand((), generator=self.data_rng))
        return self.inplane if draw < self.config.sr.inplane_fraction else self.sampler

    def train_step(self) -> dict[str, float]:
        source = self.training_source()
        inputs, target = (t.to(self.engine.device) for t in source.sample(self.config.train.batch_size, self.data_rng))
        loss = self.loss(self.engine.forward("generator", inputs), target)
        self.engine.zero_grad("generator")
        self.engine.backward("generator", loss)
        self.engine.step("generator")
        self.step += 1
        # the interpolated input's own error: how far the generator has moved past linear
        return {"l1": float(loss.detach()), "l1_linear": float(self.loss(inputs, target))}


def initial_weights(path: str | os.PathLike, size: GeneratorSize) -> dict[str, torch.Tensor]:
    """The weights of the stage II model directory `path` (sr.init_from), refused unless its generator
    has `size` (the model.* settings of the run that starts from it)."""
    try:
        model, config, _ = load_generator(path)
    except (ValueError, OSError) as exc:  # no model directory, or not a stage II one
        raise ValueError(f"sr.init_from: {exc}") from exc
    if generator_size(config) != size:
        raise ValueError(f"sr.init_from {path}: its generator is {asdict(generator_size(config))}, this run's is "
                         f"{asdict(size)}: set model.* to match")
    return model.state_dict()


def load_generator(path: str | os.PathLike) -> tuple[nn.Module, Config, dict[str, Any]]:
    """Rebuild a trained stage II generator from a model directory (safetensors; no unpickling)."""
    return load_model_dir(path, "sr", lambda config: build_generator(generator_size(config)))
