"""The Dormand–Prince stage machine against closed forms and scipy's RK45, which it follows step for step."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from engine.diffusion.rk45 import DormandPrince, solve

F64 = torch.float64
# a damped rotation: y' = A·y, y(t) = exp(A(t − t0))·y0
A = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=F64)


def _forced(t: float, y: np.ndarray) -> np.ndarray:
    """A damped oscillator with a quadratic, time-varying force: no closed form, smooth, not stiff."""
    return np.array([y[1], -y[0] + 0.5 * math.sin(t) * y[0] ** 2 - 0.1 * y[1]])


def _torch(f: Callable[[float, np.ndarray], np.ndarray]) -> Callable[[float, torch.Tensor], torch.Tensor]:
    """A numpy right-hand side as the machine's."""
    return lambda t, y: torch.from_numpy(f(t, y.numpy()))


@pytest.mark.parametrize("t0,t1", [(0.0, 3.0), (3.0, 0.0)])
def test_linear_ode_matches_its_solution_and_scipy(t0, t1):
    y0 = torch.tensor([1.0, -0.5], dtype=F64)
    y, nfev = solve(lambda t, y: A @ y, y0, t0, t1, rtol=1e-8, atol=1e-10)
    exact = torch.linalg.matrix_exp(A * (t1 - t0)) @ y0
    assert torch.allclose(y, exact, rtol=1e-6, atol=1e-8)
    ref = solve_ivp(lambda t, y: A.numpy() @ y, (t0, t1), y0.numpy(), method="RK45", rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(y.numpy(), ref.y[:, -1], rtol=1e-9, atol=1e-12)
    assert abs(nfev - ref.nfev) <= 0.3 * ref.nfev


@pytest.mark.parametrize("t0,t1", [(0.0, 10.0), (10.0, 0.0)])
def test_nonlinear_system_matches_scipy(t0, t1):
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    y, nfev = solve(_torch(_forced), y0, t0, t1, rtol=1e-6, atol=1e-8)
    ref = solve_ivp(_forced, (t0, t1), y0.numpy(), method="RK45", rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(y.numpy(), ref.y[:, -1], rtol=1e-7, atol=1e-9)
    assert abs(nfev - ref.nfev) <= 0.3 * ref.nfev
    # the tolerance is met: a 100× tighter solve agrees to about rtol
    tight, _ = solve(_torch(_forced), y0, t0, t1, rtol=1e-8, atol=1e-10)
    assert torch.allclose(y, tight, rtol=2e-5, atol=2e-5)


def test_machine_counts_every_evaluation_and_lands_on_t1_exactly():
    t1 = 1 / 3  # not reachable by summing steps: the last one is clipped
    calls, moved = [], 0
    m = DormandPrince(torch.tensor([1.0, -0.5], dtype=torch.float32), 0.0, t1, rtol=1e-4, atol=1e-6)
    while not m.done:
        t, y = m.point()
        assert m.point()[0] == t  # asking again is free and changes nothing
        calls.append(t)
        f = A.float() @ y
        if m.feed(f):
            moved += 1
            assert m.t == t and torch.equal(m.y, y) and m.last_f is f  # FSAL: the last stage is f(t, y)
    assert m.t == t1 and calls[-1] == t1 and m.y.dtype == torch.float32
    assert m.nfev == len(calls) == 2 + 6 * (m.accepted + m.rejected)  # f(t0), Hairer's trial point, 6 per try
    assert moved == m.accepted >= 2
    exact = torch.linalg.matrix_exp(A * t1) @ torch.tensor([1.0, -0.5], dtype=F64)
    assert torch.allclose(m.y.double(), exact, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="done"):
        m.point()
    with pytest.raises(RuntimeError, match="done"):
        m.feed(m.y)


def test_a_too_large_first_step_is_rejected_and_shrunk_as_scipy_does():
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    m = DormandPrince(y0, 0.0, 10.0, rtol=1e-6, atol=1e-8, first_step=4.0)
    while not m.done:
        m.feed(_torch(_forced)(*m.point()))
    ref = solve_ivp(_forced, (0.0, 10.0), y0.numpy(), method="RK45", rtol=1e-6, atol=1e-8, first_step=4.0)
    assert m.rejected >= 1 and m.nfev == 1 + 6 * (m.accepted + m.rejected)  # no trial point
    assert abs(m.nfev - ref.nfev) <= 0.3 * ref.nfev
    np.testing.assert_allclose(m.y.numpy(), ref.y[:, -1], rtol=1e-7, atol=1e-9)


def test_interleaved_machines_equal_separate_solves():
    """Two integrations, opposite directions, share each "batched" call: each gets what it would alone."""
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    fwd, back = DormandPrince(y0, 0.0, 2.0, 1e-6, 1e-8), DormandPrince(y0, 5.0, 1.0, 1e-6, 1e-8)
    while not (fwd.done and back.done):
        live = [m for m in (fwd, back) if not m.done]
        points = [m.point() for m in live]
        batch = torch.stack([_torch(_forced)(t, y) for t, y in points])  # stands in for one network call
        for m, f in zip(live, batch, strict=True):
            m.feed(f)
    for m, (t0, t1) in ((fwd, (0.0, 2.0)), (back, (5.0, 1.0))):
        y, nfev = solve(_torch(_forced), y0, t0, t1, 1e-6, 1e-8)
        assert torch.equal(m.y, y) and m.nfev == nfev


def test_empty_interval_and_non_finite_f():
    y0 = torch.ones(3)
    assert solve(lambda t, y: y, y0, 0.5, 0.5, 1e-3, 1e-6) == (y0, 0)
    with pytest.raises(RuntimeError, match="not finite"):
        solve(lambda t, y: y * float("nan"), y0, 0.0, 1.0, 1e-3, 1e-6)
    with pytest.raises(RuntimeError, match="not finite"):
        solve(lambda t, y: y * (math.inf if t > 0.2 else 1.0), y0, 0.0, 1.0, 1e-3, 1e-6)
    with pytest.raises(ValueError, match="shape"):
        DormandPrince(y0, 0.0, 1.0, 1e-3, 1e-6).feed(torch.ones(2))
