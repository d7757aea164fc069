"""The worker's tick scheduling, stepped by hand in-process with a real tiny UNet (no loop thread)."""

from __future__ import annotations

import pytest
import torch

from app.runtime.frames import JobLog
from app.runtime.results import Frame, Queued
from app.runtime.worker import Job, SamplingWorker
from engine import SamplingSpec, load_model_file, resolve

from .server_utils import tiny_model_file


@pytest.fixture
def worker(tmp_path):
    m = load_model_file(tiny_model_file(tmp_path / "tiny.safetensors", T=100), torch.device("cpu"))
    w = SamplingWorker(m, torch.device("cpu"), max_batch=8, max_active_jobs=8, max_queue=8)
    yield w
    w.encoder.close()


def _put(w: SamplingWorker, n: int, seed: int, sampler: str = "ddim", steps: int = 20, **fields) -> Job:
    """Submit a resolved request, as a route does; its log encodes on the worker's encoder thread."""
    run = resolve(SamplingSpec(n=n, seed=seed, sampler=sampler, steps=steps, **fields), w.model)  # type: ignore[arg-type]
    return w.submit(run, frame_every=100, log=JobLog("png", 8, w.encoder, w.model.card.value_range))


def _images(job: Job) -> list[bytes]:
    """The job's PNGs once its log has them."""
    images = job.log.final()
    assert images is not None, job.status
    return images.pngs


def _submit(w: SamplingWorker, n: int, seed: int, sampler: str = "ddim") -> Job:
    job = _put(w, n, seed, sampler)
    with w._cv:
        w._admit()
    return job


def _tick(w: SamplingWorker) -> list[Job]:
    with w._cv:
        batch = w._select()
    with torch.inference_mode():
        w._tick(batch)
    return batch


def test_newcomers_get_a_tick_of_their_own_then_everyone_is_batched(worker):
    a = _submit(worker, 4, seed=0)
    assert _tick(worker) == [a]  # alone, so no special tick
    _tick(worker)
    b, c = _submit(worker, 2, seed=1), _submit(worker, 2, seed=2)
    assert _tick(worker) == [b, c]  # the newcomers' first step, without a's four samples
    assert (a.step, b.step, c.step) == (2, 1, 1)
    assert sorted(j.seed for j in _tick(worker)) == [0, 1, 2]  # then round-robin over all of them, 8 samples
    assert (a.step, b.step, c.step) == (3, 2, 2)


def test_a_stream_of_newcomers_cannot_starve_running_jobs(worker):
    a = _submit(worker, 4, seed=0)
    _tick(worker)
    for seed in range(1, 6):
        step_before = a.step
        newcomer = _submit(worker, 1, seed=seed)
        assert _tick(worker) == [newcomer]
        late = _submit(worker, 1, seed=100 + seed)  # arrives right after a newcomers' tick
        assert a in _tick(worker), "the tick after a newcomers' tick must be round-robin"
        assert a.step == step_before + 1
        worker.cancel(late.id)
        worker.cancel(newcomer.id)
        with worker._cv:
            worker._admit()


def test_newcomers_beyond_max_batch_wait_for_a_later_tick(worker):
    a = _submit(worker, 2, seed=0)
    _tick(worker)
    big, small = _submit(worker, 6, seed=1), _submit(worker, 4, seed=2)
    assert _tick(worker) == [big]  # 6 + 4 > max_batch 8: the one that fits goes first
    assert _tick(worker) == [a, big]  # round-robin next; small does not fit beside them
    assert _tick(worker) == [small]  # and gets its newcomers' tick straight after


def _queue(w: SamplingWorker, seed: int) -> Job:
    """Submit without a tick: the job waits in the queue as it would between two ticks."""
    return _put(w, 1, seed)


def test_the_queue_limit_holds_between_ticks_with_free_slots(tmp_path):
    """Submits that land between two ticks count against max_queue once the free slots are spoken for."""
    from app.runtime.worker import QueueFull

    m = load_model_file(tiny_model_file(tmp_path / "tiny.safetensors", T=100), torch.device("cpu"))
    w = SamplingWorker(m, torch.device("cpu"), max_batch=8, max_active_jobs=3, max_queue=2)
    try:
        jobs = [_queue(w, seed) for seed in range(5)]  # 3 will start at the next tick, 2 will wait
        assert [w.position(j) for j in jobs] == [0, 0, 0, 1, 2]
        with pytest.raises(QueueFull, match="max_queue=2"):
            _queue(w, 99)
        with w._cv:
            w._admit()
        assert [j.status for j in jobs] == ["running"] * 3 + ["queued"] * 2
        assert [w.position(j) for j in jobs] == [0, 0, 0, 1, 2]
        with pytest.raises(QueueFull):
            _queue(w, 99)
    finally:
        w.encoder.close()


