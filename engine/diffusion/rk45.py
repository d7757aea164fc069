"""Adaptive Dormand–Prince RK4(5) (Dormand & Prince 1980, "A family of embedded Runge-Kutta formulae") as a
stage machine: each call wants ONE derivative f(t, y), so a server can put the stages of many integrations,
each at its own t and step size, into one batched network call, between other work.

    m = DormandPrince(y0, t0, t1, rtol, atol)
    while not m.done:
        t, y = m.point()
        m.feed(f(t, y))

The arithmetic is scipy's ``RK45`` (``scipy.integrate._ivp.rk``), so the two agree step for step:
- stages c = (0, 1/5, 3/10, 4/5, 8/9, 1); the order-5 solution is propagated (local extrapolation) and the
  order-4 one only estimates the error; FSAL: the last stage, f(t + h, y_new), is the next step's first;
- error norm ‖e‖ = RMS of e_i/(atol + rtol·max(|y_i|, |y_new,i|)); a step is accepted when ‖e‖ < 1;
- new step h ← h·clip(0.9·‖e‖^(−1/5), 0.2, 10), the growth capped at 1 right after a rejection;
- first step by Hairer, Nørsett & Wanner, "Solving ODEs I", §II.4 (scipy's ``select_initial_step``), whose
  trial evaluation goes through point()/feed() like any other;
- the last step is clipped to land on t1 exactly.
Departures: f that is not finite raises at once (scipy shrinks h until it is too small); no max_step, no dense
output, no events.

Everything runs in the dtype and on the device of y0; t is a Python float.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
# order-5 minus order-4 weights over the 7 stages, the 7th being f(t + h, y_new)
_E = (-71 / 57600, 0.0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40)
SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0
_EXPONENT = -1 / 5  # the controlled error is the order-4 estimate's, ∝ h^5


def _rms(x: Tensor) -> float:
    return float(torch.linalg.vector_norm(x)) / math.sqrt(x.numel())


def _combine(y: Tensor, h: float, weights: tuple[float, ...], K: list[Tensor]) -> Tensor:
    """y + h·Σ_j w_j·K_j, skipping zero weights."""
    out = y.clone()
    for w, k in zip(weights, K, strict=True):
        if w:
            out.add_(k, alpha=h * w)
    return out


class DormandPrince:
    """One integration of dy/dt = f(t, y) from ``t0`` to ``t1`` (either direction), one evaluation per call.

    ``y0``: any shape; f must return that shape. Attributes: ``t``, ``y`` (the last accepted point), ``done``
    (y is y(t1)), ``nfev`` (evaluations fed, the initial f(t0, y0) and Hairer's trial one included),
    ``accepted``/``rejected`` (steps), ``last_f`` (f(t, y) once known: FSAL, for callers that want it).
    Raises RuntimeError when the step size falls below 10 ulps of t (too stiff for the tolerances) or f is
    not finite.
    """

    def __init__(self, y0: Tensor, t0: float, t1: float, rtol: float, atol: float,
                 first_step: float | None = None) -> None:
        if first_step is not None and first_step <= 0:
            raise ValueError(f"first_step must be > 0, got {first_step}")
        self.t, self.y, self.t1 = float(t0), y0, float(t1)
        self.rtol, self.atol = rtol, atol
        self.direction = 1.0 if t1 >= t0 else -1.0
        self.nfev = self.accepted = self.rejected = 0
        self.done = self.t == self.t1
        self.last_f: Tensor | None = None
        self._h_abs = None if first_step is None else min(first_step, abs(self.t1 - self.t))
        self._phase = "f0"  # "f0": f(t0, y0) wanted; "hairer": the trial point; "step": a stage of a step try
        self._at: tuple[float, Tensor] = (self.t, y0)
        self._K: list[Tensor] = []  # this try's stages, K[0] = last_f
        self._h, self._t_new = 0.0, self.t  # this try's signed step and where it ends
        self._y_new = y0
        self._retry = False  # the current step has been rejected at least once
        self._hairer: tuple[float, Tensor] = (0.0, y0)  # h0 and the error scale between trial point and feed

    def point(self) -> tuple[float, Tensor]:
        """``(t, y)`` at which f is wanted next."""
        if self.done:
            raise RuntimeError("the integration is done; there is no next point")
        return self._at

    def feed(self, f: Tensor) -> bool:
        """Give f at :meth:`point`; True when this completed an accepted step (``t``, ``y`` moved)."""
        if self.done:
            raise RuntimeError("the integration is done; it takes no more evaluations")
        if f.shape != self.y.shape:
            raise ValueError(f"f has shape {tuple(f.shape)}, y {tuple(self.y.shape)}")
        self.nfev += 1
        if self._phase == "f0":
            self.last_f = f
            if self._h_abs is None:
                self._trial_point(f)
            else:
                self._try_step(first_try=True)
            return False
        if self._phase == "hairer":
            self._h_abs = self._initial_step(f)
            self._try_step(first_try=True)
            return False
        self._K.append(f)
        s = len(self._K)
        if s < 6:  # the next stage of the step
            self._at = (self.t + _C[s] * self._h, _combine(self.y, self._h, _A[s], self._K))
            return False
        if s == 6:  # the order-5 solution; its f is the 7th stage, and the next step's first if accepted
            self._y_new = _combine(self.y, self._h, _B, self._K)
            self._at = (self._t_new, self._y_new)
            return False
        return self._finish_step(f)

    # ------------------------------------------------------------------ step control
    def _trial_point(self, f0: Tensor) -> None:
        """Hairer's h0 = 0.01·‖y0‖/‖f0‖ (1e-6 when either is tiny) and the Euler point y0 + h0·f0 to try."""
        scale = self.atol + self.y.abs() * self.rtol
        d0, d1 = _rms(self.y / scale), _rms(f0 / scale)
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        h0 = min(h0, abs(self.t1 - self.t))
        self._hairer = (h0, scale)
        self._phase = "hairer"
        self._at = (self.t + h0 * self.direction, self.y + (h0 * self.direction) * f0)

    def _initial_step(self, f1: Tensor) -> float:
        """h = min(100·h0, (0.01/max(d1, d2))^(1/5), |t1 − t0|), d2 ≈ ‖f'‖ from the trial evaluation."""
        h0, scale = self._hairer
        assert self.last_f is not None
        d1 = _rms(self.last_f / scale)
        d2 = _rms((f1 - self.last_f) / scale) / h0
        h1 = max(1e-6, h0 * 1e-3) if d1 <= 1e-15 and d2 <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
        return min(100 * h0, h1, abs(self.t1 - self.t))

    def _try_step(self, first_try: bool) -> None:
        """Start a try of the step from (t, y) with |h| = the current step size, clipped to end at t1."""
        assert self._h_abs is not None and self.last_f is not None
        min_step = 10 * abs(math.nextafter(self.t, self.direction * math.inf) - self.t)
        if not math.isfinite(self._h_abs):
            raise RuntimeError(f"f is not finite at t = {self.t:.6g}")
        if first_try:
            self._h_abs = max(self._h_abs, min_step)
        elif self._h_abs < min_step:
            raise RuntimeError(f"step size fell below {min_step:.3g} at t = {self.t:.6g}: the ODE is too stiff "
                               "for these tolerances")
        t_new = self.t + self._h_abs * self.direction
        if self.direction * (t_new - self.t1) > 0:
            t_new = self.t1
        self._t_new, self._h = t_new, t_new - self.t
        self._h_abs = abs(self._h)
        self._phase = "step"
        self._K = [self.last_f]
        self._at = (self.t + _C[1] * self._h, _combine(self.y, self._h, _A[1], self._K))

    def _finish_step(self, f_new: Tensor) -> bool:
        """Accept or reject the try whose 7 stages are in; set up the next try. True when accepted."""
        assert self._h_abs is not None
        err = _combine(torch.zeros_like(self.y), self._h, _E, self._K)
        scale = self.atol + torch.maximum(self.y.abs(), self._y_new.abs()) * self.rtol
        norm = _rms(err / scale)
        if not math.isfinite(norm):  # scipy would shrink h until it is too small; no step size mends a NaN
            raise RuntimeError(f"f is not finite near t = {self.t:.6g}")
        if norm < 1:
            factor = MAX_FACTOR if norm == 0 else min(MAX_FACTOR, SAFETY * norm**_EXPONENT)
            self._h_abs *= min(1.0, factor) if self._retry else factor
            self.t = self._t_new
            self.y, self.last_f = self._y_new, f_new
            self.accepted += 1
            self._retry = False
            self.done = self.t == self.t1
            if not self.done:
                self._try_step(first_try=True)
            return True
        self._h_abs *= max(MIN_FACTOR, SAFETY * norm**_EXPONENT)
        self.rejected += 1
        self._retry = True
        self._try_step(first_try=False)
        return False


def solve(f: Callable[[float, Tensor], Tensor], y0: Tensor, t0: float, t1: float, rtol: float,
          atol: float, on_step: Callable[[float], None] | None = None,
          max_evaluations: int | None = None) -> tuple[Tensor, int]:
    """y(t1) of dy/dt = f(t, y), y(t0) = y0 (any shape), by :class:`DormandPrince`; and the evaluations used.
    ``on_step`` hears t after every accepted step (a progress bar); past ``max_evaluations``, RuntimeError."""
    m = DormandPrince(y0, t0, t1, rtol, atol)
    while not m.done:
        if max_evaluations is not None and m.nfev >= max_evaluations:
            raise RuntimeError(f"the solve needed more than {max_evaluations} evaluations (at t = {m.t:.4g})")
        if m.feed(f(*m.point())) and on_step is not None:
            on_step(m.t)
    return m.y, m.nfev
