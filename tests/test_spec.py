"""One request spec: its fields generate the API's request model and the CLI's flags, and resolve() is the
one place that fills defaults and refuses a request, naming the field."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from app.http.schemas import JobRequest, SampleRequest, spec_of
from engine import (
    DEFAULT_GUIDANCE,
    GaussianDiffusion,
    NoiseSchedule,
    SamplingSpec,
    ServerDefaults,
    SpecError,
    Start,
    Stepper,
    as_denoiser,
    build_parser,
    complete,
    resolve,
    sample_iter,
)


def _model(num_classes: int = 0, T: int = 50) -> SimpleNamespace:
    return SimpleNamespace(diffusion=GaussianDiffusion(NoiseSchedule.linear(T)), num_classes=num_classes,
                           sample_shape=(1, 4, 4), net=None)


def test_every_spec_field_is_in_the_request_model_with_its_bounds_and_help():
    spec_fields = {f.name: f for f in dataclasses.fields(SamplingSpec)}
    assert set(SampleRequest.model_fields) == set(spec_fields)
    assert set(JobRequest.model_fields) == set(spec_fields) | {"frame_every", "frame_format"}
    schema = SampleRequest.model_json_schema()["properties"]
    for name, f in spec_fields.items():
        prop = schema[name]
        assert f.metadata["help"].replace("default: ", "null: ", 1) == prop["description"], name
        numeric = next((b for b in prop.get("anyOf", [prop]) if b.get("type") in ("integer", "number")), {})
        for meta_key, schema_key in (("ge", "minimum"), ("le", "maximum")):
            if f.metadata.get(meta_key) is not None:
                assert numeric[schema_key] == f.metadata[meta_key], (name, meta_key)
    assert spec_of(SampleRequest(n=3, labels=["any"])) == SamplingSpec(n=3, labels="any")


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_every_spec_field_with_a_flag_is_a_flag_of_sample_and_eval(command):
    parser, sub = build_parser()
    flags = {opt for a in sub.choices[command]._actions for opt in a.option_strings}
    for f in dataclasses.fields(SamplingSpec):
        if f.metadata["flag"]:
            assert "--" + (f.metadata["flag_name"] or f.name).replace("_", "-") in flags, f.name
    assert "--init" not in flags  # the API's start image has no command-line form
    args = parser.parse_args([command, "--label", "1,none", "--no-clip", "--eta", "0.3", "--sampler", "ddim"]
                             + (["--out", "x.png"] if command == "sample" else []))
    assert (args.labels, args.clip, args.eta) == ([1, None], False, 0.3)


def test_resolve_fills_defaults_from_the_model_and_the_server():
    uncond, cond = _model(), _model(num_classes=10)
    run = resolve(SamplingSpec(n=2, seed=5), uncond)
    assert (run.spec.sampler, run.plan.K, run.spec.labels, run.spec.guidance, run.cond) == ("ddpm", 50, None, None,
                                                                                           None)
    run = resolve(SamplingSpec(n=2, seed=5), cond)
    assert (run.spec.sampler, run.spec.steps, run.spec.labels, run.spec.guidance) == ("dpmpp_2m", 8, "any",
                                                                                      DEFAULT_GUIDANCE)
    assert run.spec.guidance_interval == (0, 27)  # the lower 55 % of t
    run = resolve(SamplingSpec(n=3, seed=5, labels="each"), cond, ServerDefaults(sampler="ddim", guidance=3.0))
    assert (run.spec.sampler, run.spec.guidance, run.drawn_labels) == ("ddim", 3.0, [0, 1, 2])
    assert resolve(SamplingSpec(sampler="ddim"), uncond).spec.eta == 0.0
    assert resolve(SamplingSpec(sampler="dpmpp_2m_sde"), uncond).spec.eta == 1.0
    assert resolve(SamplingSpec(), uncond).spec.seed is not None  # a random seed, reported with the result
    # "any" labels are drawn from the run's generator before its x_T: a seed fixes both
    a, b = resolve(SamplingSpec(n=6, seed=1), cond), resolve(SamplingSpec(n=6, seed=1), cond)
    assert a.drawn_labels == b.drawn_labels and torch.equal(a.generator.get_state(), b.generator.get_state())


@pytest.mark.parametrize(("spec", "model", "field", "needle"), [
    (SamplingSpec(n=0), _model(), "n", "n must be ≥ 1"),
    (SamplingSpec(steps=51, sampler="ddim"), _model(), "steps", "steps must be ≤ 50 (T = 50 of this model)"),
    (SamplingSpec(steps=50, sampler="dpmpp_2m"), _model(), "steps", "dpmpp_2m takes no step at t = 0"),
    (SamplingSpec(eta=0.5, sampler="dpmpp_2m"), _model(), "eta", "eta applies only to"),
    (SamplingSpec(eta=1.5, sampler="ddim"), _model(), "eta", "eta must be ≤ 1"),
    (SamplingSpec(sampler="euler"), _model(), "sampler", "sampler must be one of"),  # type: ignore[arg-type]
    (SamplingSpec(labels=3), _model(), "labels", "labels: this model is unconditional"),
    (SamplingSpec(guidance=2.0), _model(), "guidance", "guidance: this model is unconditional"),
    (SamplingSpec(labels=10), _model(10), "labels", "must be a class in [0, 9]"),
    (SamplingSpec(n=2, labels=[1, 2, 3]), _model(10), "labels", "one entry per sample (2)"),
    (SamplingSpec(guidance=21.0), _model(10), "guidance", "guidance must be ≤ 20"),
    (SamplingSpec(init="x" * 65), _model(), "init", "init must be at most 64 characters"),
    (SamplingSpec(guidance_interval=(0, 10)), _model(), "guidance_interval", "this model is unconditional"),
    (SamplingSpec(guidance_interval=(30, 10)), _model(10), "guidance_interval", "t_lo ≤ t_hi in [0, 49]"),
    (SamplingSpec(guidance_interval=(0, 50)), _model(10), "guidance_interval", "t_lo ≤ t_hi in [0, 49]"),
    (SamplingSpec(guidance_grid=[0, 1]), _model(), "guidance_grid", "this model is unconditional"),
    (SamplingSpec(guidance_grid=[0, 1], guidance=2.0), _model(10), "guidance_grid", "give one or the other"),
    (SamplingSpec(guidance_grid=[0.0] * 9), _model(10), "guidance_grid", "1 … 8 scales"),
    (SamplingSpec(guidance_grid=[]), _model(10), "guidance_grid", "1 … 8 scales"),
    (SamplingSpec(guidance_grid=[0, 21]), _model(10), "guidance_grid", "each scale must lie in [0, 20]"),
])
def test_resolve_refuses_with_the_field_as_data(spec, model, field, needle):
    with pytest.raises(SpecError) as e:
        resolve(spec, model)
    assert e.value.field == field and needle in e.value.message and e.value.message.startswith(field)


def test_the_server_limits_n_and_a_start_image_limits_steps():
    with pytest.raises(SpecError, match="n must be ≤ 4 \\(the server's max batch\\)"):
        complete(SamplingSpec(n=5), _model(), max_n=4)
    start = Start(torch.zeros(1, 1, 4, 4), t=9)
    with pytest.raises(SpecError, match="the init image's t = 9, plus 1"):
        resolve(SamplingSpec(sampler="ddim", steps=11), _model(), start=start)
    run = resolve(SamplingSpec(n=3, sampler="ddim", steps=10, seed=0), _model(), start=start)
    assert int(run.plan.timesteps[0]) == 9 and run.start is start


def test_a_batch_of_lanes_steps_each_lane_as_it_steps_alone():
    """The stepper's one model call over several runs gives each run what sample_iter gives it alone."""
    d = GaussianDiffusion(NoiseSchedule.linear(50))
    net = lambda x, t: torch.tanh(x) * (t.float()[:, None, None, None] / 50)  # noqa: E731
    runs = [resolve(SamplingSpec(n=n, sampler=s, steps=k, seed=i), _model())
            for i, (s, k, n) in enumerate([("ddpm", 12, 2), ("dpmpp_3m", 7, 1), ("ddim", 9, 3)])]
    stepper = Stepper(as_denoiser(net, conditional=False), d, "cpu")
    lanes = [stepper.start_run(r) for r in runs]
    while any(not lane.done for lane in lanes):
        stepper.advance([lane for lane in lanes if not lane.done])
    for run, lane in zip(runs, lanes, strict=True):
        alone = resolve(run.spec, _model())
        *_, last = sample_iter(net, d, alone.plan, alone.shape, alone.generator)
        assert torch.equal(lane.x, last.x_t)


