"""Stage I training loop (eqs. 10-11), in-process; a distributed adapter wraps the Engine, not the loop.

Gradient routing: the encoder E gets alpha*L_center + gamma*L_prior + eta*L_comp (beta = 0 for E);
the decoder D gets alpha*L_center + beta*L_adv; the critic H maximises L_adv on a detached x_hat.
Each network's loss is built so that its graph reaches only that network's parameters (the others
are evaluated `frozen`, with detached parameters, or on detached inputs). One backward per network
then needs no selective `inputs=`: DDP and DeepSpeed engines (one per optimizer) apply unchanged.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from slicesr.config import Config
from slicesr.interpolation import lerp
from slicesr.modeldir import load_model_dir
from slicesr.models.vae_gan import VaeGan, VaeGanSize
from slicesr.stage1.data import TRIPLET_SLICES, TripletSampler
from slicesr.stage1.losses import (
    COMPACTNESS_LOGVAR_FLOOR,
    LossWeights,
    adversarial_loss,
    center_loss,
    compactness_loss,
    kl_to_standard_normal,
    weights_at,
)
from slicesr.training import Checkpointer, LogReporter, Reporter, TrainingLoop, resolve_device
from slicesr.training import Engine as BaseEngine

log = logging.getLogger(__name__)
NETWORKS = ("encoder", "decoder", "critic")


def size_from_config(config: Config) -> VaeGanSize:
    m = config.model
    return VaeGanSize(image_size=m.image_size, channels=m.channels, max_channels=m.max_channels,
                      num_blocks=m.num_blocks, latent_dim=m.latent_dim, disc_channels=m.disc_channels,
                      spectral_norm=m.spectral_norm)


class Engine(BaseEngine):
    """One Adam per network of the VAE-GAN: encoder, decoder, critic."""

    def __init__(self, model: VaeGan, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 device: torch.device | None = None):
        super().__init__(model, {name: getattr(model, name) for name in NETWORKS}, lr, betas, device)


@dataclass
class Stage1Losses:
    """What one forward pass of the three networks gives: the loss terms, the images they compare, and
    `logs()` for reporting. `center_encoder` is L_center through a frozen D (its graph reaches E only);
    `center` and `adv` are computed on D(z.detach()) with a frozen H (they reach D only); both centres
    have one value. `adv` is None when the critic is not used (beta = 0)."""

    center: torch.Tensor
    center_encoder: torch.Tensor
    prior: torch.Tensor
    comp: torch.Tensor
    x: torch.Tensor  # the centre slices x_n, (B, 1, S, S)
    x_hat: torch.Tensor  # their reconstructions D(z)
    adv: torch.Tensor | None = None
    logvar_min: float = 0.0  # the lowest log-variance in the batch (L_comp floors it: see losses)

    def logs(self) -> dict[str, float]:
        terms = {"center": self.center, "prior": self.prior, "comp": self.comp, "adv": self.adv}
        logs = {name: float(value.detach()) for name, value in terms.items() if value is not None}
        logs["logvar_min"] = self.logvar_min
        return logs


def compute_losses(engine: Engine, batch: torch.Tensor, noise: torch.Generator, with_critic: bool) -> Stage1Losses:
    """All loss terms for a triplet batch (B, 3, S, S); the critic term only when `with_critic`."""
    b = batch.shape[0]
    slices = torch.cat([batch[:, 0], batch[:, 1], batch[:, 2]]).unsqueeze(1)
    mu, logvar = engine.forward("encoder", slices)
    prev, center, nxt = ((mu[i * b:(i + 1) * b], logvar[i * b:(i + 1) * b]) for i in range(3))
    x = batch[:, 1:2]
    z = VaeGan.sample(*center, generator=noise)
    x_hat = engine.forward("decoder", z.detach())
    return Stage1Losses(
        center=center_loss(x, x_hat).mean(),
        center_encoder=center_loss(x, engine.frozen("decoder", z)).mean(),
        prior=kl_to_standard_normal(*center).mean(),
        comp=compactness_loss(center, prev, nxt).mean(),
        x=x, x_hat=x_hat,
        adv=adversarial_loss(engine.frozen("critic", x), engine.frozen("critic", x_hat)) if with_critic else None,
        logvar_min=float(logvar.detach().min()),
    )


def backward_losses(engine: Engine, losses: Stage1Losses, w: LossWeights) -> None:
    """Eq. 10 into E, eq. 11 into D (and H below); zeroes the three networks' gradients first."""
    for name in NETWORKS:
        engine.zero_grad(name)
    encoder_loss = w.alpha * losses.center_encoder + w.gamma * losses.prior + w.eta * losses.comp
    decoder_loss = w.alpha * losses.center
    if losses.adv is not None:
        decoder_loss = decoder_loss + w.beta * losses.adv
    engine.backward("encoder", encoder_loss)
    engine.backward("decoder", decoder_loss)


