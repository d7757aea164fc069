"""Class-conditional UNet: the "no label" row, conversion from an unconditional file."""

import dataclasses

import pytest
import torch

from engine import Conditioning, SamplingPlan, build_model, guided_forward, load_model_file, resolve_labels, sample
from engine.models.unet import load_shared_weights


@pytest.fixture(scope="module")
def bundled():
    """The bundled unconditional model."""
    from engine import UNCONDITIONAL_MODEL

    return load_model_file(UNCONDITIONAL_MODEL)


def _converted(bundled, num_classes: int = 10):
    cfg = dataclasses.replace(bundled.card.model, num_classes=num_classes)
    net = build_model(cfg).eval()
    left = load_shared_weights(net, bundled.net.state_dict())
    return net, left


def test_conversion_copies_every_tensor_and_computes_the_old_function(bundled):
    net, left = _converted(bundled)
    assert left == ["class_emb.weight"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, *bundled.sample_shape, generator=g)
    t = torch.randint(0, 1000, (6,), generator=g)
    y = torch.tensor([0, 3, 7, 9, 10, 10])  # 10 = "no label"
    with torch.inference_mode():
        old = bundled.net(x.contiguous(memory_format=torch.channels_last), t)
        new = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last), t, y)
    assert torch.equal(old, new)


def test_labels_change_the_output_once_the_embedding_is_trained(bundled):
    net, _ = _converted(bundled)
    with torch.no_grad():
        net.class_emb.weight.normal_(generator=torch.Generator().manual_seed(1))
    x, t = torch.randn(2, *bundled.sample_shape), torch.tensor([500, 500])
    with torch.inference_mode():
        a, b = net(x, t, torch.tensor([1, 1])), net(x, t, torch.tensor([2, 2]))
        none = net(x, t)  # no labels: every sample takes the "no label" row
        torch.testing.assert_close(none, net(x, t, torch.tensor([10, 10])))
    assert not torch.allclose(a, b)


def test_labels_to_an_unconditional_network_are_refused(bundled):
    with pytest.raises(ValueError, match="unconditional"):
        bundled.net(torch.zeros(1, *bundled.sample_shape), torch.tensor([0]), torch.tensor([3]))


def test_conversion_refuses_tensors_without_a_place(bundled):
    net, _ = _converted(bundled)
    with pytest.raises(ValueError, match="no place"):
        load_shared_weights(net, {**bundled.net.state_dict(), "extra.weight": torch.zeros(1)})
    wrong = dict(bundled.net.state_dict())
    wrong["conv_in.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="shape"):
        load_shared_weights(net, wrong)


# ------------------------------------------------------------------------------------------ guidance
class _Affine:
    """A toy conditional ε-model whose output is known: x·w_t + bias[y]. Counts rows it was called on."""

    def __init__(self, num_classes: int = 3) -> None:
        self.bias = torch.linspace(-1, 1, num_classes + 1)  # last row = "no label"
        self.rows = 0

    def __call__(self, x, t, y):
        self.rows += x.shape[0]
        return 0.1 * x + self.bias[y].reshape(-1, 1, 1, 1)


def test_guidance_combines_conditional_and_unconditional_rows_in_one_forward():
    model = _Affine()
    x = torch.randn(4, 1, 2, 2)
    t = torch.tensor([10, 20, 30, 40])
    labels = torch.tensor([0, 2, 3, 1])  # the third has no label
    scale = torch.tensor([2.0, 1.0, 5.0, 0.0])
    every = torch.tensor([[0, 1000]]).expand(4, 2)
    out = guided_forward(model, x, t, Conditioning(labels, scale, every, null_label=3))
    assert model.rows == 5  # one extra row: only sample 0 has a label and s ∉ {0, 1}
    u, c0 = model.bias[3], model.bias[0]
    torch.testing.assert_close(out[0], 0.1 * x[0] + u + 2.0 * (c0 - u))  # ε_u + s(ε_c − ε_u)
    torch.testing.assert_close(out[1], 0.1 * x[1] + model.bias[2])  # s = 1: plain conditional
    torch.testing.assert_close(out[2], 0.1 * x[2] + u)  # no label: unconditional whatever s
    torch.testing.assert_close(out[3], 0.1 * x[3] + u)  # s = 0: unconditional


def test_outside_its_guidance_interval_a_sample_is_conditional_and_costs_one_row():
    """Kynkäänniemi et al. 2024: guidance only for t in [t_lo, t_hi]; elsewhere s = 1, so no unconditional row."""
    model = _Affine()
    x, labels = torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 2, 0])
    t = torch.tensor([10, 20, 30, 40])
    cond = Conditioning(labels, torch.full((4,), 3.0), torch.tensor([[15, 35]]).expand(4, 2), null_label=3)
    out = guided_forward(model, x, t, cond)
    assert model.rows == 4 + 2  # only the samples at t = 20 and t = 30 get an unconditional row
    u = model.bias[3]
    for i, inside in enumerate([False, True, True, False]):
        c = model.bias[labels[i]]
        want = 0.1 * x[i] + (u + 3.0 * (c - u) if inside else c)
        torch.testing.assert_close(out[i], want)


def test_guided_batch_equals_each_job_alone():
    model = _Affine()
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, 1, 2, 2, generator=g) for n in (2, 3)]
    conds = [Conditioning.of(torch.tensor([1, 2]), 3.0, 3), Conditioning.of(torch.tensor([0, 3, 1]), 1.5, 3)]
    ts = [torch.full((2,), 5), torch.full((3,), 9)]
    alone = [guided_forward(model, x, t, c) for x, t, c in zip(xs, ts, conds, strict=True)]
    both = guided_forward(model, torch.cat(xs), torch.cat(ts), Conditioning.cat(conds))
    torch.testing.assert_close(both, torch.cat(alone))


