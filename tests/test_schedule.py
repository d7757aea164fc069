"""Schedules and respacing against closed forms."""

import math

import pytest
import torch

from engine import NoiseSchedule, respace, select_timesteps


def test_linear_matches_definition():
    s = NoiseSchedule.linear(1000, 1e-4, 0.02)
    assert s.betas.dtype == torch.float64 and s.T == 1000
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    ab = torch.cumprod(1 - s.betas, 0)
    torch.testing.assert_close(s.alpha_bars, ab, rtol=1e-12, atol=0)
    torch.testing.assert_close(s.alpha_bars_prev[1:], ab[:-1], rtol=0, atol=0)
    assert s.alpha_bars_prev[0].item() == 1.0  # no wrap-around to the last index (docs/ERRATA.md, E2)


def test_cosine_matches_closed_form():
    T, sft = 1000, 0.008
    s = NoiseSchedule.cosine(T, s=sft)
    f = lambda t: math.cos((t / T + sft) / (1 + sft) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 1, 10, 100, 500, 900, 980):
        assert s.alpha_bars[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert s.betas.max().item() <= 0.999


def test_log_snr_matches_closed_form():
    """log SNR = log(ᾱ/(1−ᾱ)); half of it is DPM-Solver's λ = log(√ᾱ/√(1−ᾱ)) (Lu et al. 2022)."""
    T, sft = 1000, 0.008
    f = lambda t: math.cos((t / T + sft) / (1 + sft) * math.pi / 2) ** 2  # noqa: E731
    cos = NoiseSchedule.cosine(T, s=sft)
    for t in (0, 1, 10, 100, 500, 900, 980):  # ᾱ_t = f(t+1)/f(0) while β_t is below its cap
        ab = f(t + 1) / f(0)
        assert cos.log_snr[t].item() == pytest.approx(math.log(ab / (1 - ab)), rel=1e-9)
        assert cos.log_snr[t].item() / 2 == pytest.approx(math.log(math.sqrt(ab) / math.sqrt(1 - ab)), rel=1e-9)
    lin = NoiseSchedule.linear(1000, 1e-4, 0.02)
    ab = 1.0
    for t, beta in enumerate(lin.betas.tolist()):
        ab *= 1 - beta
        if t in (0, 1, 499, 999):  # t = 0: ᾱ = 1 − 1e-4, where 1 − ᾱ must not lose its digits
            assert lin.log_snr[t].item() == pytest.approx(math.log(ab) - math.log(beta if t == 0 else 1 - ab),
                                                          rel=1e-9)
    for s in (cos, lin):
        assert s.log_snr.dtype == torch.float64 and (s.log_snr[1:] < s.log_snr[:-1]).all()
        torch.testing.assert_close(s.log_snr.exp(), s.snr, rtol=1e-9, atol=0)


def test_derived_constants_are_consistent():
    for s in (NoiseSchedule.linear(100), NoiseSchedule.cosine(100)):
        ab, abp, b = s.alpha_bars, s.alpha_bars_prev, s.betas
        torch.testing.assert_close(s.posterior_variance, b * (1 - abp) / (1 - ab))
        assert s.posterior_variance[0].item() == 0.0
        assert torch.isfinite(s.posterior_log_variance_clipped).all()
        assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]
        torch.testing.assert_close(s.snr, ab / (1 - ab))
        torch.testing.assert_close(s.sqrt_alpha_bars**2 + s.sqrt_one_minus_alpha_bars**2,
                                   torch.ones_like(ab))
        # the posterior mean of x0 itself (x_t = x0, no noise) keeps ᾱ-weighted consistency
        torch.testing.assert_close(s.posterior_mean_coef_x0 * abp.sqrt().reciprocal() * (1 - ab) / b,
                                   torch.ones_like(ab))


def test_to_moves_and_caches():
    s = NoiseSchedule.linear(10)
    c = s.to("cpu", torch.float32)
    assert c["alpha_bars"].dtype == torch.float32
    assert s.to("cpu", torch.float32) is c
    assert s.to("cpu", torch.float64)["betas"].dtype == torch.float64


@pytest.mark.parametrize("bad", [[0.0, 0.1], [0.5, 1.0], [float("nan")], [], [[0.1]]])
def test_rejects_bad_betas(bad):
    with pytest.raises(ValueError):
        NoiseSchedule(bad)


def test_respacing_all_steps_is_identity():
    s = NoiseSchedule.cosine(200)
    r = respace(s, 200)
    assert r.timesteps.tolist() == list(range(200))
    assert torch.equal(r.schedule.betas, s.betas)
    assert torch.equal(r.schedule.alpha_bars, s.alpha_bars)


@pytest.mark.parametrize("spec", [10, 50, "ddim25", "7", [0, 3, 99, 500, 999]])
def test_respacing_keeps_alpha_bar(spec):
    s = NoiseSchedule.linear(1000)
    r = respace(s, spec)
    torch.testing.assert_close(r.schedule.alpha_bars, s.alpha_bars[r.timesteps], rtol=1e-12, atol=1e-15)
    assert (r.timesteps[1:] > r.timesteps[:-1]).all()
    assert ((r.schedule.betas > 0) & (r.schedule.betas < 1)).all()


def test_select_timesteps_forms():
    assert select_timesteps(1000, 5) == [0, 250, 500, 749, 999]
    assert select_timesteps(1000, "ddim4") == [0, 250, 500, 750]
    assert select_timesteps(1000, 3, t_max=10) == [0, 5, 10]
    assert select_timesteps(10, [9, 0, 9]) == [0, 9]
    for bad in (0, 1001, "ddim0", "fast", [1000], []):
        with pytest.raises(ValueError):
            select_timesteps(1000, bad)
