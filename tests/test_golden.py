"""Golden images: every sampler × labels × guidance gives the same pixels through ``ddpm sample``, ``/samples``
and the stream, and the same pixels as recorded in ``tests/golden/sampling.npz``.

The recording was made before the request path was restructured (one request spec, one stepper), so this
test holds the restructure, and any later one, to bit-identical output. Recording again is for a deliberate
change of the sampling math only: ``python -m tests.test_golden --record``.

Float results depend on the CPU's instruction set (oneDNN picks its kernels by it), so the recorded pixels are
compared exactly on a host of the recorded capability; elsewhere the three paths must still agree exactly
with each other, and with the recording up to one 8-bit level on at most 0.1 % of the pixels.
"""

from __future__ import annotations

import sys
from itertools import product
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from engine import DEFAULT_MODEL, SAMPLERS, UNCONDITIONAL_MODEL

from .server_utils import decode_png, sse_events, start_server

GOLDEN = Path(__file__).resolve().parent / "golden" / "sampling.npz"
API = "/api/v1"
N, STEPS, SEED = 2, 5, 7
T = 1000  # the bundled models' diffusion steps
LABELS = ("none", "3", "any")
GUIDANCE = ("0", "1", "2")


#: Samplers recorded under every labels × guidance case; the others, which reach the network through the same
#: denoiser, under one guided case.
EVERY_CASE = ("ddpm", "ddim", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde")
#: ode_rk45 picks its own steps: a loose tolerance keeps its case short.
ODE_TOLERANCE = "0.05"


def cases() -> list[tuple[str, str, str | None, str | None]]:
    """``(model, sampler, labels, guidance)``: the conditional default in full, the unconditional file per sampler
    of :data:`EVERY_CASE` (tests/test_score_sde.py checks PLMS on it against diffusers)."""
    cond = [("cond", s, lab, g) for s in SAMPLERS
            for lab, g in (product(LABELS, GUIDANCE) if s in EVERY_CASE else [("3", "2")])]
    return cond + [("uncond", s, None, None) for s in EVERY_CASE]


def _steps(sampler: str) -> dict:
    """The case's steps, or the adaptive sampler's tolerances."""
    if sampler == "ode_rk45":
        return {"rtol": float(ODE_TOLERANCE), "atol": float(ODE_TOLERANCE)}
    return {"steps": STEPS}


def key(case: tuple[str, str, str | None, str | None]) -> str:
    return "-".join(str(p) for p in case)


def _model(which: str) -> Path:
    return DEFAULT_MODEL if which == "cond" else UNCONDITIONAL_MODEL


def via_cli(case, tmp: Path) -> np.ndarray:
    from app.cli import main

    which, sampler, labels, guidance = case
    out = tmp / f"{key(case)}.npz"
    argv = ["sample", "--model", str(_model(which)), "--n", str(N), "--sampler", sampler, "--seed", str(SEED),
            "--out", str(out), *[a for k, v in _steps(sampler).items() for a in (f"--{k}", str(v))]]
    if labels is not None:  # guidance at every step, as recorded, whatever the default interval
        argv += ["--label", labels, "--guidance", guidance, "--guidance-interval", f"0,{T - 1}"]
    assert main(argv) == 0
    return np.load(out)["images"]


def _body(case) -> dict:
    _, sampler, labels, guidance = case
    body = {"n": N, "sampler": sampler, "seed": SEED, **_steps(sampler)}
    if labels is not None:
        body.update(labels=int(labels) if labels.isdigit() else labels, guidance=float(guidance),
                    guidance_interval=[0, T - 1])
    return body


def _stack(pngs: list[str]) -> np.ndarray:
    images = [decode_png(p) for p in pngs]
    return np.stack([i[..., None] if i.ndim == 2 else i for i in images])


def via_samples(url: str, case) -> np.ndarray:
    r = httpx.post(url + API + "/samples", json=_body(case), timeout=120)
    assert r.status_code == 200, r.text
    return _stack(r.json()["images"])


def via_stream(url: str, case) -> np.ndarray:
    with httpx.stream("GET", url + API + "/stream", params=_body(case), timeout=120) as r:
        assert r.status_code == 200, r.read()
        for ev in sse_events(r):
            if ev.event == "done":
                return _stack(ev.data["images"])
            assert ev.event not in ("error", "cancelled"), ev.data
    raise AssertionError("the stream closed without a done event")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    log = tmp_path_factory.mktemp("golden")
    started = {w: start_server(_model(w), log / f"{w}.log") for w in ("cond", "uncond")}
    yield {w: s.url for w, s in started.items()}
    for s in started.values():
        s.stop()


def _recorded() -> tuple[dict[str, np.ndarray], bool]:
    data = np.load(GOLDEN)
    same_host = str(data["cpu_capability"]) == torch.backends.cpu.get_cpu_capability()
    return {k: data[k] for k in data.files if k != "cpu_capability"}, same_host


@pytest.mark.timeout(600)  # 55 cases, three paths each, on two cores
def test_every_path_gives_the_recorded_pixels(servers, tmp_path):
    recorded, same_host = _recorded()
    assert set(recorded) == {key(c) for c in cases()}
    off = {}
    for case in cases():
        cli = via_cli(case, tmp_path)
        url = servers[case[0]]
        for path, images in (("/samples", via_samples(url, case)), ("stream", via_stream(url, case))):
            assert np.array_equal(images, cli), f"{key(case)}: {path} differs from ddpm sample"
        want = recorded[key(case)]
        assert cli.shape == want.shape, key(case)
        if same_host:
            assert np.array_equal(cli, want), f"{key(case)}: differs from the recording"
        else:
            diff = np.abs(cli.astype(int) - want.astype(int))
            assert diff.max() <= 1, f"{key(case)}: {diff.max()} levels from the recording"
            off[key(case)] = float((diff > 0).mean())
    assert all(v <= 1e-3 for v in off.values()), off


def record() -> None:
    import tempfile

    tmp = Path(tempfile.mkdtemp())
    arrays = {key(c): via_cli(c, tmp) for c in cases()}
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN, cpu_capability=np.array(torch.backends.cpu.get_cpu_capability()), **arrays)
    print(f"recorded {len(arrays)} cases in {GOLDEN}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        raise SystemExit("usage: python -m tests.test_golden --record")
    record()