def test_a_guidance_grid_is_n_images_a_row_per_scale_from_the_same_draws():
    """Each row repeats the n draws (labels, x_T and every step's noise) under its own scale."""
    m = _model(10)
    m.net = lambda x, t, y: x * 0.1 + y.float().reshape(-1, 1, 1, 1) * 0.01  # labels matter, rows must not
    run = resolve(SamplingSpec(n=3, labels="any", guidance_grid=[1.0, 2.0, 1.0], sampler="ddpm", steps=5, seed=4),
                  m)
    assert run.shape[0] == 9 and run.rows == 3
    assert run.cond.scale.tolist() == [1.0] * 3 + [2.0] * 3 + [1.0] * 3
    labels = run.cond.labels.tolist()
    assert labels[:3] == labels[3:6] == labels[6:]
    x = final_samples(run, m)
    assert torch.equal(x[:3], x[6:]) and not torch.equal(x[:3], x[3:6])
    with pytest.raises(SpecError, match="n × rows = 12 images, more than the server's max batch"):
        resolve(SamplingSpec(n=3, guidance_grid=[0, 1, 2, 4]), m, max_n=10)


def final_samples(run, m) -> torch.Tensor:
    from engine import last_frame, run_frames

    return last_frame(run_frames(run, m)).x_t


def test_eval_refuses_a_guidance_grid_rather_than_score_a_mixture(capsys):
    from app.cli import main

    assert main(["eval", "--n", "8", "--guidance-grid", "0,1", "--bpd-images", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "guidance_grid: eval scores one guidance scale at a time" in err and len(err.splitlines()) == 1
