"""Forward process, posterior and parameterizations, checked against closed forms."""

import itertools

import pytest
import torch

from engine import GaussianDiffusion, NoiseSchedule
from engine.diffusion.gaussian import eps_from_v, eps_from_x0, v_from_x0_eps, x0_from_eps, x0_from_v

X0 = torch.tensor([[0.8, 0.6], [0.4, 0.2]], dtype=torch.float64)
EPS = torch.tensor([[0.5, -0.3], [0.1, -0.2]], dtype=torch.float64)


def test_seed_2x2_example_through_public_api():
    """The tutorial's 2×2 example with β1 = 0.1 (docs/ERRATA.md, E1): it prints x1 ≈ [[0.76, 0.51],
    [0.39, 0.17]]; the arithmetic gives [[0.917, 0.474], [0.411, 0.127]]."""
    d = GaussianDiffusion(NoiseSchedule([0.1]), prediction="eps")
    x0, eps, t = X0[None, None], EPS[None, None], torch.zeros(1, dtype=torch.long)
    x1 = d.q_sample(x0, t, eps)
    expected = torch.tensor([[0.917, 0.474], [0.411, 0.127]], dtype=torch.float64)
    torch.testing.assert_close(x1[0, 0], expected, atol=1e-3, rtol=0)  # ERRATA.md gives 3 digits
    torch.testing.assert_close(x1[0, 0], 0.9**0.5 * X0 + 0.1**0.5 * EPS, atol=1e-12, rtol=0)
    wrong = torch.tensor([[0.76, 0.51], [0.39, 0.17]], dtype=torch.float64)
    assert (x1[0, 0] - wrong).abs().max() > 0.05
    # With the true ε, the reverse mean recovers x0 exactly (eq. 7, Ho et al. 2020).
    mean, var = d.q_posterior(x0, x1, t)
    torch.testing.assert_close(mean, x0, atol=1e-6, rtol=0)
    assert var.item() == 0.0
    p = d.p_mean_variance(eps, x1, t)
    torch.testing.assert_close(p.mean, x0, atol=1e-6, rtol=0)
    # and so does the ε form of the mean, μ̃ = (x1 − (1−α1)/√(1−ᾱ1)·ε)/√α1 (eq. 11, Ho et al. 2020)
    seed_mu = (x1 - 0.1 / (0.1**0.5) * eps) / 0.9**0.5
    torch.testing.assert_close(seed_mu, x0, atol=1e-6, rtol=0)


@pytest.mark.parametrize("t", [0, 10, 500, 999])
def test_q_sample_monte_carlo_moments(t):
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    g = torch.Generator().manual_seed(t)
    n = 200_000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    tt = torch.full((n,), t, dtype=torch.long)
    xt = d.q_sample(x0, tt, torch.randn(n, 1, generator=g, dtype=torch.float64))
    ab = d.schedule.alpha_bars[t].item()
    mean_se = ((1 - ab) / n) ** 0.5
    assert abs(xt.mean().item() - ab**0.5 * 0.7) < 5 * mean_se
    var_se = (1 - ab) * (2 / n) ** 0.5
    assert abs(xt.var().item() - (1 - ab)) < 5 * var_se


