"""Metrics against closed forms and properties, the shipped digit classifier on real data, and `eval`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import ModelCard, build_model, load_model_file, preset_config, save_model_file
from engine.evaluation.metrics import (
    DigitMetrics,
    MetricsError,
    class_entropy,
    confident_share,
    copy_threshold,
    evaluate_model,
    feature_distance,
    fid_from_local_weights,
    frechet_distance,
    gaussian_stats,
    generate,
    nearest_distances,
    quantize,
    within_class_distance,
)
from engine.io.images import from_uint8
from engine.io.modelfile import DiffusionConfig
from engine.sampling import SamplingPlan, SamplingSpec, SpecError, sample

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


# ------------------------------------------------------------------------------ Fréchet distance
def test_frechet_distance_closed_form_diagonal():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([3.0, -1.0, 2.0])
    v1, v2 = torch.tensor([4.0, 1.0, 0.25]), torch.tensor([1.0, 9.0, 0.25])
    # commuting covariances: ‖Δμ‖² + Σ (σ1 − σ2)²
    expected = (9 + 4 + 0) + ((2 - 1) ** 2 + (1 - 3) ** 2 + 0)
    assert frechet_distance(mu1, torch.diag(v1), mu2, torch.diag(v2)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_closed_form_non_commuting():
    # For 2×2 M = Σ1Σ2 with eigenvalues λ1, λ2 ≥ 0: tr √M = √λ1 + √λ2 = √(tr M + 2√det M).
    c1 = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
    c2 = torch.tensor([[0.5, -0.3], [-0.3, 3.0]], dtype=torch.float64)
    mu1, mu2 = torch.tensor([0.5, -1.0]), torch.tensor([0.0, 1.0])
    m = c1 @ c2
    tr_sqrt = math.sqrt(float(m.trace()) + 2 * math.sqrt(float(torch.linalg.det(m))))
    expected = 0.25 + 4.0 + float(c1.trace() + c2.trace()) - 2 * tr_sqrt
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(mu2, c2, mu1, c1) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_self_zero_symmetric_and_grows_with_shift():
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(600, 12, generator=g) @ torch.randn(12, 12, generator=g)).double()
    b = torch.randn(400, 12, generator=g) * 2 + 0.3
    assert abs(feature_distance(a, a)) < 1e-8
    assert feature_distance(a, b) == pytest.approx(feature_distance(b, a), rel=1e-10)
    # a constant shift s leaves the covariance alone: the distance is exactly ‖s‖²
    dists = [feature_distance(a, a + s) for s in (0.1, 0.5, 1.0, 2.0)]
    assert dists == pytest.approx([12 * s**2 for s in (0.1, 0.5, 1.0, 2.0)], abs=1e-7)
    assert dists == sorted(dists)


def test_gaussian_stats_rejects_a_single_row():
    with pytest.raises(MetricsError, match="≥ 2"):
        gaussian_stats(torch.zeros(1, 4))


# ------------------------------------------------------------------------------ entropy, confidence
def test_class_entropy_bounds():
    assert class_entropy(torch.eye(10).repeat(7, 1)) == pytest.approx(1.0, abs=1e-12)
    one = torch.zeros(20, 10)
    one[:, 3] = 1
    assert class_entropy(one) == 0.0
    two = torch.eye(10)[[0, 1] * 10]
    assert class_entropy(two) == pytest.approx(math.log(2) / math.log(10), rel=1e-12)


def test_within_class_distance_is_the_mean_pairwise_distance_per_class():
    # class 0: two points 3-4-5 apart; class 1: three corners of a unit square (distances 1, 1, √2)
    pts = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [9.0, 9.0]])
    classes = torch.tensor([0, 0, 1, 1, 1, 2])  # class 2 has one image: no pair, left out
    assert within_class_distance(pts, classes) == pytest.approx((5.0 + (2 + math.sqrt(2)) / 3) / 2, rel=1e-12)
    assert within_class_distance(pts, torch.zeros(6, dtype=torch.long)) == pytest.approx(
        float(torch.pdist(pts.double()).mean()))
    assert math.isnan(within_class_distance(pts[:2], torch.tensor([0, 1])))


def test_confident_share_counts_the_top_class():
    probs = torch.tensor([[0.95] + [0.05 / 9] * 9, [0.5, 0.5] + [0.0] * 8, [0.0] * 9 + [0.9]])
    assert confident_share(probs) == pytest.approx(2 / 3)
    assert confident_share(probs, threshold=0.99) == 0.0


def test_quantize_is_the_png_grid():
    x = torch.tensor([-1.2, -1.0, 0.1234, 0.999, 1.5]).reshape(1, 1, 1, 5)
    q = quantize(x).flatten()
    assert q.tolist() == pytest.approx([-1.0, -1.0, round(1.1234 * 127.5) / 127.5 - 1, 1.0, 1.0], abs=1e-6)
    assert torch.equal(quantize(q.reshape(1, 1, 1, 5)), q.reshape(1, 1, 1, 5))


# ------------------------------------------------------------------------------ memorization
def test_nearest_distances_match_brute_force():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(7, 1, 3, 3, generator=g), torch.randn(11, 1, 3, 3, generator=g)
    brute = torch.tensor([min(float((a - b).norm()) for b in t) for a in s], dtype=torch.float64)
    assert torch.allclose(nearest_distances(s, t, batch=3), brute, atol=1e-10)


@pytest.fixture(scope="module")
def digits() -> DigitMetrics:
    return DigitMetrics()


def test_percentile_threshold_holds_on_unseen_real_digits(digits):
    # Threshold from one half of the held-out digits, share measured on the other half:
    # unseen real digits fall below the p-th percentile about p% of the time.
    a, b = digits.test.images[0::2], digits.test.images[1::2]  # interleaved: the file is sorted by class
    for p in (5.0, 20.0):
        thr = copy_threshold(a, digits.train.images, p)
        share = float((nearest_distances(b, digits.train.images) < thr).double().mean())
        assert abs(share - p / 100) < 3 * math.sqrt(p / 100 * (1 - p / 100) / 250) + 0.004, (p, share)


def test_training_images_are_near_copies_and_held_out_are_not(digits):
    ref = digits.reference()
    assert ref["near_copy_share"] == 0.0  # default threshold: the closest any held-out digit comes
    assert ref["copy_threshold"] > 1.0
    assert digits.evaluate(digits.train.images[:50])["near_copy_share"] == 1.0
    one = digits.evaluate(torch.cat([digits.train.images[:1], digits.test.images[:99]]))
    assert one["near_copy_share"] == pytest.approx(0.01) and one["nn_distance_min"] < 1e-3


# ------------------------------------------------------------------------------ the classifier on real data
def test_classifier_is_accurate_on_held_out_digits(digits):
    acc = digits.accuracy()
    assert acc >= 0.95, acc
    assert acc == pytest.approx(digits.facts["held_out_accuracy"], abs=2e-3)  # the shipped weights are the trained ones


def test_real_reference_figures(digits):
    ref = digits.reference()
    assert ref["confident_share"] >= 0.9, ref
    assert ref["class_entropy"] >= 0.98, ref
    assert ref["images"] == 500
    # noise, and one repeated class, are told apart from real digits
    noise = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    bad = digits.evaluate(quantize(noise))
    assert bad["fld"] > 10 * ref["fld"] and bad["confident_share"] < ref["confident_share"]
    ones = digits.test.images[digits.test.labels == 1]
    collapsed = digits.evaluate(ones)
    assert collapsed["class_entropy"] < 0.2 and collapsed["fld"] > 5 * ref["fld"]


# ------------------------------------------------------------------------------ FID
def test_fid_errors_name_what_is_missing(tmp_path):
    x = torch.zeros(4, 3, 8, 8)
    with pytest.raises(MetricsError, match="--fid-weights: no such file"):
        fid_from_local_weights(x, x, tmp_path / "absent.pth")
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        with pytest.raises(MetricsError, match="pip install torch-fidelity"):
            fid_from_local_weights(x, x, weights)
    else:
        with pytest.raises(MetricsError, match="--fid-weights"):
            fid_from_local_weights(x, x, weights)


# ------------------------------------------------------------------------------ sampling and evaluate_model
def _tiny(path: Path, image_size: int, T: int = 40) -> Path:
    torch.manual_seed(0)
    cfg = preset_config("tiny", image_size=image_size)
    card = ModelCard(model=cfg, diffusion=DiffusionConfig(T=T), name="tiny-eval",
                     data={"dataset": "mnist5k", "channels": 1, "image_size": image_size, "value_range": [-1, 1]})
    return save_model_file(path, build_model(cfg), card)


def test_generate_batches_are_jobs_with_seed_plus_index(tmp_path):
    m = load_model_file(_tiny(tmp_path / "t.safetensors", 8))
    imgs = generate(m, SamplingSpec(n=5, sampler="ddim", steps=4, eta=0.5, seed=7), 3, "cpu", progress=False)
    plan = SamplingPlan.build(m.diffusion, "ddim", 4, 0.5)
    for start, n, seed in ((0, 3, 7), (3, 2, 8)):
        ref = sample(m.net, m.diffusion, plan, (n, 1, 8, 8), torch.Generator().manual_seed(seed), "cpu")
        assert torch.equal(imgs[start : start + n], quantize(ref))


def test_cached_generate_resumes_batch_by_batch_and_equals_a_fresh_run(tmp_path, monkeypatch):
    import engine.evaluation.metrics as metrics
    from engine.evaluation.sample_cache import SampleCache

    model = _tiny(tmp_path / "t.safetensors", 8)
    m = load_model_file(model)
    fresh = generate(m, SamplingSpec(n=7, sampler="ddim", steps=4, eta=0.5, seed=3), 3, "cpu", progress=False)
    cache = SampleCache(tmp_path / "cache", model)
    spec = SamplingSpec(n=7, sampler="ddim", steps=4, eta=0.5, seed=3)
    first = generate(m, spec, 3, "cpu", progress=False, cache=cache)
    assert torch.equal(first, fresh) and cache.hits == 0
    files = sorted((tmp_path / "cache").glob("*.safetensors"))
    assert [f.name.split("-", 1)[1] for f in files] == [
        "ddim4-eta0.5-seed3-n3.safetensors", "ddim4-eta0.5-seed4-n3.safetensors", "ddim4-eta0.5-seed5-n1.safetensors"]

    # as if killed during batch 2: one batch lost, one torn; only those two are drawn again
    files[1].unlink()
    files[2].write_bytes(files[2].read_bytes()[:20])
    drawn = []
    real_iter = metrics.run_frames
    monkeypatch.setattr(metrics, "run_frames", lambda *a, **k: (drawn.append(a[0].shape), real_iter(*a, **k))[1])
    again = SampleCache(tmp_path / "cache", model)
    resumed = generate(m, spec, 3, "cpu", progress=False, cache=again)
    assert torch.equal(resumed, fresh) and again.hits == 1 and drawn == [(3, 1, 8, 8), (1, 1, 8, 8)]
    assert not list((tmp_path / "cache").glob("*.tmp"))

    # anything that changes the pixels (sampler, eta, seed, batch size, the model's bytes) misses the cache
    drawn.clear()
    generate(m, spec.replace(eta=0.0), 3, "cpu", progress=False, cache=again)
    generate(m, spec, 2, "cpu", progress=False, cache=again)
    other = _tiny(tmp_path / "u.safetensors", 8, T=41)
    generate(load_model_file(other), spec.replace(n=3), 3, "cpu", progress=False,
             cache=SampleCache(tmp_path / "cache", other))
    assert len(drawn) == 3 + 4 + 1


def test_cache_key_digests_files_and_folders_by_content(tmp_path):
    from engine.evaluation.sample_cache import file_digest

    (tmp_path / "a.bin").write_bytes(b"weights")
    (tmp_path / "b.bin").write_bytes(b"weights")
    assert file_digest(tmp_path / "a.bin") == file_digest(tmp_path / "b.bin")
    pipe = tmp_path / "pipe"
    (pipe / "unet").mkdir(parents=True)
    (pipe / "model_index.json").write_text("{}")
    (pipe / "unet" / "w.safetensors").write_bytes(b"one")
    before = file_digest(pipe)
    assert len(before) == 16 and file_digest(pipe) == before
    (pipe / "unet" / "w.safetensors").write_bytes(b"two")
    assert file_digest(pipe) != before


def test_evaluate_model_on_a_non_digit_size_skips_digit_metrics(tmp_path, monkeypatch):
    import engine.evaluation.metrics as metrics
    from engine.data.datasets import load_dataset
    from engine.diffusion.likelihood import bits_per_dim

    m = load_model_file(_tiny(tmp_path / "t.safetensors", 8))
    spec = SamplingSpec(n=6, sampler="ddpm", steps=3, seed=0)
    out = evaluate_model(m, spec, 4, "cpu", bpd_images=3, bpd_timesteps=2, progress=False)
    assert "fld" not in out and any(s.startswith("digit metrics") for s in out["skipped"])
    # the figures are those of the samples it drew, against the model's data at the model's size
    train, test = load_dataset("mnist5k", "train", image_size=8), load_dataset("mnist5k", "test", image_size=8)
    drawn = generate(m, spec, 4, "cpu", progress=False)
    thr = copy_threshold(test.images, train.images)
    expected = metrics.memorization(drawn, train.images, thr)
    assert {k: out[k] for k in expected} == expected and out["copy_threshold"] == thr
    # bits/dim of 3 evenly spaced held-out images, t drawn with the run's seed: mean and standard error
    x = test.images[torch.linspace(0, len(test) - 1, 3).round().long()]
    bpd = bits_per_dim(m.diffusion, m.net, x, 2, torch.Generator().manual_seed(0))
    assert out["bits_per_dim"] == pytest.approx(float(bpd.mean()), rel=1e-6)
    assert out["bits_per_dim_stderr"] == pytest.approx(float(bpd.std() / math.sqrt(3)), rel=1e-6)
    assert out["bits_per_dim_images"] == 3
    json.dumps(out)
    # known answers: training images are all near-copies at distance 0; held-out ones none
    monkeypatch.setattr(metrics, "generate", lambda *a, **k: train.images[:6])
    copies = evaluate_model(m, spec, 4, "cpu", bpd_images=0, progress=False)
    assert copies["near_copy_share"] == 1.0 and copies["nn_distance_min"] == 0.0
    monkeypatch.setattr(metrics, "generate", lambda *a, **k: test.images[:6])
    unseen = evaluate_model(m, spec, 4, "cpu", bpd_images=0, progress=False)
    assert unseen["near_copy_share"] == 0.0 and unseen["nn_distance_min"] >= thr
    with pytest.raises(SpecError, match="steps must be ≤ 40") as e:
        evaluate_model(m, SamplingSpec(n=6, sampler="ddpm", steps=41), progress=False)
    assert e.value.field == "steps"
    with pytest.raises(SpecError, match="eta must be ≤ 1") as e:
        evaluate_model(m, SamplingSpec(n=6, sampler="ddim", steps=3, eta=1.5), progress=False)
    assert e.value.field == "eta"


def _eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", "eval", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)


def test_eval_cli_prints_json_with_every_metric(tmp_path):
    model = _tiny(tmp_path / "m.safetensors", 28)
    out_file = tmp_path / "metrics.json"
    r = _eval("--model", str(model), "--n", "12", "--sampler", "ddim", "--steps", "3", "--batch-size", "8",
              "--bpd-images", "4",
              "--bpd-timesteps", "2", "--device", "cpu", "--out", str(out_file), "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)  # stdout is exactly the JSON; progress goes to stderr
    assert json.loads(out_file.read_text()) == out
    for key in ("fld", "confident_share", "class_entropy", "near_copy_share", "nn_distance_median", "bits_per_dim",
                "real_fld", "real_confident_share", "real_class_entropy", "real_near_copy_share",
                "classifier_held_out_accuracy", "copy_threshold"):
        assert key in out, key
    assert all(not isinstance(v, dict) for v in out.values())  # flat
    assert out["samples"] == 12 and out["steps"] == 3 and out["sampler"] == "ddim"
    # the digit metrics are those of the very samples drawn (kept in the cache), against the real digits
    from engine.diffusion.likelihood import bits_per_dim
    from engine.evaluation.sample_cache import SampleCache

    cache = SampleCache(tmp_path / "c", model)
    drawn = torch.cat([cache.load("ddim3-eta0", seed, (n, 1, 28, 28)) for seed, n in ((0, 8), (1, 4))])
    digits = DigitMetrics()
    expected = digits.evaluate(from_uint8(drawn.permute(0, 2, 3, 1)))
    for key in ("confident_share", "class_entropy", "near_copy_share"):
        assert out[key] == expected[key], key
    assert out["fld"] == pytest.approx(expected["fld"], rel=1e-6)
    assert out["real_confident_share"] >= 0.9 and out["real_class_entropy"] >= 0.98  # real digits look real
    m = load_model_file(model)
    x = digits.test.images[torch.linspace(0, 499, 4).round().long()]
    bpd = bits_per_dim(m.diffusion, m.net, x, 2, torch.Generator().manual_seed(0))
    assert out["bits_per_dim"] == pytest.approx(float(bpd.mean()), rel=1e-5)
    # an untrained net makes blobs, not digits: far from real data
    assert out["fld"] > 3 * out["real_fld"]


def test_eval_cli_cache_dir_reuses_finished_batches(tmp_path):
    model = _tiny(tmp_path / "m.safetensors", 8)
    args = ("--model", str(model), "--n", "5", "--steps", "2", "--batch-size", "2", "--bpd-images", "0",
            "--device", "cpu", "--cache-dir", str(tmp_path / "c"))
    r1, r2 = _eval(*args), _eval(*args)
    assert r1.returncode == 0 and r2.returncode == 0, (r1.stderr[-2000:], r2.stderr[-2000:])
    a, b = json.loads(r1.stdout), json.loads(r2.stdout)
    assert a["batches_from_cache"] == 0 and b["batches_from_cache"] == 3
    assert a["near_copy_share"] == b["near_copy_share"] and a["nn_distance_median"] == b["nn_distance_median"]


def test_eval_cli_bad_input_is_one_line(tmp_path, capsys):
    from engine.cli import main

    model = _tiny(tmp_path / "m.safetensors", 8)
    for args, needle in ((["--n", "0"], "--n must be ≥ 1"), (["--eta", "2"], "--eta must be ≤ 1"),
                         (["--steps", "41"], "--steps must be ≤ 40 (T = 40 of this model)"),
                         (["--copy-percentile", "101"], "--copy-percentile must lie in [0, 100]"),
                         (["--fid-weights", str(tmp_path / "none.pth")], "--fid-weights: no such file"),
                         (["--cache-dir", str(model)], "--cache-dir: "),
                         (["--model", str(tmp_path / "missing.safetensors")], "no such model file")):
        rc = main(["eval", "--model", str(model), "--n", "2", "--steps", "2", "--bpd-images", "0", "--device", "cpu",
                   *args])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, (args, err)