def test_a_waiting_job_gets_a_queued_event_only_when_its_position_changes(tmp_path):
    m = load_model_file(tiny_model_file(tmp_path / "tiny.safetensors", T=100), torch.device("cpu"))
    w = SamplingWorker(m, torch.device("cpu"), max_batch=8, max_active_jobs=1, max_queue=4)
    try:
        running, first, second = _queue(w, 0), _queue(w, 1), _queue(w, 2)
        for _ in range(5):
            with w._cv:
                w._admit()
            _tick(w)
        w.cancel(first.id)
        with w._cv:
            w._admit()
        w.encoder.drain()
        queued = [e.result.position for e in second.log.since(0) if isinstance(e.result, Queued)]
        assert queued == [2, 1], "one event at submit, one when the job ahead left, none per tick"
        assert running.status == "running"
    finally:
        w.encoder.close()


def test_finished_jobs_are_forgotten_beyond_the_cap_oldest_first(tmp_path):
    m = load_model_file(tiny_model_file(tmp_path / "tiny.safetensors", T=100), torch.device("cpu"))
    w = SamplingWorker(m, torch.device("cpu"), max_batch=8, max_active_jobs=1, max_queue=100,
                       max_finished_jobs=3)
    try:
        ids = []
        for seed in range(6):  # submit and cancel at once, as a hostile client in a loop would
            job = _queue(w, seed)
            w.cancel(job.id)
            ids.append(job.id)
        assert all(w.jobs[i].status == "cancelled" for i in ids[-3:])
        _queue(w, 99)  # each submit forgets what is over the cap
        assert [i for i in ids if i in w.jobs] == ids[-3:]
    finally:
        w.encoder.close()


def _run_alone(w: SamplingWorker, job: Job) -> None:
    while not job.done:
        with w._cv:
            w._admit()
        if w._live:
            _tick(w)
    w.encoder.drain()  # the job's images are encoded on the encoder thread


def test_a_failed_batch_is_retried_per_job_with_the_same_noise(worker, monkeypatch):
    """A batch that fails after drawing its noise (as a GPU OOM in the update could) is stepped again job by
    job, with each job's generator rewound, so every seed still gives the images it gives alone."""
    import engine.sampling.stepper as stepper_module

    real_step = stepper_module.sampling_step
    alone = []
    for seed in (1, 2):
        job = _submit(worker, 2, seed=seed, sampler="ddpm")  # stochastic: every step draws noise
        _run_alone(worker, job)
        alone.append(_images(job))

    def fails_when_batched(prediction, out, x, coeffs, noise, clip_range, history=None):
        if x.shape[0] > 2:
            raise RuntimeError("injected: the batched update failed")
        return real_step(prediction, out, x, coeffs, noise, clip_range, history)

    monkeypatch.setattr(stepper_module, "sampling_step", fails_when_batched)
    a, b = _submit(worker, 2, seed=1, sampler="ddpm"), _submit(worker, 2, seed=2, sampler="ddpm")
    assert _tick(worker) == [a, b]
    assert (a.step, b.step) == (1, 1)
    monkeypatch.setattr(stepper_module, "sampling_step", real_step)
    _run_alone(worker, a)
    _run_alone(worker, b)
    assert [_images(a), _images(b)] == alone


def test_a_job_whose_last_frame_cannot_be_sent_ends_in_error_not_running(worker, monkeypatch):
    job = _submit(worker, 1, seed=0)
    real_emit = worker._emit

    def emit(j, result):
        if isinstance(result, Frame) and result.last:
            raise RuntimeError("injected: the device copy failed")
        real_emit(j, result)

    monkeypatch.setattr(worker, "_emit", emit)
    for _ in range(job.plan.K):
        _tick(worker)
    with worker._cv:
        worker._admit()
    assert job.status == "error" and job not in worker._live


