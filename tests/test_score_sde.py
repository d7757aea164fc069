"""Part II samplers: PLMS/PNDM against diffusers' PNDMScheduler, the VP-SDE view of the schedule, the score-SDE
samplers (sde_em, pc) and the adaptive probability-flow ODE (ode_rk45) against closed forms, and an adaptive run
batched beside fixed-step runs."""

from __future__ import annotations

import pytest
import torch

from engine import (
    GaussianDiffusion,
    NoiseSchedule,
    OdePlan,
    SamplingPlan,
    SamplingSpec,
    SpecError,
    Stepper,
    as_denoiser,
    complete,
    load_model_file,
    sample,
)
from engine.diffusion.sde import VPSDE
from engine.models.oracle import GaussianOracle

MU, STD = 0.3, 0.5


def _leading_levels(K: int, T: int = 1000) -> list[int]:
    return [i * (T // K) for i in range(K)][::-1]


# ------------------------------------------------------------------------------------------- the VP-SDE view
def test_linear_schedule_is_song_et_al_vpsde():
    """linspace(1e-4, 0.02, 1000) are exactly score_sde's discrete betas of VPSDE(0.1, 20, N = 1000)."""
    s = NoiseSchedule.linear(1000)
    sde = VPSDE.of(s)
    assert (sde.kind, sde.beta_min, sde.beta_max) == ("linear", pytest.approx(0.1), pytest.approx(20.0))
    i = torch.arange(1000, dtype=torch.float64)
    score_sde_betas = sde.beta_min / sde.N + i * (sde.beta_max - sde.beta_min) / (sde.N * (sde.N - 1))
    torch.testing.assert_close(score_sde_betas, s.betas, rtol=1e-12, atol=0)


def test_time_map_puts_index_i_at_i_plus_one_over_n():
    """Index i ↔ t = (i + 1)/N ↔ network timestep N·t − 1: exact for the cosine schedule, within the VPSDE's
    own discretisation error for the linear one (σ within 5 %, ᾱ within 7 %)."""
    for s, tol_sigma in ((NoiseSchedule.cosine(1000), 1e-9), (NoiseSchedule.linear(1000), 0.05)):
        sde = VPSDE.of(s)
        i = torch.arange(990)  # the cosine schedule caps β at its last steps
        t = sde.time_of(i)
        torch.testing.assert_close(sde.model_timestep(t), i.double())
        rel = (sde.sigma(t) / s.sqrt_one_minus_alpha_bars[i] - 1).abs().max()
        assert rel < tol_sigma
    assert VPSDE.of(NoiseSchedule.linear(1000)).t_min == pytest.approx(1e-3)


def test_other_schedules_are_refused():
    with pytest.raises(ValueError, match="linear"):
        VPSDE.of(NoiseSchedule(torch.linspace(1e-2, 0.1, 100) ** 2))


def test_probability_flow_drift_is_minus_half_beta_x_plus_score():
    sde = VPSDE.of(NoiseSchedule.linear(1000))
    x, eps, t = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2), torch.tensor([0.2, 0.5, 0.9])
    score = -eps / sde.sigma(t).float().reshape(-1, 1, 1, 1)
    expected = -0.5 * sde.beta(t).float().reshape(-1, 1, 1, 1) * (x + score)
    torch.testing.assert_close(sde.ode_drift(x, eps, t), expected)


# ------------------------------------------------------------------------------------------ PLMS and PNDM
diffusers = pytest.importorskip("diffusers", reason="the optional 'diffusers' extra is not installed")


def _pndm(skip_prk: bool):
    return diffusers.PNDMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                   skip_prk_steps=skip_prk, set_alpha_to_one=False, timestep_spacing="leading")


def test_plms_reproduces_diffusers_on_the_bundled_model():
    """The issue's cross-check: ``--spacing leading --no-clip``, same x_T, to 1e-4."""
    from engine import UNCONDITIONAL_MODEL

    m = load_model_file(UNCONDITIONAL_MODEL)
    steps, shape, seed = 10, (2, 1, 28, 28), 3
    sched = _pndm(skip_prk=True)
    sched.set_timesteps(steps)
    plan = SamplingPlan.build(m.diffusion, "plms", steps, spacing="leading")
    assert plan.timesteps.tolist() == sched.timesteps.tolist()  # steps + 1 evaluations
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        for t in sched.timesteps:
            x = sched.step(m.net(x, t.reshape(1).expand(shape[0])), t, x).prev_sample
        ours = sample(m.net, m.diffusion, plan, shape, torch.Generator().manual_seed(seed), clip=False)
    torch.testing.assert_close(ours, x, atol=1e-4, rtol=0)


