"""The probability-flow ODE likelihood against Gaussian data, whose ε-prediction and marginals are closed forms.

For x0 ~ N(μ, Σ), Σ = Q·diag(λ)·Qᵀ, the VP-SDE marginal at t is N(α(t)μ, A(t)) with A = α²Σ + σ²I, and the exact
ε-prediction is E[ε | x_t] = σ·A⁻¹(x − αμ). The drift's Jacobian is then −½β(I − A⁻¹), so its exact divergence
is −½β·(D − Σ_i 1/(α²λ_i + σ²)), the same for every x.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor

from engine import NoiseSchedule
from engine.diffusion.likelihood_ode import eps_fn_of, hutchinson_divergence, ode_bits_per_dim, ode_log_likelihood
from engine.diffusion.rk45 import solve
from engine.diffusion.sde import VPSDE

F64 = torch.float64
LINEAR = VPSDE.of(NoiseSchedule.linear(1000))
MU = 0.3


class GaussianData:
    """Closed forms for x0 ~ N(μ, Q·diag(λ)·Qᵀ) in D = len(λ) dims, images shaped ``(B, 1, 4, D/4)``."""

    def __init__(self, sde: VPSDE, lam: Tensor, Q: Tensor | None = None) -> None:
        self.sde, self.lam = sde, lam
        self.D = len(lam)
        self.Q = torch.eye(self.D, dtype=F64) if Q is None else Q

    def _coefs(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """α(t), σ(t) ``(…, 1)`` and the eigenvalues of A(t) ``(…, D)``."""
        a, s = self.sde.alpha(t)[..., None], self.sde.sigma(t)[..., None]
        return a, s, a**2 * self.lam + s**2

    def eps(self, x: Tensor, timestep: Tensor) -> Tensor:
        """The exact ε-prediction σ·A⁻¹(x − αμ) at the network's timestep ``(B,)``."""
        a, s, var = self._coefs((timestep.double() + 1.0) / self.sde.N)
        coords = (x.flatten(1) - a * MU) @ self.Q
        return (s * (coords / var) @ self.Q.T).reshape(x.shape).to(x.dtype)

    def draw(self, n: int, g: torch.Generator) -> Tensor:
        """``n`` points of the t_min marginal, ``(n, 1, 4, D/4)``."""
        a, _, var = self._coefs(torch.tensor(self.sde.t_min, dtype=F64))
        coords = torch.randn(n, self.D, generator=g, dtype=F64) * var.sqrt()
        return (coords @ self.Q.T + a * MU).reshape(n, 1, 4, -1)

    def log_density(self, x: Tensor) -> Tensor:
        """log N(x; αμ, A) at t_min per point ``(B,)``."""
        a, _, var = self._coefs(torch.tensor(self.sde.t_min, dtype=F64))
        coords = (x.flatten(1) - a * MU) @ self.Q
        return -0.5 * torch.log(2 * math.pi * var).sum() - 0.5 * (coords**2 / var).sum(1)

    def divergence(self, t: float) -> Tensor:
        """The drift's exact divergence at time ``t``."""
        tt = torch.tensor(t, dtype=F64)
        _, _, var = self._coefs(tt)
        return -0.5 * self.sde.beta(tt) * (self.D - (1.0 / var).sum())

    def exact_ode_log_likelihood(self, x: Tensor) -> Tensor:
        """The ODE's log-likelihood with the exact divergence in place of Hutchinson's."""
        B = x.shape[0]

        def drift(t: float, y: Tensor) -> Tensor:
            xs, tt = y[:-B].reshape(x.shape), torch.full((B,), t, dtype=F64)
            f = self.sde.ode_drift(xs, self.eps(xs, self.sde.model_timestep(tt)), tt)
            return torch.cat([f.flatten(), self.divergence(t).expand(B)])

        y, _ = solve(drift, torch.cat([x.flatten(), x.new_zeros(B)]), self.sde.t_min, self.sde.t_max, 1e-5, 1e-5)
        z = y[:-B].reshape(B, -1)
        return -0.5 * self.D * math.log(2 * math.pi) - 0.5 * (z**2).sum(1) + y[-B:]


def _correlated(D: int, lo: float, hi: float) -> GaussianData:
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(0), dtype=F64))
    return GaussianData(LINEAR, torch.linspace(lo, hi, D, dtype=F64), Q)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ode_log_likelihood_of_gaussian_data_is_its_density(schedule):
    """x0 ~ N(0.3, 0.5²·I) in 16 dims: the ODE's log p of points of the t_min marginal is that marginal's density.

    With isotropic data the Jacobian is a multiple of I, and a Rademacher εᵀJε is then exact: this checks the
    ODE, its time map, prior and sign; the correlated case below checks the estimator's noise.
    """
    sde = VPSDE.of(getattr(NoiseSchedule, schedule)(1000))
    data = GaussianData(sde, torch.full((16,), 0.25, dtype=F64))
    x = data.draw(8, torch.Generator().manual_seed(1))
    logp, nfev = ode_log_likelihood(data.eps, sde, x, generator=torch.Generator().manual_seed(2))
    exact = data.log_density(x)
    assert logp.shape == (8,) and logp.dtype == F64
    assert ((logp - exact).abs() < 0.01 * exact.abs()).all(), (logp, exact)
    assert 20 < nfev < 200