def test_mixed_samplers_batched_together_give_each_seed_its_images(tmp_path):
    """Jobs of nine samplers (multistep ones keep an x̂0 or ε̂ history, pc's Langevin rows take per-sample norms,
    ode_rk45 keeps its own step size) share every forward, yet each gives the images it gives alone and the
    images engine.sample gives offline for its seed."""
    from engine import OdePlan, SamplingPlan, png_bytes, sample, to_uint8

    m = load_model_file(tiny_model_file(tmp_path / "tiny.safetensors", T=100), torch.device("cpu"))
    worker = SamplingWorker(m, torch.device("cpu"), max_batch=16, max_active_jobs=9, max_queue=9)

    specs = [("ddpm", 20, None, 2), ("dpmpp_3m", 12, None, 1), ("dpmpp_2m_sde", 10, None, 2), ("ddim", 15, 0.5, 1),
             ("plms", 9, None, 1), ("pndm", 6, None, 2), ("sde_em", 12, None, 1), ("pc", 6, None, 2),
             ("ode_rk45", None, None, 1)]

    def fields(sampler, steps, eta):
        return dict(rtol=1e-2, atol=1e-2) if steps is None else dict(steps=steps, eta=eta, spacing="logsnr")

    def plan(sampler, steps, eta):
        if steps is None:
            return OdePlan.build(worker.model.diffusion, 1e-2, 1e-2)
        corrector = dict(snr=0.16, corrector_steps=1) if sampler == "pc" else {}
        return SamplingPlan.build(worker.model.diffusion, sampler, steps, eta, spacing="logsnr", **corrector)

    def put(i, s, k, e, n):
        run = resolve(SamplingSpec(n=n, seed=10 + i, sampler=s, **fields(s, k, e)), worker.model)
        return worker.submit(run, frame_every=100, log=JobLog("png", 8, worker.encoder, worker.model.card.value_range))

    jobs = [put(i, s, k, e, n) for i, (s, k, e, n) in enumerate(specs)]
    with worker._cv:
        worker._admit()
    sizes = []
    while any(not j.done for j in jobs):
        sizes.append(sum(j.n for j in _tick(worker)))
    worker.encoder.drain()
    assert max(sizes) == 13, "the nine jobs never shared a forward"
    m = worker.model
    for i, ((s, k, e, n), job) in enumerate(zip(specs, jobs, strict=True)):
        offline = sample(m.net, m.diffusion, plan(s, k, e), (n, *m.sample_shape), torch.Generator().manual_seed(10 + i))
        u8 = to_uint8(offline, m.card.value_range).numpy()
        assert _images(job) == [png_bytes(u8[j]) for j in range(n)], s
        again = put(i, s, k, e, n)
        _run_alone(worker, again)
        assert _images(again) == _images(job), s
    worker.encoder.close()


def test_a_finished_job_is_kept_while_a_stream_reads_it_and_for_the_ttl_after_it_leaves(tmp_path, monkeypatch):
    """A client that hung up to reconnect with Last-Event-ID must find its job, however late in the job's life it
    hung up and however long the host took to let it reconnect: the TTL restarts when the last reader leaves."""
    import app.runtime.worker as worker_module

    now = [1000.0]
    monkeypatch.setattr(worker_module.time, "monotonic", lambda: now[0])
    m = load_model_file(tiny_model_file(tmp_path / "tiny.safetensors", T=100), torch.device("cpu"))
    w = SamplingWorker(m, torch.device("cpu"), max_batch=8, max_active_jobs=8, max_queue=100, job_ttl_s=3.0,
                       max_finished_jobs=2)
    try:
        read, other = _queue(w, 0), _queue(w, 1)
        w.attach(read)
        w.cancel(read.id)
        w.cancel(other.id)
        now[0] += 60  # far past the TTL, while the stream still reads `read`
        for seed in range(2, 6):  # and past the cap: more finished jobs than max_finished_jobs
            w.cancel(_queue(w, seed).id)
        assert read.id in w.jobs and other.id not in w.jobs
        w.max_finished = 100  # from here on, the TTL alone
        w.detach(read)  # the client hangs up, to reconnect
        now[0] += 2.9
        _queue(w, 99)
        assert read.id in w.jobs, "forgotten before the TTL counted from its last reader"
        now[0] += 0.2
        _queue(w, 100)
        assert read.id not in w.jobs
    finally:
        w.encoder.close()


def test_a_job_whose_images_cannot_be_encoded_ends_in_error_not_done(worker, monkeypatch):
    import app.runtime.frames as frames_module

    real_encode = frames_module.encode

    def encode(result, fmt, value_range, columns=None):
        if type(result).__name__ == "Done":
            raise RuntimeError("injected: the PNG encoder failed")
        return real_encode(result, fmt, value_range, columns)

    monkeypatch.setattr(frames_module, "encode", encode)
    job = _submit(worker, 1, seed=0)
    _run_alone(worker, job)
    assert job.status == "error" and "injected" in (job.error or "")
    assert job.log.final() is None and job.log.closed
    assert type(job.log.since(0)[-1].result).__name__ == "Failed"


def test_an_adaptive_run_past_its_evaluation_budget_fails_naming_its_tolerance(worker):
    """ode_rk45 stops at its budget with the field to change (the route answers 422 with it), and the jobs
    batched beside it go on."""
    import dataclasses

    run = resolve(SamplingSpec(n=1, seed=1, sampler="ode_rk45"), worker.model)
    run = dataclasses.replace(run, plan=dataclasses.replace(run.plan, K=3))
    ode = worker.submit(run, frame_every=100, log=JobLog("png", 8, worker.encoder, worker.model.card.value_range))
    other = _put(worker, 1, 2, "ddim", 6)
    with worker._cv:
        worker._admit()
    while not (ode.done and other.done):
        _tick(worker)
    worker.encoder.drain()
    assert ode.status == "error" and ode.error_field == "rtol" and ode.step == 3
    assert ode.error.startswith("rtol: ode_rk45 needed more than 3 evaluations")
    assert other.status == "done" and _images(other)