@pytest.mark.parametrize("sampler,steps", [("plms", 2), ("plms", 7), ("pndm", 4), ("pndm", 12), ("pndm", 8)])
def test_plms_and_pndm_follow_diffusers_step_for_step(sampler, steps):
    """On the exact Gaussian denoiser, every sub-step of both warm-ups, odd intervals included (diffusers keeps
    ᾱ in float32, hence the tolerance: a wrong weight anywhere shows as 1e-2)."""
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    oracle = GaussianOracle(d, MU, STD)
    sched = _pndm(skip_prk=sampler == "plms")
    sched.set_timesteps(steps)
    plan = SamplingPlan.build(d, sampler, steps, spacing="leading")
    assert plan.timesteps.tolist() == sched.timesteps.tolist()
    x_T = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x_T.clone()
    for t in sched.timesteps:
        x = sched.step(oracle(x, t.reshape(1).expand(64)), t, x).prev_sample
    stepper = Stepper(as_denoiser(oracle, False), d, "cpu")
    lane = stepper.start(plan, tuple(x_T.shape), None, x_start=x_T, clip=False)
    lane.x = x_T.clone()  # float64 throughout
    lane.history = [torch.zeros_like(x_T) for _ in range(plan.slots)]
    for _ in stepper.iterate(lane):
        pass
    torch.testing.assert_close(lane.x, x, atol=1e-5, rtol=0)


def test_pndm_needs_four_steps():
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    with pytest.raises(ValueError, match="at least 4"):
        SamplingPlan.build(d, "pndm", 3)


# ------------------------------------------------------------------------- score-SDE samplers on Gaussian data
def _moments(x: torch.Tensor) -> tuple[float, float]:
    return float(x.mean()), float(x.std())


@pytest.mark.parametrize("sampler,steps,kw", [("sde_em", 250, {}), ("pc", 100, dict(snr=0.16, corrector_steps=1)),
                                              ("plms", 20, {}), ("pndm", 20, {})])
def test_samplers_draw_the_data_distribution(sampler, steps, kw):
    """N(μ, s²) data in 256 dimensions: the samples' mean and spread come out right."""
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    x = sample(GaussianOracle(d, MU, STD), d, SamplingPlan.build(d, sampler, steps, **kw), (32, 1, 16, 16),
               torch.Generator().manual_seed(0), clip=False)
    mean, std = _moments(x)
    assert abs(mean - MU) < 0.02 and abs(std - STD) < 0.03, (mean, std)


def test_langevin_corrector_improves_a_coarse_predictor():
    """At 10 levels the reverse-diffusion predictor alone over-disperses; Langevin corrections pull the spread in."""
    d = GaussianDiffusion(NoiseSchedule.linear(1000))

    def spread(corrector_steps: int) -> float:
        plan = SamplingPlan.build(d, "pc", 10, snr=0.16, corrector_steps=corrector_steps)
        assert 10 * (1 + corrector_steps) == plan.K
        x = sample(GaussianOracle(d, MU, STD), d, plan, (32, 1, 16, 16), torch.Generator().manual_seed(0), clip=False)
        return abs(_moments(x)[1] - STD)

    assert spread(2) < spread(0)


class _ContinuousOracle:
    """The exact ε̂ at fractional network timesteps, through the VPSDE's α(t), σ(t)."""

    def __init__(self, sde: VPSDE) -> None:
        self.sde = sde

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        t = (timestep.double() + 1.0) / self.sde.N
        a, s = (v.to(x.dtype).reshape(-1, 1, 1, 1) for v in (self.sde.alpha(t), self.sde.sigma(t)))
        return s * (x - a * MU) / (a**2 * STD**2 + s**2)


