"""The decoupled diffusion of DDTracking: forward marginals, loss weights, and the sampler."""

from __future__ import annotations

import pytest
import torch

from difftract.errors import ConfigError
from difftract.models.ddtracking.diffusion import (DiffusionConfig, decoupled_loss, diffuse, eps_from_h,
                                                   loss_weights, sample, sample_k, sampler_noise)


def test_forward_marginal_is_fading_data_plus_brownian_noise():
    g = torch.Generator().manual_seed(0)
    y0 = torch.tensor([[0.6, -0.8, 0.0]]).repeat(200_000, 1)
    k = torch.full((len(y0), 1), 0.3)
    y = diffuse(y0, k, torch.randn(y0.shape, generator=g))
    # sampling error with n = 2e5: mean sqrt(0.3/n) = 1.2e-3, variance sqrt(2*0.3^2/n) = 9.5e-4, so
    # 5e-3 is >= 4 standard errors (and the draw is seeded); a wrong schedule is off by > 0.05
    torch.testing.assert_close(y.mean(0), 0.7 * y0[0], atol=5e-3, rtol=0)
    torch.testing.assert_close(y.var(0), torch.full((3,), 0.3), atol=5e-3, rtol=0)
    assert torch.equal(diffuse(y0[:1], torch.ones(1, 1), torch.zeros(1, 3)), torch.zeros(1, 3))


def test_one_head_noise_recovers_the_drawn_noise():
    g = torch.Generator().manual_seed(1)
    y0, eps = torch.randn(50, 3, generator=g), torch.randn(50, 3, generator=g)
    k = sample_k(50, 1e-3, g)
    assert float(k.min()) >= 1e-3 and float(k.max()) < 1
    torch.testing.assert_close(eps_from_h(diffuse(y0, k, eps), -y0, k), eps, rtol=1e-4, atol=1e-4)


def test_loss_weights_follow_the_formula_and_stay_finite():
    k = torch.tensor([[0.0], [1e-4], [0.25], [0.5], [0.999], [1.0]])
    lam1, lam2 = loss_weights(k, max_weight=100.0)
    assert torch.isfinite(lam1).all() and torch.isfinite(lam2).all()
    assert float(lam1.max()) == 100.0 and float(lam2.max()) == 100.0
    torch.testing.assert_close(lam1[2], torch.tensor([(0.0625 - 0.25 + 1) / 0.25]))
    torch.testing.assert_close(lam2[3], torch.tensor([(0.25 - 0.5 + 1) / 0.25]))


def test_loss_is_zero_for_perfect_predictions_and_carries_gradients():
    g = torch.Generator().manual_seed(2)
    h, eps = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    k = sample_k(8, 1e-3, g)
    loss, parts = decoupled_loss(h, eps, h, eps, k)
    assert float(loss) == 0.0 and parts == {"loss_h": 0.0, "loss_eps": 0.0}
    h_pred = torch.zeros(8, 3, requires_grad=True)
    loss, _ = decoupled_loss(h_pred, eps, h, eps, k)
    loss.backward()
    assert float(loss.detach()) > 0 and h_pred.grad.abs().sum() > 0


def test_one_step_from_zero_is_the_regression():
    calls = []

    def denoise(y, k):
        calls.append((y.clone(), k.clone()))
        return torch.tensor([[-2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])

    out = sample(denoise, 2, steps=1)
    assert len(calls) == 1 and torch.equal(calls[0][0], torch.zeros(2, 3)) and torch.all(calls[0][1] == 1)
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]))


@pytest.mark.parametrize("steps", [1, 2, 5, 10])
@pytest.mark.parametrize("stochastic", [False, True])
def test_an_oracle_denoiser_lands_on_the_data(steps, stochastic):
    y0 = torch.nn.functional.normalize(torch.randn(64, 3, generator=torch.Generator().manual_seed(3)), dim=-1)
    out = sample(lambda y, k: -y0, 64, steps=steps, stochastic=stochastic,
                 generator=torch.Generator().manual_seed(4), normalise=False)
    torch.testing.assert_close(out, y0, rtol=1e-5, atol=1e-5)


def test_stochastic_paths_have_the_forward_marginals():
    """With the oracle, y at k=0.5 after one of two stochastic steps is N(0.5 y0, 0.5 I)."""
    n = 200_000
    y0 = torch.tensor([0.0, 0.6, 0.8])
    seen = []

    def denoise(y, k):
        seen.append((float(k[0]), y.clone()))
        return -y0.expand(n, 3)

    sample(denoise, n, steps=2, stochastic=True, generator=torch.Generator().manual_seed(5))
    k, y_half = seen[1]
    assert k == 0.5
    # n = 2e5: standard errors sqrt(0.5/n) = 1.6e-3 (mean) and sqrt(2*0.5^2/n) = 1.6e-3 (variance): 6e-3
    # is ~3.8 of them (seeded); a missing or doubled noise term moves them by >= 0.1
    torch.testing.assert_close(y_half.mean(0), 0.5 * y0, atol=6e-3, rtol=0)
    torch.testing.assert_close(y_half.var(0), torch.full((3,), 0.5), atol=6e-3, rtol=0)


def test_sampling_follows_the_generator():
    def denoise(y, k):                                  # a denoiser that depends on y: paths differ
        return -torch.tanh(y + 1.0)

    a = sample(denoise, 16, steps=5, stochastic=True, generator=torch.Generator().manual_seed(7))
    b = sample(denoise, 16, steps=5, stochastic=True, generator=torch.Generator().manual_seed(7))
    c = sample(denoise, 16, steps=5, stochastic=True, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.allclose(a.norm(dim=-1), torch.ones(16))
    d = sample(denoise, 16, steps=5, stochastic=False)
    assert torch.equal(d, sample(denoise, 16, steps=5, stochastic=False))


def test_refusals():
    with pytest.raises(ConfigError, match="at least one step"):
        sample(lambda y, k: y, 1, steps=0)
    with pytest.raises(ConfigError, match="k_min"):
        DiffusionConfig(k_min=0.0)


def test_noise_drawn_beforehand_gives_the_same_samples():
    """``sampler_noise`` draws what the sampler drew step by step (its stochastic tracks stay the same),
    and rows of it sample those rows."""
    def denoise(y, k):
        return -torch.tanh(y + 1.0)

    def drawing_as_it_goes(n, steps, generator):     # the sampler as it was: y_1, then noise after each step
        y = torch.randn(n, 3, generator=generator)
        for i in range(steps):
            k, k_next = 1.0 - i / steps, (1.0 - (i + 1) / steps if i + 1 < steps else 0.0)
            y = (k_next / k) * y - ((k - k_next) / k) * denoise(y, None)
            if i + 1 < steps:
                y = y + ((k - k_next) * k_next / k) ** 0.5 * torch.randn(n, 3, generator=generator)
        return torch.nn.functional.normalize(y, dim=-1)

    before = drawing_as_it_goes(16, 4, torch.Generator().manual_seed(7))
    drawn = sample(denoise, 16, steps=4, stochastic=True, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(drawn, before, atol=1e-6, rtol=0)
    noise = sampler_noise(16, 3, 4, torch.Generator().manual_seed(7))
    assert noise.shape == (16, 4, 3)
    top = sample(denoise, 5, steps=4, stochastic=True, noise=noise[:5])
    torch.testing.assert_close(top, before[:5], atol=1e-6, rtol=0)
