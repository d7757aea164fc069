"""What the sampling worker reports about a job, as typed values holding tensors only.

A sampling job's results, in order: :class:`Queued` (again whenever its place changes), :class:`Started`, a
:class:`Frame` every ``frame_every`` steps and at the last step, then exactly one terminal result:
:class:`Done`, :class:`Cancelled` or :class:`Failed`. A playground job's: :class:`Queued`, :class:`ToyStarted`,
a :class:`ToyProgress` about every half second, then :class:`ToyDone`, :class:`Cancelled` or :class:`Failed`;
their points are small tensors, which the SSE layer writes as JSON lists. The frames layer (:mod:`app.runtime.frames`)
turns the tensors into pixels and encodings; the SSE layer (:mod:`app.http.sse`) into events.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class Queued:
    """The job waits; ``position`` 1 is next to start (0: it starts at the next tick)."""

    position: int


@dataclass(frozen=True)
class Started:
    """The job's x_T is drawn and it takes its first step at the next tick it is picked for."""

    steps: int
    n: int
    seed: int
    labels: tuple[int | None, ...] | None = None  # each image's class, None for "no label"; None: unconditional
    guidance: float | None = None


@dataclass(frozen=True)
class Frame:
    """The state after reverse step ``step`` (1-based) of ``of``, predicted at model timestep ``t``.

    ``x_t`` and ``x0`` are host copies ``(n, C, H, W)`` in the model's value range. At ``step == of``,
    ``x_t`` holds the final images.
    """

    step: int
    of: int
    t: int
    x_t: Tensor
    x0: Tensor

    @property
    def last(self) -> bool:
        return self.step == self.of


@dataclass(frozen=True)
class Done:
    """The job finished: its final images ``(n, C, H, W)`` on the host, in the model's value range."""

    images: Tensor
    seed: int
    elapsed_ms: float
    evaluations: int


@dataclass(frozen=True)
class Cancelled:
    """A client cancelled the job after ``step`` steps."""

    step: int


@dataclass(frozen=True)
class Failed:
    """The job ended in an error (including a server shutdown)."""

    message: str


@dataclass(frozen=True)
class ToyStarted:
    """A playground job started training; ``data`` ``(N, 2)`` is a draw of the points it trains on."""

    data: Tensor


@dataclass(frozen=True)
class ToyProgress:
    """After training step ``step``: the mean ``loss`` since the last progress, the worker's ``seconds`` spent
    training so far, and ``points`` ``(N, 2)`` freshly sampled from the EMA model."""

    step: int
    loss: float
    seconds: float
    points: Tensor


@dataclass(frozen=True)
class ToyDone:
    """A playground job finished training and sampling.

    ``points`` ``(n, 2)``: the samples. ``sde`` and ``ode`` ``(levels, m, 2)``: particles from the same x_T (first)
    along the reverse SDE and the probability-flow ODE. ``field`` ``(len(field_t), k, k, 2)``: the model's ε̂ on a
    grid over ``[−extent, extent]²`` (rows by y, columns by x) at each of ``field_t``, whose noise levels
    √(1 − ᾱ_t) are ``field_sigma``. ``losses``: (step, loss) of every progress event."""

    steps: int
    seconds: float
    elapsed_ms: float
    points: Tensor
    sde: Tensor
    ode: Tensor
    extent: float
    field_t: list[int]
    field_sigma: list[float]
    field: Tensor
    losses: list[tuple[int, float]]


Result = Queued | Started | Frame | Done | Cancelled | Failed | ToyStarted | ToyProgress | ToyDone
TERMINAL = (Done, Cancelled, Failed, ToyDone)
