"""Interop with diffusers, offline: tiny random pipelines saved with save_pretrained."""

import json

import pytest
import torch

from engine import ModelFileError, SamplingPlan, load_model_file, sample, sampling_step
from engine.io.diffusers_interop import diffusion_config_from_scheduler
from tests.tiny_diffusers import tiny_unet

diffusers = pytest.importorskip("diffusers", reason="the optional 'diffusers' extra is not installed")


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe")
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
    diffusers.DDPMPipeline(unet=tiny_unet(diffusers), scheduler=sched).save_pretrained(path)
    return path


def _ddpm_reference(unet, sched, shape, gen, steps):
    """diffusers' own DDPM loop (as DDPMPipeline runs it), with the same generator."""
    x = torch.randn(shape, generator=gen)
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        out = unet(x, t).sample
        x = sched.step(out, t, x, generator=gen).prev_sample
    return x


@pytest.mark.parametrize("steps,variance", [(1000, "fixed_small"), (50, "fixed_small"), (50, "fixed_large")])
def test_ddpm_matches_diffusers_loop(pipeline_dir, steps, variance):
    m = load_model_file(pipeline_dir)
    m.diffusion.variance = variance  # same network; compare both variance choices
    cfg = json.loads((pipeline_dir / "scheduler" / "scheduler_config.json").read_text())
    sched = diffusers.DDPMScheduler.from_config({**cfg, "variance_type": variance})
    shape = (2, 1, 8, 8)
    with torch.inference_mode():
        ref = _ddpm_reference(m.net.unet, sched, shape, torch.Generator().manual_seed(3), steps)
    # diffusers' "leading" spacing is 0, T/K, 2T/K, …, which is our "ddimK" subsequence
    plan = SamplingPlan.build(m.diffusion, "ddpm", steps if steps == 1000 else f"ddim{steps}")
    ours = sample(m.net, m.diffusion, plan, shape, torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers_loop_with_given_noise(pipeline_dir, eta):
    m = load_model_file(pipeline_dir)
    cfg = json.loads((pipeline_dir / "scheduler" / "scheduler_config.json").read_text())
    sched = diffusers.DDIMScheduler.from_config(cfg)
    sched.set_timesteps(20)
    g = torch.Generator().manual_seed(4)
    x_T = torch.randn(2, 1, 8, 8, generator=g)
    noises = [torch.randn(2, 1, 8, 8, generator=g) for _ in range(20)]
    x = x_T
    with torch.inference_mode():
        for t, z in zip(sched.timesteps, noises, strict=True):
            # our step re-derives ε from the clipped x̂0 (improved-diffusion's convention)
            x = sched.step(m.net.unet(x, t).sample, t, x, eta=eta, use_clipped_model_output=True,
                           variance_noise=z).prev_sample
    plan = SamplingPlan.build(m.diffusion, "ddim", "ddim20", eta)

    ours = x_T
    with torch.inference_mode():
        for step, z in enumerate(noises):
            c = plan.coeffs(step, 2, "cpu", clip=True)
            ours, _, _ = sampling_step(m.diffusion.prediction, m.net(ours, c.t), ours, c, z, m.diffusion.clip_range)
    torch.testing.assert_close(ours, x, atol=1e-4, rtol=0)


def test_loaded_card_and_shapes(pipeline_dir):
    m = load_model_file(pipeline_dir)
    assert m.sample_shape == (1, 8, 8)
    assert m.card.model.arch == "diffusers"
    assert m.diffusion.prediction == "eps" and m.diffusion.clip_range == (-1.0, 1.0)
    torch.testing.assert_close(m.diffusion.schedule.betas,
                               torch.as_tensor(diffusers.DDPMScheduler().betas, dtype=torch.float64),
                               atol=1e-8, rtol=0)  # diffusers keeps betas in float32


@pytest.mark.parametrize("schedule", ["scaled_linear", "squaredcos_cap_v2"])
def test_schedule_mapping_matches_diffusers_betas(schedule):
    sched = diffusers.DDPMScheduler(beta_schedule=schedule, beta_start=0.00085, beta_end=0.012)
    ours = diffusion_config_from_scheduler(dict(sched.config)).build_schedule()
    torch.testing.assert_close(ours.betas.float(), sched.betas.float(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("prediction,ours", [("epsilon", "eps"), ("sample", "x0"), ("v_prediction", "v")])
def test_prediction_mapping(prediction, ours):
    assert diffusion_config_from_scheduler({"prediction_type": prediction}).prediction == ours


@pytest.mark.parametrize("option,value", [("variance_type", "learned_range"), ("variance_type", "fixed_large_log"),
                                          ("beta_schedule", "sigmoid"), ("prediction_type", "flow"),
                                          ("thresholding", True)])
def test_unsupported_options_are_named(option, value):
    with pytest.raises(ModelFileError, match=option):
        diffusion_config_from_scheduler({option: value})


def test_clip_sample_false_disables_clipping(tmp_path):
    tiny_unet(diffusers).save_pretrained(tmp_path)
    (tmp_path / "scheduler_config.json").write_text(json.dumps({"clip_sample": False}))
    m = load_model_file(tmp_path)
    assert m.diffusion.clip_range == (-float("inf"), float("inf"))


def test_directory_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(ModelFileError, match="not a diffusers pipeline"):
        load_model_file(tmp_path)


@pytest.mark.parametrize("overrides", [dict(), dict(scale_shift=False, attn_resolutions=(8,)),
                                       dict(image_size=16, ch_mult=(1, 2, 2), norm_groups=4), dict(num_classes=3)])
def test_export_round_trips(tmp_path, overrides):
    from engine import Conditioning, ModelCard, build_model, preset_config, save_model_file
    from engine.io.diffusers_interop import export_diffusers

    torch.manual_seed(0)
    cfg = preset_config("tiny", **overrides)
    net = build_model(cfg)
    for p in net.parameters():  # random weights everywhere, so no zero-initialised path hides a bug
        p.data.normal_(0, 0.1)
    path = save_model_file(tmp_path / "m.safetensors", net, ModelCard(model=cfg, data={"value_range": [-1, 1]}))
    ours = load_model_file(path)
    export_diffusers(ours, tmp_path / "pipe")
    back = load_model_file(tmp_path / "pipe")
    assert back.num_classes == ours.num_classes
    shape = (3, *ours.sample_shape)
    # A conditional model is compared under guidance, on a class, another class and "no label".
    cond = Conditioning.of(torch.tensor([0, 2, 3]), 2.0, 3) if ours.num_classes else None
    for sampler in ("ddpm", "ddim"):
        plan_a = SamplingPlan.build(ours.diffusion, sampler, 10)
        plan_b = SamplingPlan.build(back.diffusion, sampler, 10)
        a = sample(ours.net, ours.diffusion, plan_a, shape, torch.Generator().manual_seed(1), cond=cond)
        b = sample(back.net, back.diffusion, plan_b, shape, torch.Generator().manual_seed(1), cond=cond)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_conditional_import_needs_the_no_label_row_named(tmp_path):
    """A UNet2DModel with num_class_embeds but no card saying which row is "no label" is refused."""
    from engine import ModelCard, build_model, preset_config, save_model_file
    from engine.io.diffusers_interop import export_diffusers

    cfg = preset_config("tiny", image_size=8, num_classes=3)
    path = save_model_file(tmp_path / "c.safetensors", build_model(cfg), ModelCard(model=cfg))
    export_diffusers(load_model_file(path), tmp_path / "pipe")
    (tmp_path / "pipe" / "ddpm_card.json").unlink()
    with pytest.raises(ModelFileError, match="num_class_embeds=4"):
        load_model_file(tmp_path / "pipe")


def test_export_refuses_inexact_models(tmp_path):
    from engine import ModelCard, build_model, preset_config, save_model_file
    from engine.io.diffusers_interop import export_diffusers

    cfg = preset_config("seed", image_size=8)
    path = save_model_file(tmp_path / "s.safetensors", build_model(cfg), ModelCard(model=cfg))
    with pytest.raises(ModelFileError, match="arch 'seed'"):
        export_diffusers(load_model_file(path), tmp_path / "out")
    cfg = preset_config("tiny", image_size=7)
    path = save_model_file(tmp_path / "o.safetensors", build_model(cfg), ModelCard(model=cfg))
    with pytest.raises(ModelFileError, match="not divisible"):
        export_diffusers(load_model_file(path), tmp_path / "out")

