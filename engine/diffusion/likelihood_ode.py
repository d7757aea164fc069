"""Exact log-likelihood through the probability-flow ODE (Song et al. 2021, "Score-based generative modeling
through SDEs", §4.3 and Appendix D.2), the bound's counterpart in :mod:`engine.diffusion.likelihood`.

The ODE dx/dt = f(x, t) = −½β(t)·(x − ε̂(x, t)/σ(t)) (:meth:`VPSDE.ode_drift`) carries the VP-SDE's marginals
p_t, and along its paths the instantaneous change of variables (Chen et al. 2018, "Neural ODEs", Thm. 1) is
d log p_t(x(t))/dt = −∇·f(x(t), t). Integrating from x(t_min) = x up to t_max:

    log p_{t_min}(x) = log N(x(t_max); 0, I) + ∫_{t_min}^{t_max} ∇·f(x(t), t) dt,

with the prior N(0, I) standing in for p_{t_max} (α(t_max) < 0.01). x and the integral are solved together as
one augmented state [x.flatten(); ∫∇·f] by adaptive Dormand–Prince RK4(5) (:mod:`engine.diffusion.rk45`).

∇·f = tr(∂f/∂x) would cost D backward passes; the Hutchinson–Skilling estimator (Hutchinson 1989; Skilling
1989; used for CNFs by Grathwohl et al. 2019, FFJORD) costs one vector–Jacobian product per probe:
tr J = E[εᵀJε] for Rademacher ε, and εᵀJε = Σ ∇_x(f·ε) ⊙ ε. As in score_sde's ``get_likelihood_fn`` the
probes are drawn once and kept for the whole solve, so the right-hand side is a smooth function the
adaptive solver can integrate. The path x(t) does not depend on ε, so log p is estimated without bias.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .gaussian import Prediction, split_prediction
from .rk45 import solve
from .schedule import NoiseSchedule
from .sde import VPSDE

if TYPE_CHECKING:
    from ..models.base import Model

#: ε̂ of the data: ``eps_fn(x (B, C, H, W), timestep (B,) float) -> (B, C, H, W)``, timestep the network's
#: fractional N·t − 1; differentiable in x.
EpsFn = Callable[[Tensor, Tensor], Tensor]
#: The largest ᾱ(t_max) for which N(0, I) stands in for p_{t_max}: the prior's error in log p is O(ᾱ) nats per
#: dimension (1000-step linear: 4e-5; cosine at 0.9946: 7e-5; a 40-step linear 1e-4 → 0.02 ends at 0.67).
MAX_PRIOR_ALPHA_BAR = 1e-3


def likelihood_sde(schedule: NoiseSchedule) -> VPSDE:
    """The VP-SDE of ``schedule`` for :func:`ode_log_likelihood`; ValueError when there is none or its end is
    not N(0, I) (see :data:`MAX_PRIOR_ALPHA_BAR`)."""
    sde = VPSDE.of(schedule)
    _check_prior(sde)
    return sde


def _check_prior(sde: VPSDE) -> None:
    alpha_bar = math.exp(float(sde.log_alpha_bar(torch.tensor(sde.t_max, dtype=torch.float64))))
    if alpha_bar > MAX_PRIOR_ALPHA_BAR:
        raise ValueError(f"the schedule ends at ᾱ = {alpha_bar:.3g}, not near N(0, I) (ᾱ ≤ {MAX_PRIOR_ALPHA_BAR:g}), "
                         "so the ODE's prior would be wrong")


def eps_fn_of(net: Model, prediction: Prediction, sde: VPSDE) -> EpsFn:
    """``net`` as an :data:`EpsFn`: its output when it predicts ε; an x0 or v output converted to ε with the
    SDE's α(t), σ(t) at t = (timestep + 1)/N, the same ones the ODE's drift uses."""
    if prediction == "eps":
        return net

    def eps(x: Tensor, timestep: Tensor) -> Tensor:
        t = (timestep.double() + 1.0) / sde.N
        shape = (-1,) + (1,) * (x.ndim - 1)
        a, s = (c.to(x.dtype).reshape(shape) for c in (sde.alpha(t), sde.sigma(t)))
        return split_prediction(prediction, net(x, timestep), x, a, s)[1]

    return eps


def hutchinson_divergence(f: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """mean_k ε_kᵀ(∂f/∂x)ε_k per sample ``(B,)``, an unbiased estimate of ∇·f for Rademacher (or any zero-mean,
    identity-covariance) probes ``(K, B, …)``; ``f`` ``(B, …)`` must have been computed from ``x`` with grad.

    ∇_x(f·ε) = Jᵀε is one backward pass; its dot product with ε is εᵀJε. J is block diagonal over the batch
    (samples do not interact in the network), so each sample's sum is its own estimate.
    """
    total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for k, eps in enumerate(probes):
        (jt_eps,) = torch.autograd.grad(f, x, grad_outputs=eps, retain_graph=k < len(probes) - 1)
        total += (jt_eps * eps).flatten(1).sum(1)
    return total / len(probes)


def _augmented_drift(eps_fn: EpsFn, sde: VPSDE, shape: torch.Size, probes: Tensor) -> Callable[[float, Tensor], Tensor]:
    """d/dt of the state [x.flatten() (B·D); ∫∇·f (B)]: [f(x, t); Hutchinson's ∇·f(x, t)]."""
    B = shape[0]

    def drift(t: float, y: Tensor) -> Tensor:
        tt = torch.full((B,), t, dtype=torch.float64, device=y.device)
        with torch.enable_grad():
            x = y[:-B].reshape(shape).detach().requires_grad_(True)
            f = sde.ode_drift(x, eps_fn(x, sde.model_timestep(tt).to(y.dtype)), tt)
            div = hutchinson_divergence(f, x, probes)
        return torch.cat([f.detach().flatten(), div.detach()])

    return drift


@torch.no_grad()
def ode_log_likelihood(eps_fn: EpsFn, sde: VPSDE, x: Tensor, *, rtol: float = 1e-5, atol: float = 1e-5,
                       generator: torch.Generator | None = None, probes: int = 1,
                       on_step: Callable[[float], None] | None = None,
                       max_evaluations: int | None = None) -> tuple[Tensor, int]:
    """log p(x) in nats per sample ``(B,)`` (float64), x ``(B, C, H, W)`` taken as x(t_min); and the evaluations
    the solve used (each is one ``eps_fn`` call on the batch and ``probes`` backward passes).

    The whole batch is one ODE system (one step size, the error norm over every entry), as in score_sde.
    ``probes`` Rademacher vectors per sample, drawn from ``generator``, average into each divergence: more
    cost no extra network calls, only backward passes, and cut the estimator's variance by their number.
    ``on_step`` hears t after every accepted step (a progress bar); past ``max_evaluations``, RuntimeError.
    ValueError for ``probes`` < 1 or a schedule that does not end near N(0, I) (:func:`likelihood_sde`).
    """
    if probes < 1:
        raise ValueError(f"probes must be ≥ 1, got {probes}")
    _check_prior(sde)
    B, D = x.shape[0], x[0].numel()
    gdev = generator.device if generator is not None else "cpu"
    signs = torch.randint(0, 2, (probes, *x.shape), generator=generator, device=gdev)
    eps = (2 * signs - 1).to(device=x.device, dtype=x.dtype)
    y0 = torch.cat([x.detach().flatten(), x.new_zeros(B)])
    y, nfev = solve(_augmented_drift(eps_fn, sde, x.shape, eps), y0, sde.t_min, sde.t_max, rtol, atol, on_step,
                    max_evaluations)
    z, integral = y[:-B].reshape(B, D).double(), y[-B:].double()
    prior = -0.5 * D * math.log(2 * math.pi) - 0.5 * z.square().sum(1)
    return prior + integral, nfev


def ode_bits_per_dim(eps_fn: EpsFn, sde: VPSDE, x: Tensor, generator: torch.Generator | None = None, *,
                     rtol: float = 1e-5, atol: float = 1e-5, probes: int = 1,
                     on_step: Callable[[float], None] | None = None,
                     max_evaluations: int | None = None) -> tuple[Tensor, int]:
    """Bits per dimension ``(B,)`` of 8-bit images ``x`` ``(B, C, H, W)``, given as uint8 levels or as floats on
    the 8-bit grid in [−1, 1]; and the solve's evaluations.

    Uniform dequantisation, as score_sde's evaluation does: x̃ = (x_uint8 + U)/256, U ~ U[0, 1)^D, mapped to
    [−1, 1) as 2x̃ − 1 (U drawn from ``generator`` before the probes). Level k then owns the cell
    [k/128 − 1, (k + 1)/128 − 1)^D of volume 128^(−D) = 2^(−7D), so by Jensen
        P(k) = 2^(−7D)·E_U[p(x̃)] ≥ 2^(−7D)·exp E_U[log p(x̃)],  i.e.  −log₂ P(k)/D ≤ E_U[−log p(x̃)/(D ln 2)] + 7:
    bits/dim = −log p(x̃)/(D ln 2) + 7, an unbiased estimate of an upper bound on the discrete model's bits/dim
    (score_sde's offset 7 − inverse_scaler(−1) = 7 for data in [−1, 1]).
    """
    levels = x.double() if x.dtype == torch.uint8 else ((x.double() + 1.0) * 127.5).round().clamp(0, 255)
    dtype = torch.float32 if x.dtype == torch.uint8 else x.dtype
    gdev = generator.device if generator is not None else "cpu"
    u = torch.rand(x.shape, generator=generator, device=gdev, dtype=torch.float64).to(x.device)
    x_deq = ((levels + u) / 128.0 - 1.0).to(dtype)
    logp, nfev = ode_log_likelihood(eps_fn, sde, x_deq, rtol=rtol, atol=atol, generator=generator, probes=probes,
                                    on_step=on_step, max_evaluations=max_evaluations)
    return -logp / (x[0].numel() * math.log(2.0)) + 7.0, nfev
