"""Interpolation through noise space: slerp, a strip whose ends are the two seeds' own images, the class
embedding blend, ``ddpm interpolate`` and ``POST /interpolate``'s refusals."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from engine import SamplingSpec, SpecError, Start, last_frame, load_model_file, resolve, run_frames
from engine.sampling.interpolate import interpolation_run, slerp

from .server_utils import start_server, tiny_model_file


def test_slerp_keeps_the_ends_and_the_norm_of_gaussian_draws():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 1, 16, 16, generator=g), torch.randn(1, 1, 16, 16, generator=g)
    path = slerp(a, b, torch.linspace(0, 1, 9))
    torch.testing.assert_close(path[0], a[0])
    torch.testing.assert_close(path[-1], b[0])
    norms = path.flatten(1).norm(dim=1)
    assert float(norms.min()) > 0.97 * float(a.norm()) and float(norms.max()) < 1.03 * float(b.norm())
    lerp_mid = 0.5 * (a + b)  # the straight line's midpoint is improbably short: slerp's is not
    assert float(lerp_mid.norm()) < 0.8 * float(path[4].norm())
    torch.testing.assert_close(slerp(a, a, torch.tensor([0.0, 0.3, 1.0])), a.expand(3, -1, -1, -1))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("m") / "cond.safetensors", T=50, num_classes=10)


def _final(run, m) -> torch.Tensor:
    with torch.inference_mode():
        return last_frame(run_frames(run, m)).x_t


def test_the_strip_runs_from_one_seeds_image_to_the_others(model_file):
    m = load_model_file(model_file)
    run = interpolation_run(SamplingSpec(n=6, steps=5), m, (11, 12), (3, 8))
    assert run.spec.sampler == "ddim" and run.cond.mix.tolist() == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1])
    strip = _final(run, m)
    for end, (seed, label) in ((0, (11, 3)), (5, (12, 8))):
        alone = _final(resolve(SamplingSpec(n=1, seed=seed, labels=label, sampler="ddim", steps=5), m), m)
        torch.testing.assert_close(strip[end], alone[0], atol=1e-5, rtol=0)
    assert not torch.allclose(strip[2], strip[3], atol=1e-3)  # the middle moves


def test_an_end_may_be_an_x_T_such_as_an_inversion(model_file, tmp_path, capsys):
    """A strip from a given x_T (here an inverted image's, through the CLI) starts at that x_T's own decode."""
    from app.cli import main

    m = load_model_file(model_file)
    x_T = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    strip = _final(interpolation_run(SamplingSpec(n=4, steps=5), m, (x_T, 12), (3, 8)), m)
    spec = SamplingSpec(n=1, labels=3, sampler="ddim", steps=5)
    alone = _final(resolve(spec, m, start=Start(x_T, m.diffusion.T - 1)), m)
    torch.testing.assert_close(strip[0], alone[0], atol=1e-5, rtol=0)
    png = tmp_path / "d.png"
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(png)
    inv, out = tmp_path / "inv.npz", tmp_path / "strip.npz"
    assert main(["invert", "--model", str(model_file), "--image", str(png), "--steps", "5", "--out", str(inv)]) == 0
    argv = ["interpolate", "--model", str(model_file), "--k", "3", "--steps", "5", "--out", str(out)]
    assert main([*argv, "--seeds", "none,2", "--from-inversion", str(inv)]) == 0
    assert np.load(out)["images"].shape == (3, 8, 8, 1)
    capsys.readouterr()
    assert main([*argv, "--seeds", "1,2", "--from-inversion", str(inv)]) == 2
    assert "--seeds: end A needs a seed or --from-inversion" in capsys.readouterr().err


def test_a_full_blend_is_the_other_class(model_file):
    """Embedding weights (1 − w, w) at w = 1 are the second label's embedding exactly, so the end is that class."""
    m = load_model_file(model_file)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 10])
    y = torch.nn.functional.one_hot(torch.tensor([8, 8]), 11).float()
    with torch.inference_mode():
        torch.testing.assert_close(m.net(x, t, y), m.net(x, t, torch.tensor([8, 8])))


@pytest.mark.parametrize("spec,labels,field", [(SamplingSpec(n=1), None, "n"),
                                               (SamplingSpec(n=4, sampler="ddpm"), None, "sampler"),
                                               (SamplingSpec(n=4, sampler="ddim", eta=0.5), None, "sampler"),
                                               (SamplingSpec(n=4, sampler="ode_rk45"), None, "sampler"),
                                               (SamplingSpec(n=4), (3, 10), "labels")])
def test_the_strip_refuses_what_would_not_be_a_function_of_x_T(model_file, spec, labels, field):
    with pytest.raises(SpecError) as e:
        interpolation_run(spec, load_model_file(model_file), (1, 2), labels)
    assert e.value.field == field


def test_cli_writes_a_strip(model_file, tmp_path, capsys):
    from app.cli import main

    out = tmp_path / "strip.npz"
    assert main(["interpolate", "--model", str(model_file), "--seeds", "1,2", "--labels", "none,4", "--k", "5",
                 "--steps", "4", "--out", str(out)]) == 0
    assert np.load(out)["images"].shape == (5, 8, 8, 1)
    assert "5 images" in capsys.readouterr().out
    assert main(["interpolate", "--model", str(model_file), "--seeds", "1,2", "--k", "1", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().endswith("--k must be ≥ 2 images along the strip, got 1")


def test_the_route_streams_a_strip_and_names_what_it_refuses(model_file, tmp_path):
    s = start_server(model_file, tmp_path / "server.log")
    try:
        r = httpx.post(s.url + "/api/v1/interpolate", json={"seeds": [1, 2], "labels": [3, 8], "k": 4, "steps": 3})
        assert r.status_code == 202
        job = r.json()["id"]
        deadline = time.monotonic() + 60
        while (state := httpx.get(f"{s.url}/api/v1/jobs/{job}").json())["state"] != "done":
            assert time.monotonic() < deadline, state
            time.sleep(0.05)
        assert state["state"] == "done" and state["n"] == 4 and state["sampler"] == "ddim"
        for body, field in (({"seeds": [1, 2], "k": 1}, "k"), ({"seeds": [1, 2], "sampler": "ddpm"}, "sampler"),
                            ({"seeds": [1, 2], "labels": [3, 12]}, "labels"), ({"seeds": [1, 2], "k": 99}, "k")):
            r = httpx.post(s.url + "/api/v1/interpolate", json=body)
            assert r.status_code == 422 and r.json()["detail"][0]["loc"][1] == field, (body, r.text)
    finally:
        s.stop()
