"""Stage II training (eq. 12): L1 between G(upsampled T(X')) and X' on 3D patches, in-process.

X' are the synthetic HR volumes of stage I, or real HR volumes for the supervised upper bound
("DeepResolve only"), which is labelled as such in its metadata and everywhere it is reported.
"""

from __future__ import annotations

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
from slicesr.stage2.data import PatchSampler
from slicesr.store import SliceStore
from slicesr.training import Checkpointer, Engine, Reporter, TrainingLoop

log = logging.getLogger(__name__)


def generator_size(config: Config) -> GeneratorSize:
    m = config.model
    return GeneratorSize(name=m.name, num_layers=m.num_layers, num_filters=m.num_filters,
                         dense_units=m.dense_units, growth_rate=m.growth_rate)


def method_label(name: str, supervision: str) -> str:
    """The paper's names: 'Proposed with DeepResolve' or the upper bound 'DeepResolve only'."""
    generator = display_name(name)
    return f"{generator} only" if supervision == "real" else f"Proposed with {generator}"


def generator_engine(model: nn.Module, lr: float) -> Engine:
    return Engine(model, {"generator": model}, lr)


def check_store_matches(store: SliceStore, ids: list[str], supervision: str, k: int) -> None:
    """Refuse training data that would mislabel the method: synthetic vs real HR, and K."""
    for scan_id in ids:
        values = store.record(scan_id).values
        synthesis = values.get("synthesis")
        if supervision == "synthetic" and synthesis is None:
            raise ValueError(f"data.store {store.url}: scan {scan_id} is not a synthetic HR volume (not written by "
                             "`slicesr synthesize`); for the supervised upper bound on real HR set sr.supervision=real")
        if supervision == "real" and synthesis is not None:
            raise ValueError(f"data.store {store.url} holds synthetic HR volumes but sr.supervision is real")
        if synthesis is not None and int(synthesis["k"]) != k:
            raise ValueError(f"data.store {store.url} was synthesised with K={synthesis['k']}, but sr.k is {k}")


