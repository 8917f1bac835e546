import torch
from torch.distributions import Normal, kl_divergence

from slicesr.stage1.losses import (
    LossWeights,
    compactness_loss,
    kl_diagonal_gaussians,
    kl_to_standard_normal,
    weights_at,
)


def test_kl_closed_forms_match_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu_p, mu_q = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    lv_p, lv_q = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    p, q = Normal(mu_p, (0.5 * lv_p).exp()), Normal(mu_q, (0.5 * lv_q).exp())
    torch.testing.assert_close(kl_diagonal_gaussians(mu_p, lv_p, mu_q, lv_q), kl_divergence(p, q).sum(1))
    standard = Normal(torch.zeros_like(mu_p), torch.ones_like(mu_p))
    torch.testing.assert_close(kl_to_standard_normal(mu_p, lv_p), kl_divergence(p, standard).sum(1))


def test_compactness_is_zero_for_identical_slices_and_positive_otherwise():
    mu, lv = torch.randn(4, 6), torch.randn(4, 6)
    assert torch.allclose(compactness_loss((mu, lv), (mu, lv), (mu, lv)), torch.zeros(4), atol=1e-6)
    assert (compactness_loss((mu, lv), (mu + 1, lv), (mu, lv)) > 0).all()


def test_schedule_switches_phases_and_ablations():
    phases = (LossWeights(10000, 0, 1, 0), LossWeights(100, 1, 0.05, 0), LossWeights(100, 1, 0.05, 0.02))
    assert weights_at(0, (3, 5), phases) == (0, phases[0])
    assert weights_at(2, (3, 5), phases) == (0, phases[0])
    assert weights_at(3, (3, 5), phases) == (1, phases[1])
    assert weights_at(7, (3, 5), phases) == (1, phases[1])
    assert weights_at(8, (3, 5), phases) == (2, phases[2])
    assert weights_at(10**6, (3, 5), phases)[1] == phases[2]
    assert weights_at(9, (3, 5), phases, no_adversarial=True)[1].beta == 0
    assert weights_at(9, (3, 5), phases, no_compactness=True)[1].eta == 0


def test_compactness_floors_the_neighbours_log_variance():
    from slicesr.stage1.losses import COMPACTNESS_LOGVAR_FLOOR

    mu, lv = torch.zeros(2, 3), torch.full((2, 3), -1.0)
    shifted = (mu + 0.1, torch.full((2, 3), -30.0))  # a collapsed neighbour: 0.01 / exp(-30) unbounded
    bounded = compactness_loss((mu, lv), shifted, shifted)
    assert torch.isfinite(bounded).all()
    floored = (shifted[0], torch.full((2, 3), COMPACTNESS_LOGVAR_FLOOR))
    torch.testing.assert_close(bounded, compactness_loss((mu, lv), floored, floored))
    assert float(kl_diagonal_gaussians(mu, lv, *shifted).sum()) > 1e10  # what the floor prevents
    above = (mu + 0.1, torch.full((2, 3), -2.0))  # above the floor: the paper's loss, unchanged
    torch.testing.assert_close(compactness_loss((mu, lv), above, above), 2 * kl_diagonal_gaussians(mu, lv, *above))