@pytest.mark.parametrize("spec,expected", [(7, [7, 7, 7]), (None, [10, 10, 10]), ("none", [10, 10, 10]),
                                           ([1, None, 9], [1, 10, 9])])
def test_label_specs(spec, expected):
    assert resolve_labels(spec, 3, 10, None).tolist() == expected


def test_any_labels_come_from_the_seed():
    a = resolve_labels("any", 64, 10, torch.Generator().manual_seed(3))
    b = resolve_labels("any", 64, 10, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 9 and len(set(a.tolist())) > 5


@pytest.mark.parametrize("spec,n,classes,match", [(10, 2, 10, r"\[0, 9\]"), ([1], 2, 10, "one entry per sample"),
                                                  (True, 1, 10, "class"), (3, 1, 0, "unconditional")])
def test_bad_label_specs_are_refused(spec, n, classes, match):
    with pytest.raises(ValueError, match=match):
        resolve_labels(spec, n, classes, None)


def test_guided_sampling_with_scale_1_is_conditional_and_0_unconditional(bundled):
    net, _ = _converted(bundled)
    with torch.no_grad():
        net.class_emb.weight.normal_(std=0.5, generator=torch.Generator().manual_seed(1))
    d = bundled.diffusion
    plan = SamplingPlan.build(d, "dpmpp_2m", 5)
    shape = (2, *bundled.sample_shape)
    labels = torch.tensor([4, 8])

    def run(cond, model):
        return sample(model, d, plan, shape, torch.Generator().manual_seed(2), cond=cond)

    with torch.inference_mode():
        cond_only = run(None, lambda x, t: net(x, t, labels))
        uncond = run(None, lambda x, t: net(x, t))
        torch.testing.assert_close(run(Conditioning.of(labels, 1.0, 10), net), cond_only)
        torch.testing.assert_close(run(Conditioning.of(labels, 0.0, 10), net), uncond)
        assert not torch.allclose(run(Conditioning.of(labels, 3.0, 10), net), cond_only)


# ------------------------------------------------------------------------------------ unconditional prior
def test_a_prior_answers_the_no_label_rows_and_guidance_uses_it(tmp_path):
    """With an unconditional prior, "no label" rows (guidance's ε_u) come from the prior, the rest from the
    conditional network; a batch of both is split and put back in order."""
    from engine.io.loader import with_unconditional_prior
    from tests.server_utils import tiny_model_file

    cond = load_model_file(tiny_model_file(tmp_path / "c.safetensors", num_classes=3, T=50))
    prior = load_model_file(tiny_model_file(tmp_path / "u.safetensors", seed=1, T=50))
    paired = with_unconditional_prior(cond, prior)
    assert paired.prior_path == prior.path and paired.num_classes == 3
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(4, *cond.sample_shape, generator=g), torch.tensor([3, 10, 20, 49])
    y = torch.tensor([0, 3, 2, 3])
    with torch.inference_mode():
        out = paired.net(x, t, y)
        torch.testing.assert_close(out[[0, 2]], cond.net(x[[0, 2]], t[[0, 2]], y[[0, 2]]))
        torch.testing.assert_close(out[[1, 3]], prior.net(x[[1, 3]], t[[1, 3]]))
        torch.testing.assert_close(paired.net(x, t), prior.net(x, t))  # no labels at all: the prior alone
        guided = guided_forward(paired.net, x, t, Conditioning.of(torch.tensor([1, 1, 2, 3]), 2.5, 3))
        eps_u, eps_c = prior.net(x, t), cond.net(x, t, torch.tensor([1, 1, 2, 3]))
        torch.testing.assert_close(guided[:3], eps_u[:3] + 2.5 * (eps_c[:3] - eps_u[:3]))
        torch.testing.assert_close(guided[3], eps_u[3])


def test_a_prior_must_fit_the_model(tmp_path):
    from engine import ModelFileError
    from engine.io.loader import with_unconditional_prior
    from tests.server_utils import tiny_model_file

    cond = load_model_file(tiny_model_file(tmp_path / "c.safetensors", num_classes=3, T=50))
    uncond = load_model_file(tiny_model_file(tmp_path / "u.safetensors", T=50))
    for model, prior, match in (
        (uncond, uncond, "is unconditional; a prior only serves a class-conditional model"),
        (cond, cond, "has 3 classes; the prior must be unconditional"),
        (cond, load_model_file(tiny_model_file(tmp_path / "big.safetensors", image_size=16, T=50)), "samples"),
        (cond, load_model_file(tiny_model_file(tmp_path / "t.safetensors", T=60)), r"diffusion differs .*'T'"),
    ):
        with pytest.raises(ModelFileError, match=match):
            with_unconditional_prior(model, prior)


def test_the_bundled_model_gets_its_prior_whether_named_or_not(tmp_path):
    """The bundled default file is paired with the bundled prior however it is named; a copy of it elsewhere,
    any other model, or "none" gets no prior."""
    import os
    import shutil

    from engine import DEFAULT_MODEL, DEFAULT_PRIOR
    from engine.io.loader import load_model

    for path in (None, DEFAULT_MODEL, os.path.relpath(DEFAULT_MODEL)):
        assert load_model(path).prior_path == DEFAULT_PRIOR, path
    copy = shutil.copy(DEFAULT_MODEL, tmp_path / "copy.safetensors")
    assert load_model(copy).prior_path is None
    assert load_model(None, uncond_model="none").prior_path is None
    assert load_model(DEFAULT_PRIOR).prior_path is None  # an unconditional model has no "no label" rows to answer
