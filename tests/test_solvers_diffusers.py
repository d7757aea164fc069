"""DPM-Solver++ plans against diffusers' DPMSolverMultistepScheduler: same UNet, x_T and noise."""

import pytest
import torch

from engine import GaussianDiffusion, NoiseSchedule, SamplingPlan, load_model_file, sample
from tests.tiny_diffusers import tiny_unet

diffusers = pytest.importorskip("diffusers", reason="the optional 'diffusers' extra is not installed")


def _diffusers_run(unet, sched, x_T, noises):
    x = x_T
    for t, z in zip(sched.timesteps, noises, strict=False):
        x = sched.step(unet(x, t).sample, t, x, variance_noise=z).prev_sample
    return x


class _Out:
    """diffusers' model-output wrapper, for driving its schedulers with our UNet."""

    def __init__(self, sample: torch.Tensor) -> None:
        self.sample = sample


@pytest.fixture(scope="module")
def bundled():
    """The bundled unconditional model."""
    from engine import UNCONDITIONAL_MODEL

    return load_model_file(UNCONDITIONAL_MODEL)


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(diffusers)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [7, 20])
def test_timesteps_match_diffusers(spacing, steps):
    kw = dict(num_train_timesteps=1000, beta_schedule="linear", timestep_spacing=spacing, steps_offset=0)
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    dpm = diffusers.DPMSolverMultistepScheduler(**kw)
    dpm.set_timesteps(steps)
    assert SamplingPlan.build(d, "dpmpp_2m", steps, spacing=spacing).timesteps.tolist() == dpm.timesteps.tolist()
    ddim = diffusers.DDIMScheduler(**kw)
    ddim.set_timesteps(steps)
    assert SamplingPlan.build(d, "ddim", steps, spacing=spacing).timesteps.tolist() == ddim.timesteps.tolist()


def _scheduler(cls, algorithm: str, order: int, betas=None):
    return cls(num_train_timesteps=1000, trained_betas=betas, algorithm_type=algorithm, solver_order=order,
               lower_order_final=True, final_sigmas_type="zero", timestep_spacing="linspace", thresholding=False)


class _ThirdOrderDPMSolver(diffusers.DPMSolverMultistepScheduler):
    """diffusers' multistep scheduler with the order-3 update's second divided difference doubled.

    ``D2 = (D1_0 − D1_1)/(r0 + r1)`` estimates h²·x̂0''/2, while the update's weight on it,
    α(½ − (e^{−h} − 1 + h)/h²) ≈ α·h/6, needs h²·x̂0'' to match the Taylor term ∫e^{u−h}u²/2 du·x̂0''
    ≈ h³/6·x̂0''. With the stock weight the "3M" update is only second order (see the oracle test)."""

    def multistep_dpm_solver_third_order_update(self, model_output_list, *args, sample=None, **kwargs):
        m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]
        idx = self.step_index
        alpha_sigma = [self._sigma_to_alpha_sigma_t(self.sigmas[j]) for j in (idx + 1, idx, idx - 1, idx - 2)]
        lam = [torch.log(a) - torch.log(s) for a, s in alpha_sigma]
        (a_t, s_t), (_, s_s0) = alpha_sigma[0], alpha_sigma[1]
        h = lam[0] - lam[1]
        r0, r1 = (lam[1] - lam[2]) / h, (lam[2] - lam[3]) / h
        d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = 2.0 * (d1_0 - d1_1) / (r0 + r1)
        em1 = torch.expm1(-h)
        x = (s_t / s_s0) * sample - a_t * em1 * m0 + a_t * (em1 / h + 1.0) * d1 - a_t * ((em1 + h) / h**2 - 0.5) * d2
        return x


@pytest.mark.parametrize("sampler,algorithm,order,cls", [
    ("dpmpp_2m", "dpmsolver++", 2, diffusers.DPMSolverMultistepScheduler),
    ("dpmpp_2m_sde", "sde-dpmsolver++", 2, diffusers.DPMSolverMultistepScheduler),
    ("dpmpp_3m", "dpmsolver++", 3, _ThirdOrderDPMSolver),
])
@pytest.mark.parametrize("steps", [8, 20])
def test_dpm_solvers_match_diffusers(bundled, sampler, algorithm, order, cls, steps):
    """The bundled UNet, the same x_T and per-step noise, no clipping: our plan reproduces the scheduler's loop."""
    sched = _scheduler(cls, algorithm, order, bundled.diffusion.schedule.betas.float().numpy())
    sched.set_timesteps(steps)
    # The same noise levels on both sides: diffusers keeps ᾱ as a float32 cumulative product, whose drift
    # (~1e-5 at t = 999) the order-3 divided differences amplify past the tolerance.
    ab = bundled.diffusion.schedule.alpha_bars[sched.timesteps]
    sched.sigmas = torch.cat([((1 - ab) / ab).sqrt(), ab.new_zeros(1)])
    g = torch.Generator().manual_seed(7)
    shape = (4, *bundled.sample_shape)
    x_T = torch.randn(shape, generator=g)
    noises = [torch.randn(shape, generator=g) for _ in range(steps)]
    net = bundled.net
    with torch.inference_mode():
        ref = _diffusers_run(lambda x, t: _Out(net(x, t.expand(x.shape[0]))), sched, x_T, noises)
        plan = SamplingPlan.build(bundled.diffusion, sampler, steps, spacing="linspace")
        ours = sample(net, bundled.diffusion, plan, shape, torch.Generator().manual_seed(7), clip=False)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_stock_diffusers_3m_differs_only_by_the_second_difference(unet):
    """The stock scheduler and ours agree through the warm-up (orders 1 and 2) and part ways at the first
    order-3 step: what differs is that update alone."""
    stock = _scheduler(diffusers.DPMSolverMultistepScheduler, "dpmsolver++", 3)
    fixed = _scheduler(_ThirdOrderDPMSolver, "dpmsolver++", 3)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        for s in (stock, fixed):
            s.set_timesteps(20)
        two = [_diffusers_run(unet, s, x_T, [None] * 2) for s in (stock, fixed)]
        for s in (stock, fixed):
            s.set_timesteps(20)
        three = [_diffusers_run(unet, s, x_T, [None] * 3) for s in (stock, fixed)]
    assert torch.equal(two[0], two[1]) and not torch.allclose(three[0], three[1], atol=1e-6)
