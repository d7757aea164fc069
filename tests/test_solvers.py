"""Few-step solvers: timestep spacings, diffusers equivalence, and convergence order against an exact oracle."""

import math

import pytest
import torch

from engine import GaussianDiffusion, NoiseSchedule, SamplingPlan, StepCoeffs, sample, sample_iter, sampling_step
from engine.models.oracle import GaussianOracle
from engine.sampling.spacing import SPACINGS, half_log_snr

MULTISTEP = ("dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde")


# ------------------------------------------------------------------------------------------- spacings
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", *MULTISTEP])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_every_spacing_gives_distinct_descending_steps(sampler, spacing, schedule):
    d = GaussianDiffusion(NoiseSchedule.from_name(schedule, 1000))
    for steps in (1, 2, 8, 10, 15, 25, 100, 299):
        for start_t in (None, 300):
            ts = SamplingPlan.build(d, sampler, steps, start_t=start_t, spacing=spacing).timesteps.tolist()
            assert len(ts) == steps and ts == sorted(set(ts), reverse=True), (steps, ts[:5])
            assert ts[-1] >= 0 and ts[0] <= (999 if start_t is None else start_t)
            if sampler in ("ddpm", "ddim") and spacing != "trailing" and steps > 1:
                assert ts[-1] == 0  # these samplers take their last step at t = 0


def test_logsnr_spacing_is_uniform_in_lambda():
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    lam = half_log_snr(d.schedule)
    ts = SamplingPlan.build(d, "dpmpp_2m", 10, spacing="logsnr").timesteps
    gaps = lam[ts].diff()
    target = (lam[0] - lam[999]) / 10
    # integer t can only approximate each level; λ moves ≤ 0.13 per t over these levels
    torch.testing.assert_close(gaps, target.expand_as(gaps), atol=0.15, rtol=0)


def test_karras_spacing_follows_rho_7():
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    sig = torch.exp(-half_log_snr(d.schedule))
    ts = SamplingPlan.build(d, "dpmpp_2m", 12, spacing="karras").timesteps
    ramp = sig[ts] ** (1 / 7)
    # σ^{1/ρ} is evenly spaced (Karras et al. 2022, eq. (5)), up to rounding t to an integer
    assert (ramp.diff() < 0).all()
    assert float((ramp.diff() / ramp.diff().mean() - 1).abs().max()) < 0.1


@pytest.mark.parametrize("kwargs", [dict(spacing="cosine"), dict(sampler="dpmpp_2m", eta=0.5),
                                    dict(sampler="ddpm", eta=0.0), dict(sampler="dpmpp_2m", steps=1000),
                                    dict(sampler="dpmpp_2m", steps="ddim10"), dict(steps="ddim10", spacing="karras")])
def test_plan_refuses_what_it_cannot_honour(kwargs):
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    with pytest.raises(ValueError):
        SamplingPlan.build(d, **{"sampler": "ddim", "steps": 10, **kwargs})