def test_ode_rk45_transports_noise_to_the_data_exactly():
    """The flow of N(μ, s²) data keeps z = (x − αμ)/√(α²s² + σ²) fixed: each sample lands where z says."""
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    sde = VPSDE.of(d.schedule)
    plan = OdePlan.build(d, 1e-5, 1e-5)
    x_T = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stepper = Stepper(as_denoiser(_ContinuousOracle(sde), False), d, "cpu")
    lane = stepper.start(plan, tuple(x_T.shape), None, x_start=x_T, clip=False)
    lane.solver.y = x_T.clone()  # float64
    frames = list(stepper.iterate(lane))
    t0, t1 = torch.tensor(plan.t_start, dtype=torch.float64), torch.tensor(sde.t_min, dtype=torch.float64)
    z = (x_T - sde.alpha(t0) * MU) / (sde.alpha(t0) ** 2 * STD**2 + sde.sigma(t0) ** 2).sqrt()
    at_t_min = sde.alpha(t1) * MU + z * (sde.alpha(t1) ** 2 * STD**2 + sde.sigma(t1) ** 2).sqrt()
    torch.testing.assert_close(lane.solver.y, at_t_min, atol=1e-4, rtol=0)
    assert frames[-1].last and frames[-1].step == lane.solver.nfev and 10 < frames[-1].step < 200
    assert all(not f.last for f in frames[:-1]) and all(f.of >= f.step for f in frames)


def test_an_adaptive_run_batches_beside_fixed_step_runs():
    """ode_rk45, plms and pc lanes stepped together give each lane's samples as stepped alone, exactly (the
    continuous oracle works elementwise, so any difference would be the stepper's)."""
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    runs = [(OdePlan.build(d, 1e-3, 1e-3), 1), (SamplingPlan.build(d, "plms", 6), 2),
            (SamplingPlan.build(d, "pc", 5, snr=0.16, corrector_steps=1), 3), (SamplingPlan.build(d, "pndm", 5), 4)]
    stepper = Stepper(as_denoiser(_ContinuousOracle(VPSDE.of(d.schedule)), False), d, "cpu")

    def lanes():
        return [stepper.start(p, (2, 1, 4, 4), torch.Generator().manual_seed(s)) for p, s in runs]

    alone = []
    for lane in lanes():
        frames = list(stepper.iterate(lane))
        alone.append((lane.x, len(frames)))
    together, ticks = lanes(), 0
    while live := [lane for lane in together if not lane.done]:
        stepper.advance(live)
        ticks += 1
    assert ticks == max(k for _, k in alone)
    for (x, k), lane in zip(alone, together, strict=True):
        assert lane.step == k
        assert torch.equal(lane.x, x)


def _uncond():
    from engine import UNCONDITIONAL_MODEL

    return UNCONDITIONAL_MODEL


# ------------------------------------------------------------------------------------------- request fields
@pytest.mark.parametrize("fields,field", [(dict(sampler="ddim", snr=0.1), "snr"),
                                          (dict(sampler="pc", rtol=1e-3), "rtol"),
                                          (dict(sampler="ode_rk45", steps=10), "steps"),
                                          (dict(sampler="ode_rk45", spacing="leading"), "spacing"),
                                          (dict(sampler="pndm", steps=3), "steps"),
                                          (dict(sampler="pc", snr=0.0), "snr"),
                                          (dict(sampler="pc", corrector_steps=11), "corrector_steps")])
def test_sampler_fields_are_refused_where_they_do_not_apply(fields, field):
    m = load_model_file(_uncond())
    with pytest.raises(SpecError) as e:
        complete(SamplingSpec(**fields), m)
    assert e.value.field == field


def test_sampler_fields_get_their_defaults():
    m = load_model_file(_uncond())
    pc = complete(SamplingSpec(sampler="pc"), m)
    assert (pc.snr, pc.corrector_steps, pc.rtol) == (0.16, 1, None)
    ode = complete(SamplingSpec(sampler="ode_rk45"), m)
    assert ode.steps is None and ode.spacing is None and ode.rtol is not None and ode.snr is None


def test_review_mends_hold():
    """An ode_rk45 run cannot start from an image at t = 0 (where it would end); sde_em stays finite on the cosine
    schedule, whose β(t) is infinite at t = 1; pc's plan gets its Langevin defaults when built directly."""
    m = load_model_file(_uncond())
    with pytest.raises(SpecError) as e:
        complete(SamplingSpec(sampler="ode_rk45"), m, start_t=0)
    assert e.value.field == "init"
    cos = GaussianDiffusion(NoiseSchedule.cosine(1000))
    plan = SamplingPlan.build(cos, "sde_em", 50)
    assert all(bool(torch.isfinite(v).all()) for v in (plan.coef_xt, plan.coef_eps, plan.sigma))
    pc = SamplingPlan.build(GaussianDiffusion(NoiseSchedule.linear(1000)), "pc", 10)
    assert pc.K == 20 and float(pc.langevin.max()) > 0
