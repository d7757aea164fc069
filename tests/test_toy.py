"""The 2D playground: its datasets, its training through the engine's loss and EMA, sampling through the one
stepper, and ``ddpm toy``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.data.toy2d import EIGHT_CENTRES, TOY_DATASETS, toy_points
from engine.sampling.loop import last_frame
from engine.training.toy import ToyTrainer, mode_coverage


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_datasets_are_finite_points_of_their_shape(name):
    x = toy_points(name, 4000, torch.Generator().manual_seed(0))
    assert x.shape == (4000, 2) and x.dtype == torch.float32 and bool(torch.isfinite(x).all())
    assert 0.3 < float(x.std()) < 3.0


def test_eight_gaussians_sit_on_their_modes_and_the_checkerboard_on_its_dark_squares():
    x = toy_points("8gaussians", 8000, torch.Generator().manual_seed(0))
    cov, shares = mode_coverage(x)
    assert cov > 0.999 and all(abs(s - 0.125) < 0.02 for s in shares)
    assert torch.allclose(EIGHT_CENTRES.norm(dim=1), torch.full((8,), 2.0))
    c = toy_points("checkerboard", 8000, torch.Generator().manual_seed(0))
    assert bool(((torch.floor(c[:, 0]) + torch.floor(c[:, 1])) % 2 == 0).all())


def test_a_few_thousand_steps_learn_the_eight_modes():
    """The playground's target at a fixed step count (time budgets live in BENCHMARKS §11): ≥ 90 % of 2000
    samples within 0.5 of a mode centre, every mode holding 12.5 % ± 5 %."""
    trainer = ToyTrainer(lambda n, g: toy_points("8gaussians", n, g), seed=0)
    first = trainer.train_steps(50)
    last = trainer.train_steps(3000)
    assert last < first
    x = last_frame(trainer.sample_iter(2000, "ddpm", 100, torch.Generator().manual_seed(0))).x_t
    cov, shares = mode_coverage(x)
    assert cov >= 0.9 and all(0.075 <= s <= 0.175 for s in shares), (cov, shares)


def test_cli_writes_samples_and_reads_your_points(tmp_path, capsys):
    from app.cli import main

    out = tmp_path / "s.npy"
    assert main(["toy", "--seconds", "0.5", "--n", "64", "--steps", "10", "--out", str(out)]) == 0
    x = np.load(out)
    assert x.shape == (64, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    mine = tmp_path / "mine.npy"
    np.save(mine, np.array([[1.0, 1.0], [-1.0, -1.0]], np.float32))
    assert main(["toy", "--points", str(mine), "--seconds", "0.5", "--n", "16", "--steps", "10", "--sampler",
                 "ddim", "--out", str(out)]) == 0
    assert np.load(out).shape == (16, 2)
    capsys.readouterr()
    np.save(mine, np.zeros((5, 3), np.float32))
    assert main(["toy", "--points", str(mine), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--points: expected an array of shape (N, 2)" in err and len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def trained():
    trainer = ToyTrainer(lambda n, g: toy_points("8gaussians", n, g), seed=0)
    trainer.train_steps(1500)
    return trainer


def test_a_toy_trainer_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    want = torch.rand(3)
    torch.manual_seed(5)
    ToyTrainer(lambda n, g: toy_points("moons", n, g), seed=1).train_steps(2)
    assert torch.equal(torch.rand(3), want)


def test_sde_and_ode_flows_start_from_one_x_T_and_only_the_sde_is_noisy(trained):
    f = trained.flows(32, 20, seed=4)
    assert f.sde.shape == f.ode.shape == (21, 32, 2)
    assert torch.equal(f.sde[0], f.ode[0])
    again = trained.flows(32, 20, seed=4)
    assert torch.equal(again.ode, f.ode) and torch.equal(again.sde, f.sde)
    assert not torch.allclose(f.sde[-1], f.ode[-1], atol=1e-3)
    # the ODE moves smoothly: its largest step is a fraction of the SDE's
    assert (f.ode[1:] - f.ode[:-1]).norm(dim=-1).max() < (f.sde[1:] - f.sde[:-1]).norm(dim=-1).max()


def test_the_field_at_t_T_is_the_identity_and_the_score_points_to_the_modes(trained):
    """At t = T − 1, x_t = √ᾱ x0 + √(1 − ᾱ) ε with √ᾱ ≈ 0.006, so E[ε | x_t] ≈ x_t: the learned ε̂ is x itself.
    At small t the score −ε̂/σ points from a point near a mode towards that mode's centre."""
    field = trained.field(3.0, 13, timesteps=(999, 25))
    axis = torch.linspace(-3.0, 3.0, 13)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    grid = torch.stack([xs, ys], -1)
    assert (field[0] - grid).norm(dim=-1).mean() < 0.15
    centre = EIGHT_CENTRES[0]  # (2, 0)
    near = centre + torch.tensor([[0.25, 0.0], [-0.25, 0.0], [0.0, 0.25], [0.0, -0.25]])
    eps = trained.ema_model()(near, torch.full((4,), 25, dtype=torch.long)).detach()
    toward = centre - near
    assert bool((((-eps) * toward).sum(dim=1) > 0).all())


def test_toy_plan_names_the_field_it_refuses():
    from engine import SpecError, toy_plan

    for sampler, steps, field in (("euler", 10, "sampler"), ("ode_rk45", 10, "steps"), ("pndm", 2, "steps"),
                                  ("ddpm", 1001, "steps"), ("dpmpp_2m", 1000, "steps")):
        with pytest.raises(SpecError) as e:
            toy_plan(sampler, steps)
        assert e.value.field == field
    assert toy_plan("pc", 10).K > 0 and toy_plan("ddim").K == 100 and toy_plan("ode_rk45").sampler == "ode_rk45"


def test_every_sampler_the_images_have_draws_the_modes(trained):
    """The toy model samples through the one stepper with each sampler, the adaptive ODE included (an untrained
    one puts about a tenth of its samples near a mode). PC's Langevin corrector, at the images' signal-to-noise
    ratio, blurs the modes: 0.78 at 50 steps, 0.81 at 200 on this model."""
    from engine import SAMPLERS

    for sampler in SAMPLERS:
        steps = {"ode_rk45": None, "pc": 200}.get(sampler, 50)
        x = trained.sample(1000, sampler, steps, seed=1)
        cov, _ = mode_coverage(x)
        assert cov > (0.75 if sampler == "pc" else 0.85), (sampler, cov)