# ------------------------------------------------------------------------------------ the update form
def test_sde_with_eta_0_is_the_ode_solver():
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    a, b = SamplingPlan.build(d, "dpmpp_2m_sde", 12, eta=0.0), SamplingPlan.build(d, "dpmpp_2m", 12)
    for name in ("timesteps", "coef_xt", "coef_x0", "coef_hist", "sigma"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("sampler", MULTISTEP)
def test_multistep_warms_up_and_ends_on_x0(sampler):
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    p = SamplingPlan.build(d, sampler, 20)
    b1, b2 = p.coef_hist[:, 0], p.coef_hist[:, 1]
    assert b1[0] == 0 and b2[:2].eq(0).all()  # no history yet
    assert b1[1] != 0
    assert (b2[2:-1] != 0).all() == (sampler == "dpmpp_3m")
    # the last step jumps to σ = 0: x_prev = x̂0 exactly
    assert (p.coef_xt[-1], p.coef_x0[-1], b1[-1], p.sigma[-1]) == (0, 1, 0, 0)
    frames = list(sample_iter(GaussianOracle(d, 0.1, 0.4), d, p, (3, 1, 2, 2), torch.Generator().manual_seed(0)))
    assert torch.equal(frames[-1].x_t, frames[-1].x0)


def test_first_order_weights_sum_to_the_exact_solution_on_a_point_mass():
    """Point-mass data: x̂0 is exact, so every solver must land on the point whatever its steps."""
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    target = torch.tensor([0.25, -0.5])[None, :, None, None]
    model = GaussianOracle(d, target, 0.0)
    for sampler in MULTISTEP:
        for steps in (5, 12, 20):
            x = sample(model, d, SamplingPlan.build(d, sampler, steps, spacing="logsnr"), (4, 2, 1, 1),
                       torch.Generator().manual_seed(1), clip=False)
            torch.testing.assert_close(x, target.expand_as(x), atol=1e-5, rtol=0)


def test_one_batch_mixes_multistep_and_single_step_jobs():
    """Jobs of different samplers at different steps, stepped in one batch with their own histories,
    equal the same jobs stepped alone."""
    d = GaussianDiffusion(NoiseSchedule.cosine(1000), prediction="v")
    model = GaussianOracle(d, 0.2, 0.6)
    plans = [SamplingPlan.build(d, "dpmpp_3m", 15), SamplingPlan.build(d, "ddpm", 40),
             SamplingPlan.build(d, "dpmpp_2m_sde", 10)]
    g = torch.Generator().manual_seed(0)
    ns, steps = (3, 2, 2), (6, 13, 1)
    xs = [torch.randn(n, 1, 2, 2, generator=g) for n in ns]
    zs = [torch.randn(n, 1, 2, 2, generator=g) for n in ns]
    hs = [(torch.randn(n, 1, 2, 2, generator=g), torch.randn(n, 1, 2, 2, generator=g)) for n in ns]
    cs = [p.coeffs(s, n, "cpu", True) for p, s, n in zip(plans, steps, ns, strict=True)]
    alone = [sampling_step("v", model(x, c.t), x, c, z, history=h) for x, c, z, h in zip(xs, cs, zs, hs, strict=True)]
    c, x = StepCoeffs.cat(cs), torch.cat(xs)
    h = (torch.cat([h[0] for h in hs]), torch.cat([h[1] for h in hs]))
    xp, x0, _ = sampling_step("v", model(x, c.t), x, c, torch.cat(zs), history=h)
    torch.testing.assert_close(xp, torch.cat([a[0] for a in alone]))
    torch.testing.assert_close(x0, torch.cat([a[1] for a in alone]))


def test_multistep_step_refuses_to_run_without_history():
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    c = SamplingPlan.build(d, "dpmpp_2m", 10).coeffs(3, 1, "cpu")
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="history"):
        sampling_step("eps", x, x, c, x)


# ------------------------------------------------------------------------- order against an exact oracle
def _ode_error_at_midpoint(d: GaussianDiffusion, sampler: str, steps: int, mu: float = 0.3, std: float = 0.5) -> float:
    """Max error of the solver's state after steps/2 steps against the exact probability-flow ODE.

    For N(mu, std²) data the flow keeps z = (x_t − √ᾱ_t·mu)/√(ᾱ_t·std² + 1 − ᾱ_t) constant, so the exact
    state at any t is known. The midpoint level is the same for every even step count on a logSNR grid,
    and lies before the integer-t grid gets coarse in λ near t = 0.
    """
    oracle = GaussianOracle(d, mu, std)
    plan = SamplingPlan.build(d, sampler, steps, spacing="logsnr")
    ab = d.schedule.alpha_bars
    x_T = torch.randn(256, 1, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, hist = x_T.clone(), (torch.zeros_like(x_T), torch.zeros_like(x_T))
    for i in range(steps // 2):
        c = plan.coeffs(i, x.shape[0], "cpu", clip=False, dtype=torch.float64)
        x, x0, _ = sampling_step("eps", oracle(x, c.t), x, c, torch.zeros_like(x), history=hist)
        hist = (x0, hist[0])
    t0, t_mid = int(plan.timesteps[0]), int(plan.timesteps[steps // 2])
    z = (x_T - ab[t0].sqrt() * mu) / (ab[t0] * std**2 + 1 - ab[t0]).sqrt()
    exact = ab[t_mid].sqrt() * mu + z * (ab[t_mid] * std**2 + 1 - ab[t_mid]).sqrt()
    return float((x - exact).abs().max())


@pytest.mark.parametrize("sampler,order", [("dpmpp_2m", 2), ("dpmpp_3m", 3)])
def test_ode_solvers_converge_at_their_order(sampler, order):
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    steps = (16, 32, 64)
    err = [_ode_error_at_midpoint(d, sampler, k) for k in steps]
    slope = -(math.log(err[-1]) - math.log(err[0])) / (math.log(steps[-1]) - math.log(steps[0]))
    assert order - 0.4 < slope < order + 0.6, (err, slope)
