"""UNet shapes, presets, conditioning and gradient flow."""

import pytest
import torch

from engine import PRESETS, build_model, count_parameters, preset_config


@pytest.mark.parametrize("name", ["tiny", "mnist", "seed"])
def test_shapes(name):
    cfg = preset_config(name)
    m = build_model(cfg)
    x = torch.randn(3, cfg.in_channels, cfg.image_size, cfg.image_size)
    assert m(x, torch.tensor([0, 5, 999])).shape == (3, cfg.out_channels, cfg.image_size, cfg.image_size)


def test_odd_and_rgb_sizes():
    m = build_model(preset_config("tiny", image_size=12, in_channels=3, out_channels=3, ch_mult=(1, 2, 2)))
    assert m(torch.randn(2, 3, 12, 12), torch.tensor([1, 2])).shape == (2, 3, 12, 12)


def test_cifar10_preset_has_ho_et_al_parameter_count():
    n = count_parameters(build_model(preset_config("cifar10")))
    assert abs(n - 35.7e6) <= 0.5e6, n


def test_parameter_count_follows_the_architecture():
    """Every layer's width is a multiple of ch, so the count is a quadratic in ch (the attention's
    and convolutions' ch² terms, the norms' and biases' ch terms, the in/out channels' constant):
    its second differences over equally spaced widths are equal and positive. A fixed total would
    only say that nothing changed."""
    counts = [count_parameters(build_model(preset_config("tiny", ch=ch))) for ch in (8, 16, 24, 32)]
    second = [counts[i] - 2 * counts[i + 1] + counts[i + 2] for i in range(2)]
    assert second[0] == second[1] > 0, counts
    m = build_model(preset_config("tiny"))
    assert count_parameters(m) == sum(v.numel() for v in m.state_dict().values())  # no buffers hide in it
    # two more image channels in and out: 2·ch more 3×3 kernels in the first conv, 2·ch more and 2 biases in the last
    base, rgb = (count_parameters(build_model(preset_config("tiny", in_channels=c, out_channels=c))) for c in (1, 3))
    ch = preset_config("tiny").ch
    assert rgb - base == 2 * 9 * ch + 2 * 9 * ch + 2


def test_output_depends_on_t():
    torch.manual_seed(0)
    for name in ("tiny", "seed"):
        m = build_model(preset_config(name)).eval()
        cfg = m.config
        x = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size)
        a, b = m(x, torch.tensor([10, 10])), m(x, torch.tensor([500, 500]))
        assert (a - b).abs().max() > 1e-4


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    for name in ("tiny", "seed"):
        m = build_model(preset_config(name))
        cfg = m.config
        x = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size)
        m(x, torch.tensor([3, 700])).square().mean().backward()
        missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
        assert not missing, missing


def test_channels_last_and_autocast():
    torch.manual_seed(0)
    m = build_model(preset_config("tiny")).eval()
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([1, 2])
    ref = m(x, t)
    m_cl = m.to(memory_format=torch.channels_last)
    torch.testing.assert_close(m_cl(x.to(memory_format=torch.channels_last), t), ref, atol=1e-5, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, t)
    assert torch.isfinite(out).all() and (out.float() - ref).abs().max() < 0.1


def test_use_channels_last_feeds_nchw_inputs_in_nhwc_and_keeps_outputs(tmp_path):
    from engine import ModelCard, load_model_file, save_model_file
    from engine.io.modelfile import DiffusionConfig

    torch.manual_seed(0)
    cfg = preset_config("tiny", image_size=8)
    m = build_model(cfg).eval()
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0, 5, 9])
    ref = m(x, t)
    assert m.use_channels_last() is m and m.channels_last
    w = m.down[0][0].conv1.weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    torch.testing.assert_close(m(x, t), ref, atol=1e-5, rtol=1e-4)  # x itself is plain NCHW
    # a CPU load turns it on; the file stays in the usual layout
    card = ModelCard(model=cfg, diffusion=DiffusionConfig(T=10), name="cl")
    path = save_model_file(tmp_path / "cl.safetensors", m, card)
    loaded = load_model_file(path, "cpu")
    assert loaded.net.channels_last
    torch.testing.assert_close(loaded.net(x, t), ref, atol=1e-5, rtol=1e-4)


def test_config_validation_and_round_trip():
    cfg = preset_config("mnist")
    assert type(cfg).from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model preset"):
        preset_config("imagenet")
    with pytest.raises(ValueError, match="ch must be"):
        preset_config("tiny", ch=0)
    with pytest.raises(ValueError, match="unknown model config keys"):
        type(cfg).from_dict({**cfg.to_dict(), "bogus": 1})
    assert set(PRESETS) >= {"seed", "mnist", "cifar10"}