@pytest.mark.parametrize("schedule", [NoiseSchedule.linear(300), NoiseSchedule.cosine(300)])
def test_q_posterior_is_bayes_product(schedule):
    """q(x_{t−1}|x_t,x0) ∝ N(x_t; √α_t x_{t−1}, β_t) · N(x_{t−1}; √ᾱ_{t−1} x0, 1−ᾱ_{t−1})."""
    d = GaussianDiffusion(schedule)
    g = torch.Generator().manual_seed(0)
    t = torch.arange(1, schedule.T)
    x0 = torch.randn(len(t), 3, generator=g, dtype=torch.float64)
    xt = torch.randn(len(t), 3, generator=g, dtype=torch.float64)
    mean, var = d.q_posterior(x0, xt, t)
    a, b = schedule.alphas[t, None], schedule.betas[t, None]
    abp = schedule.alpha_bars[t - 1, None]
    prec = a / b + 1 / (1 - abp)  # precisions add
    bayes_mean = (a.sqrt() * xt / b + abp.sqrt() * x0 / (1 - abp)) / prec
    torch.testing.assert_close(mean, bayes_mean, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(var, 1 / prec, rtol=1e-9, atol=1e-15)


def test_parameterizations_round_trip():
    s = NoiseSchedule.cosine(1000)
    g = torch.Generator().manual_seed(1)
    t = torch.arange(1000)
    sa, s1 = s.sqrt_alpha_bars[:, None], s.sqrt_one_minus_alpha_bars[:, None]
    x0 = torch.randn(1000, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(1000, 5, generator=g, dtype=torch.float64)
    xt = sa * x0 + s1 * eps
    v = v_from_x0_eps(x0, eps, sa, s1)
    torch.testing.assert_close(x0_from_v(xt, v, sa, s1), x0)
    torch.testing.assert_close(eps_from_v(xt, v, sa, s1), eps)
    torch.testing.assert_close(eps_from_x0(xt, x0, sa, s1), eps)
    # x0 from ε divides by √ᾱ, tiny at the end of the cosine schedule: compare where it is sane
    ok = s.sqrt_alpha_bars > 1e-3
    torch.testing.assert_close(x0_from_eps(xt, eps, sa, s1)[ok], x0[ok])
    # v is Salimans & Ho 2022's form, not the tutorial's (docs/ERRATA.md, E3): at t where
    # √(1−ᾱ) differs from √(1−α²) they disagree.
    seed_v = s.alphas[:, None] * eps - (1 - s.alphas[:, None] ** 2).sqrt() * x0
    assert (seed_v - v).abs().max() > 0.1
    # predict_x0_eps uses the same conversions for every prediction type
    for pred, out in (("eps", eps), ("x0", x0), ("v", v)):
        d = GaussianDiffusion(s, prediction=pred)
        px0, peps = d.predict_x0_eps(out, xt, t)
        torch.testing.assert_close(px0[ok], x0[ok])
        torch.testing.assert_close(peps[ok], eps[ok])
        torch.testing.assert_close(d.target(x0, eps, t), out)


def test_clipping_keeps_x0_and_eps_consistent():
    d = GaussianDiffusion(NoiseSchedule.linear(100), prediction="eps")
    t = torch.full((4,), 50)
    xt = torch.randn(4, 1, 3, 3, dtype=torch.float64) * 3
    out = torch.randn(4, 1, 3, 3, dtype=torch.float64) * 3
    x0, eps = d.predict_x0_eps(out, xt, t, clip=True)
    assert x0.abs().max() <= 1.0
    sa = d.schedule.sqrt_alpha_bars[50]
    s1 = d.schedule.sqrt_one_minus_alpha_bars[50]
    torch.testing.assert_close(sa * x0 + s1 * eps, xt)


def test_variance_types():
    s = NoiseSchedule.linear(100)
    t = torch.arange(100)
    x = torch.zeros(100, 1, dtype=torch.float64)
    small = GaussianDiffusion(s, variance="fixed_small").p_mean_variance(x, x, t)
    large = GaussianDiffusion(s, variance="fixed_large").p_mean_variance(x, x, t)
    torch.testing.assert_close(small.variance[1:, 0], s.posterior_variance[1:])
    torch.testing.assert_close(large.variance[1:, 0], s.betas[1:])
    for p in (small, large):
        assert torch.isfinite(p.log_variance).all()
    assert (large.variance[1:] >= small.variance[1:]).all()


@pytest.mark.parametrize(
    "name,pred,var", list(itertools.product(["linear", "cosine"], ["eps", "x0", "v"],
                                            ["fixed_small", "fixed_large"]))
)
def test_no_nan_in_model_terms_at_every_t(name, pred, var):
    d = GaussianDiffusion(NoiseSchedule.from_name(name, 1000), prediction=pred, variance=var)
    t = torch.arange(1000)
    g = torch.Generator().manual_seed(0)
    xt = torch.randn(1000, 1, 2, 2, generator=g) * 2
    out = torch.randn(1000, 1, 2, 2, generator=g) * 2
    for clip in (False, True):
        p = d.p_mean_variance(out, xt, t, clip=clip)
        for v in (p.mean, p.variance, p.log_variance, p.x0):
            assert torch.isfinite(v).all()


def test_rejects_unknown_options():
    with pytest.raises(ValueError, match="prediction"):
        GaussianDiffusion(NoiseSchedule.linear(10), prediction="score")
    with pytest.raises(ValueError, match="variance"):
        GaussianDiffusion(NoiseSchedule.linear(10), variance="learned")