class Stage2Trainer(TrainingLoop):
    val_metric = "val_l1"
    # Untrained, DeepResolve and the through-plane 2D generator are their interpolated input (zero last
    # layer): best/ then never holds a model that validates worse than interpolation.
    validate_untrained = True

    def __init__(self, config: Config, reporter: Reporter | None = None,
                 engine_factory: Callable[[nn.Module, float], Engine] = generator_engine,
                 shard: tuple[int, int] = (0, 1), checkpointer: Checkpointer | None = None):
        super().__init__(config, reporter, shard, checkpointer)
        torch.manual_seed(config.train.seed)  # initial weights
        self.engine = engine_factory(build_generator(generator_size(config)), config.train.lr)
        self.model = self.engine.model
        ids = self.open_store_and_split()
        sr = config.sr
        check_store_matches(self.store, ids, sr.supervision, sr.k)
        aligned = sr.supervision == "synthetic"
        self.sampler = PatchSampler(self.store, self.shard_ids, tuple(sr.patch_size), sr.k, aligned,
                                    sr.min_foreground)
        self.val_sampler = (PatchSampler(self.store, self.val_sample_ids, tuple(sr.patch_size), sr.k, aligned,
                                         sr.min_foreground) if self.val_sample_ids else None)
        self.data_rng = torch.Generator().manual_seed(self.seed_for(0))
        self.generators = {"data": self.data_rng}
        self.holdout_scans: dict[str, np.ndarray] | None = None  # read at the first hold-out validation
        if sr.validation == "lr_holdout":
            self.val_metric = "val_holdout_l1"

    @staticmethod
    def min_slices(config: Config) -> int:
        return config.sr.patch_size[0]

    def metadata(self) -> dict[str, Any]:
        sr = self.config.sr
        return {"stage": "sr", "k": sr.k, "step": self.step, "generator": self.config.model.name,
                "supervision": sr.supervision, "method": method_label(self.config.model.name, sr.supervision),
                "normalisation": "slicesr.intensity.robust_intensity_params (per scan)",
                "model_size": asdict(generator_size(self.config)), "training_store": self.store.url,
                "train_scans": self.train_ids, "val_scans": self.val_ids, f"best_{self.val_metric}": self.best_val}

    def identity(self) -> dict[str, Any]:
        c = self.config
        sr = {"k": c.sr.k, "patch_size": c.sr.patch_size, "supervision": c.sr.supervision,
              "min_foreground": c.sr.min_foreground}  # not the inference settings
        for key, default in (("loss_slices", "all"), ("validation", "patches")):
            if getattr(c.sr, key) != default:  # older checkpoints (the defaults) resume unchanged
                sr[key] = getattr(c.sr, key)
        if c.sr.validation != "patches":
            sr["holdout_crop"] = c.sr.holdout_crop
        return {"data.store": c.data.store, "model": asdict(c.model), "sr": sr,
                "train.seed": c.train.seed, "train.batch_size": c.train.batch_size, "train.lr": c.train.lr,
                "train.val_fraction": c.train.val_fraction, "split": {"train": self.train_ids, "val": self.val_ids}}

    def lr_scan(self, scan_id: str) -> np.ndarray:
        """The LR version of a training-store scan: the LR scan a synthetic volume was synthesised from
        (its record names the store and scan), or a real HR volume's every K-th slice."""
        values = self.store.record(scan_id).values
        if "lr_store" in values:
            lr_store = SliceStore.open(values["lr_store"], self.config.data.storage_options)
            return np.asarray(lr_store.slices(values.get("lr_scan_id", scan_id))[...])
        return np.asarray(self.store.slices(scan_id)[:: self.config.sr.k])

    def validate_holdout(self) -> float:
        """Mean L1 on the dropped slices of the LR hold-out (slicesr.stage2.holdout) over the validation
        scans' central crops; their mean PSNR is reported as val_holdout_psnr."""
        from slicesr.inference import generator_upsample
        from slicesr.stage2.holdout import HOLDOUT_MIN_SLICES, center_crop, holdout_score

        sr = self.config.sr
        if self.holdout_scans is None:
            scans = {scan_id: center_crop(self.lr_scan(scan_id), tuple(sr.holdout_crop)) for scan_id in self.val_ids}
            self.holdout_scans = {s: lr for s, lr in scans.items() if lr.shape[0] >= HOLDOUT_MIN_SLICES}
        if not self.holdout_scans:
            return float("nan")
        self.model.eval()
        results = [holdout_score(lambda kept, k: generator_upsample(self.model, kept, k, tuple(sr.window),
                                                                    sr.window_overlap), lr, sr.k)
                   for lr in self.holdout_scans.values()]
        self.model.train()
        self.reporter.report(self.step, {"val_holdout_psnr": float(np.mean([r["psnr_missing"] for r in results]))})
        return float(np.mean([r["l1_missing"] for r in results]))

    def validate(self) -> float:
        if self.config.sr.validation == "lr_holdout":
            return self.validate_holdout()
        if self.val_sampler is None:
            return float("nan")
        rng = torch.Generator().manual_seed(self.config.train.seed + 2)  # the same patches every time
        total = 0.0
        self.model.eval()
        with torch.no_grad():
            for _ in range(self.config.train.val_batches):
                inputs, target = self.val_sampler.sample(self.config.train.batch_size, rng)
                output = self.model(self.model_input(inputs)).float()
                total += float(self.loss(output, target.to(output.device)))
        self.model.train()
        return total / self.config.train.val_batches

    def preview_images(self) -> dict[str, np.ndarray]:
        """'patches': for 4 patches, a missing slice of the interpolated input, the output, the target."""
        sampler = self.val_sampler or self.sampler
        inputs, target = sampler.sample(4, torch.Generator().manual_seed(self.config.train.seed + 3))
        self.model.eval()
        with torch.no_grad():
            output = self.model(self.model_input(inputs)).float().cpu()
        self.model.train()
        missing = min(self.config.sr.k // 2, inputs.shape[2] - 1)  # halfway between two acquired slices
        rows = [np.concatenate([t[i, 0, missing].numpy() for t in (inputs, output, target)], axis=1) for i in range(4)]
        return {"patches": np.concatenate(rows, axis=0)}

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Eq. 12's L1 over the patch, or over its missing slices only (`sr.loss_slices: missing`)."""
        if self.config.sr.loss_slices == "missing":
            missing = torch.arange(output.shape[2], device=output.device) % self.config.sr.k != 0
            output, target = output[:, :, missing], target[:, :, missing]
        return torch.nn.functional.l1_loss(output, target)

    def train_step(self) -> dict[str, float]:
        inputs, target = (t.to(self.engine.device) for t in self.sampler.sample(self.config.train.batch_size, self.data_rng))
        loss = self.loss(self.engine.forward("generator", inputs), target)
        self.engine.zero_grad("generator")
        self.engine.backward("generator", loss)
        self.engine.step("generator")
        self.step += 1
        # the interpolated input's own error: how far the generator has moved past linear
        return {"l1": float(loss.detach()), "l1_linear": float(self.loss(inputs, target))}


def load_generator(path: str | os.PathLike) -> tuple[nn.Module, Config, dict[str, Any]]:
    """Rebuild a trained stage II generator from a model directory (safetensors; no unpickling)."""
    return load_model_dir(path, "sr", lambda config: build_generator(generator_size(config)))