def critic_backward(engine: Engine, losses: Stage1Losses, w: LossWeights) -> torch.Tensor:
    """H maximises beta * L_adv with x_hat detached (no gradient reaches D or E); one forward of H."""
    x = losses.x
    engine.zero_grad("critic")
    scores = engine.forward("critic", torch.cat([x, losses.x_hat.detach()]))
    critic_loss = -w.beta * adversarial_loss(scores[: x.shape[0]], scores[x.shape[0]:])
    engine.backward("critic", critic_loss)
    return critic_loss


def effective_phase_steps(phase_steps: tuple[int, int], max_steps: int) -> tuple[int, int]:
    """Phase 1 and 2 lengths for a run capped at `max_steps`: unchanged when the run is longer than
    both; otherwise both shrink in proportion to fill the first two thirds, so all three phases run."""
    total = sum(phase_steps)
    if max_steps > total:
        return tuple(phase_steps)
    budget = (2 * max_steps) // 3
    first = round(phase_steps[0] * budget / total) if total else 0
    return first, (budget - first if total else 0)


class Stage1Trainer(TrainingLoop):
    """Sample triplets, losses, routed backward, steps; validation and checkpoints from TrainingLoop."""

    val_metric = "val_center"

    def __init__(self, config: Config, reporter: Reporter | None = None,
                 engine_factory: Callable[[VaeGan, float], Engine] | None = None,
                 shard: tuple[int, int] = (0, 1), checkpointer: Checkpointer | None = None):
        super().__init__(config, reporter, shard, checkpointer)
        torch.manual_seed(config.train.seed)  # initial weights
        # The engine may wrap the networks (DDP, DeepSpeed); the loop only touches them through it.
        # In-process, the engine puts them on train.device.
        engine_factory = engine_factory or functools.partial(Engine, device=resolve_device(config.train.device))
        self.engine = engine_factory(VaeGan(size_from_config(config)), config.train.lr)
        self.model = self.engine.model
        self.open_store_and_split()
        self.sampler = TripletSampler(self.store, self.shard_ids, config.model.image_size, config.data.cache_mb)
        self.val_sampler = (TripletSampler(self.store, self.val_sample_ids, config.model.image_size)
                            if self.val_sample_ids else None)
        self.data_rng = torch.Generator().manual_seed(self.seed_for(0))
        self.noise_rng = torch.Generator().manual_seed(self.seed_for(1))
        self.generators = {"data": self.data_rng, "noise": self.noise_rng}
        s = config.schedule
        self.phases = tuple(LossWeights(*w) for w in (s.warmup, s.adversarial, s.full))
        self.phase_steps = effective_phase_steps(tuple(s.phase_steps), config.train.max_steps)
        full_from = sum(self.phase_steps)
        if self.phase_steps != tuple(s.phase_steps):
            log.warning("train.max_steps %d is not longer than schedule.phase_steps %s: phases shrunk to %s",
                        config.train.max_steps, list(s.phase_steps), list(self.phase_steps))
        log.info("stage I schedule: warm-up steps 0-%d, adversarial %d-%d, all losses %d-%d (%.0f%% of the run); "
                 "best/ only from the all-losses phase", self.phase_steps[0], self.phase_steps[0], full_from,
                 full_from, config.train.max_steps, 100 * (config.train.max_steps - full_from) / config.train.max_steps)

    @staticmethod
    def min_slices(config: Config) -> int:
        return TRIPLET_SLICES

    def may_become_best(self) -> bool:
        """Only weights trained in the last phase (all losses, L_comp included) may become `best/`: a
        warm-up checkpoint can reconstruct better without the latent structure synthesis relies on."""
        return self.step > sum(self.phase_steps)

    def metadata(self) -> dict[str, Any]:
        return {"stage": "vae", "k": self.config.synthesis.k, "step": self.step,
                "normalisation": "slicesr.intensity.robust_intensity_params (per scan, stored in the slice store)",
                "model_size": asdict(size_from_config(self.config)),
                "train_scans": self.train_ids, "val_scans": self.val_ids, "best_val_center": self.best_val}

    def identity(self) -> dict[str, Any]:
        c = self.config
        return {"data.store": c.data.store, "model": c.model.identity(), "schedule": asdict(c.schedule),
                "effective_phase_steps": list(self.phase_steps),
                "train.seed": c.train.seed, "train.batch_size": c.train.batch_size, "train.lr": c.train.lr,
                "train.val_fraction": c.train.val_fraction, "split": {"train": self.train_ids, "val": self.val_ids}}

    def validate(self) -> float:
        if self.val_sampler is None:
            return float("nan")
        rng = torch.Generator().manual_seed(self.config.train.seed + 2)  # same triplets every time
        total = 0.0
        self.model.eval()  # z = mu, and spectral norm's power iteration left as it is
        with torch.no_grad():
            for _ in range(self.config.train.val_batches):
                batch = self.model_input(self.val_sampler.sample(self.config.train.batch_size, rng))
                mu, _ = self.model.encoder(batch[:, 1:2])
                total += float(center_loss(batch[:, 1:2].float(), self.model.decoder(mu).float()).mean())
        self.model.train()
        return total / self.config.train.val_batches

    def preview_images(self) -> dict[str, np.ndarray]:
        """'reconstruction': real slices over their reconstructions; 'interpolation': x_{n-1}, the
        decoded means at xi = 0, 1/4, ..., 1 between x_{n-1} and x_{n+1}, then x_{n+1}."""
        sampler = self.val_sampler or self.sampler
        batch = self.model_input(sampler.sample(4, torch.Generator().manual_seed(self.config.train.seed + 3)))
        self.model.eval()
        with torch.no_grad():
            x = batch[:, 1:2]
            recon = self.model.decoder(self.model.encoder(x)[0])
            mu_prev, _ = self.model.encoder(batch[:1, 0:1])
            mu_next, _ = self.model.encoder(batch[:1, 2:3])
            steps = [self.model.decoder(lerp(mu_prev, mu_next, xi)) for xi in (0.0, 0.25, 0.5, 0.75, 1.0)]
        self.model.train()
        row = lambda tensors: np.concatenate([t.detach().float().cpu().numpy()[0, 0] for t in tensors], axis=1)  # noqa: E731
        return {"reconstruction": np.concatenate([row(x.split(1)), row(recon.split(1))], axis=0),
                "interpolation": row([batch[:1, 0:1], *steps, batch[:1, 2:3]])}

    def train_step(self) -> dict[str, float]:
        phase, w = weights_at(self.step, self.phase_steps, self.phases,
                              self.config.schedule.no_adversarial, self.config.schedule.no_compactness)
        batch = self.sampler.sample(self.config.train.batch_size, self.data_rng).to(self.engine.device)
        metrics = {"phase": float(phase), **training_step(self.engine, batch, self.noise_rng, w)}
        self.step += 1
        return metrics


def training_step(engine: Engine, batch: torch.Tensor, noise: torch.Generator, w: LossWeights) -> dict[str, float]:
    """One step of eqs. 10-11: E and D from their losses, then H (when beta > 0) on the same batch."""
    losses = compute_losses(engine, batch, noise, with_critic=w.beta > 0)
    backward_losses(engine, losses, w)
    engine.step("encoder")
    engine.step("decoder")
    metrics = losses.logs()
    if losses.logvar_min < COMPACTNESS_LOGVAR_FLOOR:
        log.warning("a log-variance of %.1f is below L_comp's floor %.0f: L_comp is bounded there (a spike "
                    "without it)", losses.logvar_min, COMPACTNESS_LOGVAR_FLOOR)
    if losses.adv is not None:
        metrics["critic"] = float(critic_backward(engine, losses, w).detach())
        engine.step("critic")
    return metrics


def load_vae(path: str | os.PathLike) -> tuple[VaeGan, Config, dict[str, Any]]:
    """Rebuild a trained VAE-GAN from a model directory (safetensors; no unpickling)."""
    return load_model_dir(path, "vae", lambda config: VaeGan(size_from_config(config)))


__all__ = ["Engine", "LogReporter", "Reporter", "Stage1Trainer", "load_vae"]
