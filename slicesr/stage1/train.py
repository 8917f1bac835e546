"""Stage I training loop (eqs. 10-11), in-process; a distributed adapter wraps the Engine, not the loop.

Gradient routing: the encoder E gets alpha*L_center + gamma*L_prior + eta*L_comp (beta = 0 for E);
the decoder D gets alpha*L_center + beta*L_adv; the critic H maximises L_adv on a detached x_hat.
Each backward names the parameters it may reach, so no loss leaks into another network.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from slicesr.config import Config
from slicesr.modeldir import read_model_dir
from slicesr.models.vae_gan import VaeGan, VaeGanSize
from slicesr.stage1.data import TripletSampler
from slicesr.stage1.losses import (
    LossWeights,
    adversarial_loss,
    center_loss,
    compactness_loss,
    kl_to_standard_normal,
    weights_at,
)
from slicesr.training import Engine as BaseEngine
from slicesr.training import LogReporter, Reporter, TrainingLoop

log = logging.getLogger(__name__)
NETWORKS = ("encoder", "decoder", "critic")


def size_from_config(config: Config) -> VaeGanSize:
    m = config.model
    return VaeGanSize(image_size=m.image_size, channels=m.channels, max_channels=m.max_channels,
                      num_blocks=m.num_blocks, latent_dim=m.latent_dim, disc_channels=m.disc_channels,
                      spectral_norm=m.spectral_norm)


class Engine(BaseEngine):
    """One Adam per network of the VAE-GAN: encoder, decoder, critic."""

    def __init__(self, model: VaeGan, lr: float, betas: tuple[float, float] = (0.9, 0.999)):
        super().__init__(model, {name: getattr(model, name) for name in NETWORKS}, lr, betas)


def compute_losses(model: VaeGan, batch: torch.Tensor, noise: torch.Generator, with_critic: bool) -> dict[str, torch.Tensor]:
    """All loss terms for a triplet batch (B, 3, S, S); the critic terms only when beta > 0."""
    b = batch.shape[0]
    slices = torch.cat([batch[:, 0], batch[:, 1], batch[:, 2]]).unsqueeze(1)
    mu, logvar = model.encoder(slices)
    prev, center, nxt = ((mu[i * b:(i + 1) * b], logvar[i * b:(i + 1) * b]) for i in range(3))
    x = batch[:, 1:2]
    x_hat = model.decoder(model.sample(*center, generator=noise))
    losses = {
        "center": center_loss(x, x_hat).mean(),
        "prior": kl_to_standard_normal(*center).mean(),
        "comp": compactness_loss(center, prev, nxt).mean(),
        "x": x, "x_hat": x_hat,
    }
    if with_critic:
        losses["adv"] = adversarial_loss(model.critic(x), model.critic(x_hat))
    return losses


def backward_losses(engine: Engine, losses: dict[str, torch.Tensor], w: LossWeights) -> None:
    """Eq. 10 into E, eq. 11 into D (and H below); zeroes the three networks' gradients first."""
    for name in NETWORKS:
        engine.zero_grad(name)
    encoder_loss = w.alpha * losses["center"] + w.gamma * losses["prior"] + w.eta * losses["comp"]
    decoder_loss = w.alpha * losses["center"]
    if "adv" in losses:
        decoder_loss = decoder_loss + w.beta * losses["adv"]
    engine.backward("encoder", encoder_loss, retain_graph=True)
    engine.backward("decoder", decoder_loss)


def critic_backward(engine: Engine, losses: dict[str, torch.Tensor], w: LossWeights) -> torch.Tensor:
    """H maximises beta * L_adv with x_hat detached (no gradient reaches D or E)."""
    model = engine.model
    engine.zero_grad("critic")
    critic_loss = -w.beta * adversarial_loss(model.critic(losses["x"]), model.critic(losses["x_hat"].detach()))
    engine.backward("critic", critic_loss)
    return critic_loss


class Stage1Trainer(TrainingLoop):
    """Sample triplets, losses, routed backward, steps; validation and checkpoints from TrainingLoop."""

    val_metric = "val_center"

    def __init__(self, config: Config, reporter: Reporter | None = None,
                 engine_factory: Callable[[VaeGan, float], Engine] = Engine):
        super().__init__(config, reporter)
        torch.manual_seed(config.train.seed)  # initial weights
        # The engine may wrap the networks (DDP, DeepSpeed); the loop only touches them through it.
        self.engine = engine_factory(VaeGan(size_from_config(config)), config.train.lr)
        self.model = self.engine.model
        self.open_store_and_split()
        self.sampler = TripletSampler(self.store, self.train_ids, config.model.image_size)
        self.val_sampler = TripletSampler(self.store, self.val_ids, config.model.image_size) if self.val_ids else None
        self.data_rng = torch.Generator().manual_seed(config.train.seed)
        self.noise_rng = torch.Generator().manual_seed(config.train.seed + 1)
        self.generators = {"data": self.data_rng, "noise": self.noise_rng}
        s = config.schedule
        self.phases = tuple(LossWeights(*w) for w in (s.warmup, s.adversarial, s.full))

    def metadata(self) -> dict[str, Any]:
        return {"stage": "vae", "k": self.config.synthesis.k, "step": self.step,
                "normalisation": "slicesr.intensity.robust_intensity_params (per scan, stored in the slice store)",
                "model_size": asdict(size_from_config(self.config)),
                "train_scans": self.train_ids, "val_scans": self.val_ids, "best_val_center": self.best_val}

    def identity(self) -> dict[str, Any]:
        c = self.config
        return {"data.store": c.data.store, "model": asdict(c.model), "schedule": asdict(c.schedule),
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
                batch = self.val_sampler.sample(self.config.train.batch_size, rng)
                mu, _ = self.model.encoder(batch[:, 1:2])
                total += float(center_loss(batch[:, 1:2], self.model.decoder(mu)).mean())
        self.model.train()
        return total / self.config.train.val_batches

    def train_step(self) -> dict[str, float]:
        phase, w = weights_at(self.step, tuple(self.config.schedule.phase_steps), self.phases,
                              self.config.schedule.no_adversarial, self.config.schedule.no_compactness)
        batch = self.sampler.sample(self.config.train.batch_size, self.data_rng)
        losses = compute_losses(self.model, batch, self.noise_rng, with_critic=w.beta > 0)
        backward_losses(self.engine, losses, w)
        self.engine.step("encoder")
        self.engine.step("decoder")
        metrics = {"phase": float(phase), **{key: float(losses[key].detach()) for key in ("center", "prior", "comp")}}
        if w.beta > 0:
            metrics["adv"] = float(losses["adv"].detach())
            metrics["critic"] = float(critic_backward(self.engine, losses, w).detach())
            self.engine.step("critic")
        self.step += 1
        return metrics


def load_vae(path: str | os.PathLike) -> tuple[VaeGan, Config, dict[str, Any]]:
    """Rebuild a trained VAE-GAN from a model directory (safetensors; no unpickling)."""
    weights, config, metadata = read_model_dir(path)
    if metadata.get("stage") != "vae":
        raise ValueError(f"{path} holds a stage {metadata.get('stage')!r} model, not a stage I (vae) model")
    model = VaeGan(size_from_config(config))
    model.load_state_dict(weights)
    model.eval()
    return model, config, metadata


__all__ = ["Engine", "LogReporter", "Reporter", "Stage1Trainer", "load_vae"]
