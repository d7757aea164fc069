"""`eval --bpd ode`: the ODE's bits/dim beside the bound's, on the same held-out images, from a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from engine import ModelCard, build_model, load_model_file, preset_config, save_model_file
from engine.cli import main
from engine.data.datasets import load_dataset
from engine.diffusion.likelihood_ode import eps_fn_of, likelihood_sde, ode_bits_per_dim
from engine.io.modelfile import DiffusionConfig


def _tiny(path: Path, T: int) -> Path:
    torch.manual_seed(0)
    cfg = preset_config("tiny", image_size=8)
    card = ModelCard(model=cfg, diffusion=DiffusionConfig(T=T), name="tiny-ode",
                     data={"dataset": "mnist5k", "channels": 1, "image_size": 8, "value_range": [-1, 1]})
    net = build_model(cfg)
    with torch.no_grad():  # an untrained net's ε̂/σ makes the ODE stiff near t_min (~900 evaluations); ×0.01, ~150
        net.out[-1].weight.mul_(0.01)
        net.out[-1].bias.mul_(0.01)
    return save_model_file(path, net, card)


def _eval(model: Path, *args: str) -> list[str]:
    return ["eval", "--model", str(model), "--n", "2", "--sampler", "ddim", "--steps", "2", "--device", "cpu",
            "--bpd-images", "2", "--bpd-timesteps", "2", *args]


def test_eval_bpd_ode_adds_the_ode_figures_for_the_bound_images(tmp_path, capsys):
    model = _tiny(tmp_path / "m.safetensors", T=1000)
    assert main(_eval(model, "--bpd", "ode")) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("bits_per_dim", "bpd_ode", "bpd_ode_stderr", "bpd_ode_nfev"):
        assert math.isfinite(out[key]), key
    assert out["bpd_ode_nfev"] >= 8 and out["bits_per_dim_images"] == 2
    # the figure is that of the bound's two evenly spaced held-out images, dequantised with seed 0
    m, test = load_model_file(model), load_dataset("mnist5k", "test", image_size=8)
    sde = likelihood_sde(m.diffusion.schedule)
    bpd, nfev = ode_bits_per_dim(eps_fn_of(m.net, "eps", sde), sde, test.images[[0, len(test) - 1]],
                                 torch.Generator().manual_seed(0))
    assert out["bpd_ode"] == float(bpd.mean()) and out["bpd_ode_nfev"] == nfev
    assert main(_eval(model)) == 0  # the default is the bound alone
    assert "bpd_ode" not in json.loads(capsys.readouterr().out)


def test_eval_bpd_bad_value_or_schedule_is_one_line(tmp_path, capsys):
    short = _tiny(tmp_path / "m.safetensors", T=40)  # 40 linear steps end at ᾱ = 0.67, far from N(0, I)
    for args, needle in ((["--bpd", "exact"], "--bpd must be one of bound, ode, got 'exact'"),
                         (["--bpd", "ode"], "--bpd ode): the schedule ends at ᾱ = 0.669")):
        assert main(_eval(short, *args)) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, (args, err)
