"""Losses of eqs. 4-11 and the 3-phase (alpha, beta, gamma, eta) schedule. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per sample, summed over latent dims (eq. 5)."""
    return 0.5 * torch.sum(mu.pow(2) + logvar.exp() - 1.0 - logvar, dim=1)


def kl_diagonal_gaussians(mu_p, logvar_p, mu_q, logvar_q) -> torch.Tensor:
    """KL(N(mu_p, var_p) || N(mu_q, var_q)) per sample for diagonal Gaussians, summed over dims."""
    return 0.5 * torch.sum(
        logvar_q - logvar_p + (logvar_p.exp() + (mu_p - mu_q).pow(2)) / logvar_q.exp() - 1.0, dim=1
    )


# L_comp divides by the neighbours' variances: an encoder that drives a log-variance far below zero
# makes the loss (and its gradient) explode. The neighbours' log-variances are floored here (sigma >=
# about 0.018); the paper's loss is unchanged above the floor. `Stage1Losses.logvar_min` reports how
# close training comes to it.
COMPACTNESS_LOGVAR_FLOOR = -8.0


def compactness_loss(center, previous, following) -> torch.Tensor:
    """L_comp (eq. 8): KL(q_n || q_{n+1}) + KL(q_n || q_{n-1}); each argument is (mu, logvar), the
    neighbours' log-variances floored at COMPACTNESS_LOGVAR_FLOOR."""
    def floored(mu_logvar):
        mu, logvar = mu_logvar
        return mu, logvar.clamp(min=COMPACTNESS_LOGVAR_FLOOR)

    return kl_diagonal_gaussians(*center, *floored(following)) + kl_diagonal_gaussians(*center, *floored(previous))


def center_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """L_center = ||x - x_hat||_1, mean over pixels, per sample."""
    return (x - x_hat).abs().flatten(1).mean(dim=1)


def adversarial_loss(critic_real: torch.Tensor, critic_fake: torch.Tensor) -> torch.Tensor:
    """L_adv = -H(x_hat) + H(x) (eq. 7, Wasserstein critic), batch mean."""
    return critic_real.mean() - critic_fake.mean()


@dataclass(frozen=True)
class LossWeights:
    alpha: float
    beta: float
    gamma: float
    eta: float


def weights_at(step: int, phase_steps: tuple[int, int], phases: tuple[LossWeights, LossWeights, LossWeights],
               no_adversarial: bool = False, no_compactness: bool = False) -> tuple[int, LossWeights]:
    """(phase index, weights) at a 0-based step: phase 0 for phase_steps[0] steps, phase 1 for the next
    phase_steps[1], phase 2 after that. The ablation switches zero beta or eta throughout."""
    phase = 0 if step < phase_steps[0] else 1 if step < phase_steps[0] + phase_steps[1] else 2
    w = phases[phase]
    return phase, LossWeights(w.alpha, 0.0 if no_adversarial else w.beta, w.gamma, 0.0 if no_compactness else w.eta)