def test_hutchinson_is_the_exact_divergence_in_expectation():
    """εᵀJε averaged over all 2^D sign vectors is tr J exactly (E[ε_i ε_j] = δ_ij holds over that set); a
    random subset of them is within its standard error of it."""
    data = _correlated(8, 0.1, 0.6)
    x = data.draw(2, torch.Generator().manual_seed(3)).requires_grad_(True)
    t = torch.full((2,), 0.05, dtype=F64)

    def drift(v: Tensor) -> Tensor:
        return LINEAR.ode_drift(v, data.eps(v, LINEAR.model_timestep(t)), t)

    jac = torch.autograd.functional.jacobian(drift, x).reshape(2, 8, 2, 8)
    trace = torch.stack([jac[b, :, b].trace() for b in range(2)])
    assert torch.allclose(trace, data.divergence(0.05).expand(2))
    every = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=8)), dtype=F64)  # (256, 8)
    probes = every[:, None, :].expand(256, 2, 8).reshape(256, 2, 1, 4, 2)
    assert torch.allclose(hutchinson_divergence(drift(x), x, probes), trace, rtol=1e-12, atol=1e-12)
    one_each = torch.stack([hutchinson_divergence(drift(x), x, p[None]) for p in probes[:64]])  # (64, 2)
    se = one_each.std(0) / 8
    assert (one_each.std(0) > 0).all() and ((one_each.mean(0) - trace).abs() < 4 * se).all()


def test_ode_log_likelihood_with_hutchinson_matches_exact_divergence_and_density():
    """Correlated Gaussian data, where one probe's εᵀJε is noisy: 256 probes per solve bring the estimate within
    its standard error of the exact-divergence ODE, and their mean within 1 % of the closed-form density."""
    data = _correlated(16, 0.15, 0.6)
    x = data.draw(8, torch.Generator().manual_seed(4))
    exact_div = data.exact_ode_log_likelihood(x)
    exact = data.log_density(x)
    assert torch.allclose(exact_div, exact, rtol=2e-3)  # the ODE and prior alone are this close
    single = torch.stack([ode_log_likelihood(data.eps, LINEAR, x, generator=torch.Generator().manual_seed(s))[0]
                          for s in range(6)])
    assert (single.std(0) > 0.1).all()  # one probe is noisy here
    logp, _ = ode_log_likelihood(data.eps, LINEAR, x, generator=torch.Generator().manual_seed(5), probes=256)
    se = single.std(0).mean() / 16  # 256 probes
    assert ((logp - exact_div).abs() < 4 * se).all()
    assert abs(float(logp.mean() - exact.mean())) < 0.01 * abs(float(exact.mean()))


def test_bits_per_dim_is_the_discrete_probability_of_the_8_bit_cell():
    """Uniform dequantisation and the + 7: for 8-bit data of N(0.3, 0.5²·I), the ODE's bits/dim is −log₂ P(cell)/D
    of the model's exact Gaussian density integrated over the cell [k/128 − 1, (k + 1)/128 − 1)^D (Jensen's gap
    is ~1e-5 bits for a density this smooth; one U's noise, ~2e-3 bits, is averaged over 16 draws, so a wrong cell
    width such as 2/255 would show as log₂(128/127.5) = 6e-3 bits), and uint8 or float input on the grid agree."""
    data = GaussianData(LINEAR, torch.full((16,), 0.25, dtype=F64))
    g = torch.Generator().manual_seed(6)
    x0 = (torch.randn(8, 1, 4, 4, generator=g, dtype=F64) * 0.5 + MU).clamp(-1, 1)
    levels = ((x0 + 1) * 127.5).round().to(torch.uint8)
    draws = levels.repeat_interleave(16, dim=0)  # 16 rows per image, each with its own U
    bpd, _ = ode_bits_per_dim(data.eps, LINEAR, draws.double() / 127.5 - 1, torch.Generator().manual_seed(7))
    again, _ = ode_bits_per_dim(data.eps, LINEAR, draws, torch.Generator().manual_seed(7))
    assert bpd.dtype == F64 and torch.allclose(again, bpd, rtol=1e-5)  # uint8 input runs in float32
    bpd = bpd.reshape(8, 16).mean(1)
    t = torch.tensor(LINEAR.t_min, dtype=F64)
    mean, sd = LINEAR.alpha(t) * MU, (LINEAR.alpha(t) ** 2 * 0.25 + LINEAR.sigma(t) ** 2).sqrt()
    lo, hi = levels.double() / 128 - 1, (levels.double() + 1) / 128 - 1
    cell = torch.special.ndtr((hi - mean) / sd) - torch.special.ndtr((lo - mean) / sd)
    exact = -cell.log().flatten(1).sum(1) / (16 * math.log(2))
    assert torch.allclose(bpd, exact, atol=2e-3), (bpd, exact)


def test_eps_fn_of_converts_x0_and_v_networks():
    data = GaussianData(LINEAR, torch.full((16,), 0.25, dtype=F64))
    x, ts = data.draw(3, torch.Generator().manual_seed(8)), torch.tensor([0.0, 412.5, 999.0], dtype=F64)
    a, s = (c((ts + 1) / LINEAR.N).reshape(3, 1, 1, 1) for c in (LINEAR.alpha, LINEAR.sigma))

    def x0_net(x: Tensor, timestep: Tensor) -> Tensor:
        return (x - s * data.eps(x, timestep)) / a

    def v_net(x: Tensor, timestep: Tensor) -> Tensor:
        return a * data.eps(x, timestep) - s * x0_net(x, timestep)

    assert eps_fn_of(data.eps, "eps", LINEAR) == data.eps  # no wrapper
    for net, prediction in ((x0_net, "x0"), (v_net, "v")):
        assert torch.allclose(eps_fn_of(net, prediction, LINEAR)(x, ts), data.eps(x, ts), atol=1e-9)
    with pytest.raises(ValueError, match="probes"):
        ode_log_likelihood(data.eps, LINEAR, x, probes=0)
