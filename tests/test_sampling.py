"""Samplers: oracle models, determinism, batching across plans, and a NaN sweep."""

import itertools

import pytest
import torch

from engine import GaussianDiffusion, NoiseSchedule, SamplingPlan, StepCoeffs, sample, sample_iter, sampling_step
from engine.models.oracle import GaussianOracle

SAMPLERS = [("ddpm", None, None), ("ddpm", 40, None), ("ddim", 40, 0.0), ("ddim", 40, 1.0)]


@pytest.mark.parametrize("pred", ["eps", "x0", "v"])
@pytest.mark.parametrize("sampler,steps,eta", SAMPLERS)
def test_point_mass_oracle_reaches_the_point(pred, sampler, steps, eta):
    """Data at a single x*: the exact predictor must take every sampler to x*."""
    d = GaussianDiffusion(NoiseSchedule.linear(1000), prediction=pred)
    target = torch.tensor([0.25, -0.5, 0.9])[None, :, None, None]
    model = GaussianOracle(d, target, 0.0)
    plan = SamplingPlan.build(d, sampler, steps, eta)
    x = sample(model, d, plan, (8, 3, 1, 1), torch.Generator().manual_seed(0), clip=False)
    torch.testing.assert_close(x, target.expand_as(x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_gaussian_oracle_reproduces_data_moments(schedule):
    """N(0.3, 0.5²) data and its exact predictor: full-T DDPM and fine DDIM match the moments.

    Tolerances: the Monte Carlo error (N = 40000 gives SE 0.0025 on the mean, 0.0018 on the
    std) plus the known ~1% variance shortfall of fixed_small β̃ at T = 1000.
    """
    d = GaussianDiffusion(NoiseSchedule.from_name(schedule, 1000))
    model = GaussianOracle(d, 0.3, 0.5)
    for sampler, steps in (("ddpm", None), ("ddim", 1000)):
        x = sample(model, d, SamplingPlan.build(d, sampler, steps), (40000, 1),
                   torch.Generator().manual_seed(1), clip=False)
        assert abs(x.mean().item() - 0.3) < 0.01
        assert abs(x.std().item() - 0.5) < 0.01


def test_ddim_eta0_is_deterministic_given_x_T():
    d = GaussianDiffusion(NoiseSchedule.cosine(500))
    model = GaussianOracle(d, 0.1, 0.4)
    plan = SamplingPlan.build(d, "ddim", 25, 0.0)
    x_T = torch.randn(6, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    a = sample(model, d, plan, x_T.shape, torch.Generator().manual_seed(10), x_start=x_T)
    b = sample(model, d, plan, x_T.shape, torch.Generator().manual_seed(99), x_start=x_T)
    assert torch.equal(a, b)
    ddpm = SamplingPlan.build(d, "ddpm", 25)
    c = sample(model, d, ddpm, x_T.shape, torch.Generator().manual_seed(10), x_start=x_T)
    e = sample(model, d, ddpm, x_T.shape, torch.Generator().manual_seed(99), x_start=x_T)
    assert not torch.equal(c, e)


def test_ddim_eta1_matches_respaced_ddpm():
    """DDIM with η = 1 uses σ² = β̃ on the same subsequence, which is respaced DDPM."""
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    a, b = SamplingPlan.build(d, "ddim", 30, 1.0), SamplingPlan.build(d, "ddpm", 30)
    for name in ("timesteps", "coef_x0", "coef_xt", "sigma"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))


def test_same_generator_same_samples():
    d = GaussianDiffusion(NoiseSchedule.linear(100))
    model = GaussianOracle(d, 0.0, 0.5)
    plan = SamplingPlan.build(d, "ddpm", 20)
    a = sample(model, d, plan, (4, 1, 3, 3), torch.Generator().manual_seed(5))
    b = sample(model, d, plan, (4, 1, 3, 3), torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_one_batch_mixes_steps_of_different_plans():
    """Two jobs on different samplers, at different steps, stepped in one batch, equal the
    same jobs stepped alone: the batch only carries per-sample rows."""
    d = GaussianDiffusion(NoiseSchedule.cosine(1000), prediction="v")
    model = GaussianOracle(d, 0.2, 0.6)
    p1, p2 = SamplingPlan.build(d, "ddpm", 50), SamplingPlan.build(d, "ddim", 20, 0.5)
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(3, 1, 2, 2, generator=g), torch.randn(2, 1, 2, 2, generator=g)
    n1, n2 = torch.randn(3, 1, 2, 2, generator=g), torch.randn(2, 1, 2, 2, generator=g)
    c1, c2 = p1.coeffs(7, 3, "cpu", True), p2.coeffs(13, 2, "cpu", False)
    alone = [sampling_step("v", model(x, c.t), x, c, n) for x, c, n in ((x1, c1, n1), (x2, c2, n2))]
    c = StepCoeffs.cat([c1, c2])
    x = torch.cat([x1, x2])
    xp, x0, _ = sampling_step("v", model(x, c.t), x, c, torch.cat([n1, n2]))
    torch.testing.assert_close(xp, torch.cat([alone[0][0], alone[1][0]]))
    torch.testing.assert_close(x0, torch.cat([alone[0][1], alone[1][1]]))
    assert x0[:3].abs().max() <= 1.0  # clip applies per sample


def test_frames_are_yielded_for_every_step():
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    plan = SamplingPlan.build(d, "ddim", 10)
    frames = list(sample_iter(GaussianOracle(d, 0.0, 0.5), d, plan, (2, 1, 2, 2), torch.Generator()))
    assert [f.step for f in frames] == list(range(1, 11))
    assert all(f.of == 10 for f in frames)
    assert [f.t for f in frames] == plan.timesteps.tolist() == sorted(plan.timesteps.tolist(), reverse=True)
    assert frames[0].t == 999 and frames[-1].t == 0
    assert torch.equal(frames[-1].x_t, frames[-1].x0)  # last step returns the clipped x̂0


def test_start_t_plans_begin_at_the_given_step():
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    for sampler in ("ddpm", "ddim"):
        plan = SamplingPlan.build(d, sampler, 10, start_t=400)
        assert plan.timesteps[0].item() == 400 and plan.timesteps[-1].item() == 0
    full = SamplingPlan.build(d, "ddpm", None, start_t=99)
    assert full.K == 100


def test_sampling_uses_no_autograd():
    d = GaussianDiffusion(NoiseSchedule.linear(50))
    net = torch.nn.Conv2d(1, 1, 1)
    model = lambda x, t: net(x)  # noqa: E731
    frame = next(iter(sample_iter(model, d, SamplingPlan.build(d, "ddim", 5), (1, 1, 2, 2))))
    assert not frame.x_t.requires_grad and frame.x_t.grad_fn is None


@pytest.mark.parametrize(
    "schedule,pred,variance", list(itertools.product(["linear", "cosine"], ["eps", "x0", "v"],
                                                     ["fixed_small", "fixed_large"]))
)
def test_no_nan_or_inf_anywhere(schedule, pred, variance):
    """Every schedule × prediction × variance × sampler × clipping, through every t.

    The model is a deliberately bad one (large random outputs) so that nothing relies on a
    well-behaved prediction; diffusers' fixed_large_log returned NaN here (#14569)."""
    d = GaussianDiffusion(NoiseSchedule.from_name(schedule, 1000), prediction=pred, variance=variance)
    gen = torch.Generator().manual_seed(0)
    model = lambda x, t: 10 * torch.randn(x.shape, generator=gen)  # noqa: E731
    for (sampler, steps, eta), clip in itertools.product([*SAMPLERS, ("ddim", 1000, 0.0)], (True, False)):
        plan = SamplingPlan.build(d, sampler, steps, eta)
        for fr in sample_iter(model, d, plan, (2, 1, 2, 2), torch.Generator().manual_seed(1), clip=clip):
            assert torch.isfinite(fr.x_t).all() and torch.isfinite(fr.x0).all(), (sampler, fr.t, clip)


@pytest.mark.parametrize("kwargs", [dict(sampler="euler"), dict(eta=1.5), dict(steps=0), dict(steps=1001),
                                    dict(start_t=1000)])
def test_plan_rejects_bad_arguments(kwargs):
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    with pytest.raises(ValueError):
        SamplingPlan.build(d, **{"sampler": "ddim", "steps": 10, **kwargs})
