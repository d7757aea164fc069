"""Trainer: exact resume after SIGKILL, atomic checkpoints, NaN guard, DDP, CLI round trip."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.data.datasets import EpochSampler, load_dataset
from engine.training.config import preset_train_config
from engine.training.state import latest_checkpoint, load_checkpoint, save_checkpoint
from engine.training.trainer import Trainer, TrainingDiverged

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, env=ENV,
                          cwd=ROOT, check=check, timeout=240)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(run)
    ema = {f"ema.{k}": v for k, v in load_file(ckpt / "ema.safetensors").items()}
    return {**load_file(ckpt / "model.safetensors"), **ema}


def test_dataset_split_is_disjoint_and_scaled():
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    assert len(train) == 4500 and len(test) == 500 and train.shape == (1, 28, 28)
    assert train.images.min() >= -1 and train.images.max() <= 1 and not train.hflip
    flat_train = {hash(x.numpy().tobytes()) for x in train.images[:4500]}
    assert not any(hash(x.numpy().tobytes()) in flat_train for x in test.images)


def test_epoch_sampler_resumes_exactly():
    a = EpochSampler(10, 4, seed=3)
    seq = [a.next_indices().tolist() for _ in range(7)]
    b = EpochSampler(10, 4, seed=3)
    for _ in range(3):
        b.next_indices()
    c = EpochSampler(10, 4, seed=3, **b.state())
    assert [c.next_indices().tolist() for _ in range(4)] == seq[3:]


@pytest.mark.parametrize("extra", [["--num-classes", "0"], ["--label-dropout", "0.3"]])
def test_kill_and_resume_matches_uninterrupted_run(tmp_path, extra):
    """SIGKILL during training, --resume, and the final weights equal an uninterrupted run's (labels too)."""
    common = ["--preset", "tiny", "--max-steps", "40", "--ckpt-every", "5", "--sample-every", "0", *extra]
    _cli("train", "--run-dir", str(tmp_path / "a"), *common)
    proc = subprocess.Popen([sys.executable, "-m", "engine", "train", "--run-dir", str(tmp_path / "b"), *common],
                            env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while latest_checkpoint(tmp_path / "b") is None or latest_checkpoint(tmp_path / "b").name < "step_0000015":
        assert time.monotonic() < deadline and proc.poll() is None, "training never reached a checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = latest_checkpoint(tmp_path / "b").name
    assert killed_at < "step_0000040", "the kill came too late to test anything"
    _cli("train", "--run-dir", str(tmp_path / "b"), "--resume")
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=f"{k} differs after resume from {killed_at}")


def test_crash_mid_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    sd = {"w": torch.ones(3)}
    state = {"step": 1, "images_seen": 1}
    first = save_checkpoint(tmp_path, 1, sd, None, state, keep_last=3)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path, 2, {"w": torch.zeros(3)}, None, {"step": 2}, keep_last=3)
    assert latest_checkpoint(tmp_path) == first
    model, _, st = load_checkpoint(first)
    assert torch.equal(model["w"], torch.ones(3)) and st["step"] == 1
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")] == []


def test_nan_guard_skips_then_stops(tmp_path):
    cfg = preset_train_config("tiny", max_steps=12, fault_nan_steps=(3,))
    with pytest.warns(RuntimeWarning, match="non-finite"):
        res = Trainer(cfg, tmp_path / "skip", progress=False).run()
    assert res.step == 12  # the bad attempt was skipped, not counted, and training went on
    w = load_file(latest_checkpoint(tmp_path / "skip") / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in w.values())
    cfg = preset_train_config("tiny", max_steps=30, nan_patience=3, fault_nan_steps=tuple(range(8, 40)))
    t = Trainer(cfg, tmp_path / "stop", progress=False)
    with pytest.warns(RuntimeWarning), pytest.raises(TrainingDiverged, match="3 consecutive non-finite"):
        t.run()
    good = latest_checkpoint(tmp_path / "stop")
    assert good is not None and good.name == "step_0000005"
    assert all(torch.isfinite(v).all() for v in load_file(good / "model.safetensors").values())


def test_refuses_to_overwrite_a_run(tmp_path):
    cfg = preset_train_config("tiny", max_steps=5)
    Trainer(cfg, tmp_path, progress=False).run()
    with pytest.raises(ValueError, match="--resume"):
        Trainer(cfg, tmp_path, progress=False)


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path):
    """torchrun --nproc_per_node 2 (gloo on CPU) vs one process, same global batch."""
    common = ["--preset", "tiny", "--max-steps", "6", "--ckpt-every", "6", "--sample-every", "0",
              "--ema-decay", "0.5"]
    _cli("train", "--run-dir", str(tmp_path / "one"), *common)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        "29517", "-m", "engine", "train", "--run-dir", str(tmp_path / "two"), *common],
                       env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-4, msg=k)


@pytest.mark.slow
def test_ddp_two_nodes_match_one_process(tmp_path):
    """torchrun --nnodes 2, as on two machines: two launchers with one gloo process each, meeting at a
    static rendezvous on loopback, follow the one-process trajectory."""
    common = ["--preset", "tiny", "--max-steps", "4", "--ckpt-every", "4", "--sample-every", "0"]
    _cli("train", "--run-dir", str(tmp_path / "one"), *common)
    port = str(29600 + os.getpid() % 300)
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node",
                               "1", "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", port,
                               "-m", "engine", "train", "--run-dir", str(tmp_path / "two"), *common],
                              env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outs = [node.communicate(timeout=240)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-4, msg=k)


def test_cli_train_export_sample_round_trip(tmp_path):
    run = tmp_path / "run"
    _cli("train", "--preset", "tiny", "--run-dir", str(run), "--max-steps", "6", "--sample-every", "3")
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["ch"] == 8 and cfg["preset"] == "tiny"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "grad_norm", "img_per_s", "ema_decay"} <= rows[0].keys()
    assert list((run / "samples").glob("step_*.png")) and list((run / "samples").glob("strip_*.png"))
    out = _cli("export", str(run), "--out", str(tmp_path / "m.safetensors"))
    assert "EMA" in out.stdout
    _cli("sample", "--model", str(tmp_path / "m.safetensors"), "--n", "3", "--steps", "5", "--sampler", "ddim",
         "--out", str(tmp_path / "s.npz"))
    import numpy as np

    with np.load(tmp_path / "s.npz") as z:
        assert z["images"].shape == (3, 8, 8, 1) and z["images"].dtype == np.uint8


@pytest.mark.parametrize("args,needle", [
    (["train", "--preset", "nope"], "invalid choice"),
    (["train", "--preset", "tiny", "--batch-size", "0"], "must be ≥ 1"),
    (["export", "/no/such/run", "--out", "x.safetensors"], "not a run directory"),
    (["sample", "--model", "/no/such.safetensors", "--out", "x.png"], "no such model file"),
    (["train", "--preset", "tiny", "--resume", "--run-dir", "/no/such/run"], "does not exist"),
])
def test_cli_errors_are_one_line(args, needle):
    r = _cli(*args, check=False)
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_init_from_starts_at_the_model_file_and_records_it(tmp_path):
    from engine.io.loader import load_model_file
    from engine.io.modelfile import read_card, save_model_file
    from engine.models.unet import build_model
    from engine.training.trainer import model_card_for_run

    base = preset_train_config("tiny", max_steps=4, sample_every=0)
    Trainer(base, tmp_path / "a", progress=False).run()
    ema = load_file(latest_checkpoint(tmp_path / "a") / "ema.safetensors")
    net = build_model(base.model)
    net.load_state_dict(ema)
    mf = save_model_file(tmp_path / "a.safetensors", net, model_card_for_run(tmp_path / "a", base, 4, 64))

    cfg = preset_train_config("tiny", max_steps=3, init_from=str(mf), lr=1e-9, warmup_steps=0, sample_every=0)
    t = Trainer(cfg, tmp_path / "b", progress=False)
    assert t.ema is not None and t.ema.current_decay() == cfg.ema_decay  # no EMA warmup from good weights
    for k, v in t.model.state_dict().items():
        torch.testing.assert_close(v, ema[k], msg=k)
        torch.testing.assert_close(t.ema.shadow[k], ema[k], msg=k)
    t.run()
    after = load_file(latest_checkpoint(tmp_path / "b") / "model.safetensors")
    assert max((after[k] - ema[k]).abs().max().item() for k in ema) < 1e-6  # lr 1e-9: a start, not a reset

    mf = mf.rename(tmp_path / "moved.safetensors")  # the history must survive its starting file
    out = _cli("export", str(tmp_path / "b"), "--out", str(tmp_path / "b.safetensors"))
    assert "EMA" in out.stdout
    rec = read_card(tmp_path / "b.safetensors").training
    assert rec["init_from"] == "a.safetensors" and rec["init_steps"] == 4 and rec["steps"] == 3
    assert load_model_file(tmp_path / "b.safetensors").num_parameters == sum(v.numel() for v in ema.values())
    from app.main import model_info
    from app.settings import Settings

    info = model_info(load_model_file(tmp_path / "b.safetensors"), torch.device("cpu"), Settings(max_batch=8))
    assert (info["steps"], info["images_seen"]) == (4 + 3, 64 + 3 * cfg.batch_size)  # the page shows the history

    again = preset_train_config("tiny", max_steps=2, init_from=str(tmp_path / "b.safetensors"), sample_every=0)
    t2 = Trainer(again, tmp_path / "e", progress=False)  # a fine-tune of a fine-tune keeps the whole history
    assert (t2.cfg.init_steps, t2.cfg.init_images_seen) == (info["steps"], info["images_seen"])

    other = preset_train_config("tiny", max_steps=3, init_from=str(mf), diffusion_overrides={"T": 50})
    with pytest.raises(ValueError, match=r"diffusion config differs .*\['T'\]"):
        Trainer(other, tmp_path / "c", progress=False)
    wider = preset_train_config("tiny", max_steps=3, init_from=str(mf), model_overrides={"ch": 16})
    with pytest.raises(ValueError, match=r"model config differs .*ch"):
        Trainer(wider, tmp_path / "d", progress=False)


def test_cosine_lr_follows_its_closed_form():
    import itertools
    import math

    from engine.training.trainer import lr_factor

    cfg = preset_train_config("tiny", warmup_steps=10, max_steps=1000, lr_decay="cosine", lr_min_ratio=0.2)
    assert lr_factor(cfg, 0) == pytest.approx(0.1 * 1.0, rel=1e-4)  # warmup 1/10 × cosine ≈ 1 at step 0
    assert lr_factor(cfg, 500) == pytest.approx(0.2 + 0.8 * 0.5, rel=1e-12)  # half-way: the mean of the ends
    assert lr_factor(cfg, 1000) == pytest.approx(0.2, rel=1e-12)
    assert lr_factor(cfg, 5000) == pytest.approx(0.2, rel=1e-12)  # held at the floor past max_steps
    vals = [lr_factor(cfg, s) for s in range(10, 1001)]
    assert all(a >= b for a, b in itertools.pairwise(vals))
    s = 250
    assert lr_factor(cfg, s) == pytest.approx(0.2 + 0.4 * (1 + math.cos(math.pi / 4)), rel=1e-12)
    flat = preset_train_config("tiny", warmup_steps=0, max_steps=1000)
    assert {lr_factor(flat, s) for s in (0, 10, 999, 5000)} == {1.0}


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_applies_safe_flags_and_records_them(tmp_path):
    """`--resume --lr 1e-5` trains on at 1e-5 from the next step; config.json and metrics.jsonl say so."""
    run = tmp_path / "run"
    _cli("train", "--preset", "tiny", "--run-dir", str(run), "--max-steps", "6", "--ckpt-every", "3",
         "--sample-every", "0")
    assert json.loads((run / "config.json").read_text())["lr"] == 1e-3
    # --preset equal to the run's, and flags that are not passed, change nothing
    _cli("train", "--run-dir", str(run), "--resume", "--preset", "tiny", "--max-steps", "10", "--lr", "1e-5",
         "--log-every", "1")
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["lr"], cfg["max_steps"], cfg["log_every"], cfg["batch_size"]) == (1e-5, 10, 1, 16)
    change = [r for r in _rows(run) if r.get("event") == "config_change"]
    assert change == [{"event": "config_change", "step": 6,
                       "changes": {"lr": [1e-3, 1e-5], "max_steps": [6, 10], "log_every": [5, 1]}}]
    steps = {r["step"]: r for r in _rows(run) if "loss" in r}
    assert [steps[s]["lr"] for s in (7, 8, 9, 10)] == [pytest.approx(1e-5)] * 4  # warmup (5 steps) is over
    _, _, state = load_checkpoint(latest_checkpoint(run))
    assert state["step"] == 10 and state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-5)


def test_resume_refuses_flags_that_change_what_is_trained(tmp_path):
    run = tmp_path / "run"
    _cli("train", "--preset", "tiny", "--run-dir", str(run), "--max-steps", "5", "--sample-every", "0")
    before = {p: (run / p).read_text() for p in ("config.json", "metrics.jsonl")}
    for args, named in ((["--batch-size", "8", "--seed", "3", "--lr", "1e-4"], ["--batch-size", "--seed"]),
                        (["--ch", "16", "--T", "50"], ["--ch", "--T"]),
                        (["--preset", "mnist"], ["--preset"]),
                        (["--ema-decay", "0"], ["--ema-decay 0"])):
        r = _cli("train", "--run-dir", str(run), "--resume", "--max-steps", "8", *args, check=False)
        assert r.returncode == 2, (args, r.stderr)
        err = r.stderr.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err and "--resume cannot change" in err, err
        assert all(n in err.split(":")[2] for n in named) and "--lr" not in err.split(":")[2], err
    assert {p: (run / p).read_text() for p in before} == before  # nothing was written
    assert latest_checkpoint(run).name == "step_0000005"


def test_class_embedding_learns_at_its_own_rate_and_a_resume_may_change_it(tmp_path):
    """--class-lr-scale gives the class embedding lr × scale (the rest lr); a resume applies a new scale."""
    cfg = preset_train_config("tiny", model_overrides={"num_classes": 10}, class_lr_scale=20, max_steps=6, ckpt_every=3,
                              warmup_steps=0)
    t = Trainer(cfg, tmp_path, progress=False)
    t.run()
    emb = t.model.class_emb.weight
    groups = t.opt.param_groups
    assert [g["lr"] for g in groups] == [pytest.approx(1e-3), pytest.approx(2e-2)]
    assert groups[1]["params"] == [emb] and all(p is not emb for p in groups[0]["params"])
    assert len(groups[0]["params"]) + 1 == len(list(t.model.parameters()))
    cfg = preset_train_config("tiny", model_overrides={"num_classes": 10}, class_lr_scale=5, max_steps=8, ckpt_every=3,
                              warmup_steps=0)
    t = Trainer(cfg, tmp_path, resume=True, progress=False)
    assert [g["lr"] for g in t.opt.param_groups] == [pytest.approx(1e-3), pytest.approx(5e-3)]
    with pytest.raises(ValueError, match="class_lr_scale 5 needs a class-conditional model"):
        preset_train_config("tiny", class_lr_scale=5)


def test_train_flags_are_the_config_fields_and_keep_their_names():
    import dataclasses

    from engine.cli import build_parser
    from engine.training.config import NESTED_FLAGS, TrainConfig

    parser, sub = build_parser()
    train = sub.choices["train"]
    flags = {s for a in train._actions for s in a.option_strings}
    fields = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata["flag"]}
    assert {"--" + n.replace("_", "-") for n in fields | set(NESTED_FLAGS)} <= flags
    # the flag names the README, BENCHMARKS.md and the tests use parse to the value given
    old = {"--dataset": "mnist", "--data-root": "d", "--batch-size": "8", "--lr": "1e-5", "--warmup-steps": "3",
           "--lr-decay": "cosine", "--lr-min-ratio": "0.2", "--init-from": "m.safetensors", "--grad-clip": "0",
           "--ema-decay": "0", "--max-steps": "9", "--max-minutes": "1.5", "--schedule": "cosine", "--T": "50",
           "--prediction": "v", "--timestep-sampling": "beta", "--weighting": "min_snr", "--grad-accum": "2",
           "--seed": "4", "--device": "cpu", "--amp": "off", "--sample-every": "0", "--ckpt-every": "7",
           "--keep-last": "2", "--ch": "16", "--dropout": "0.1"}
    switches = ["--resume", "--download", "--channels-last", "--compile"]
    args = parser.parse_args(["train", "--preset", "tiny", "--run-dir", "r", *[x for kv in old.items() for x in kv],
                              *switches])
    for flag, text in old.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        assert str(value) == text or value == float(text), (flag, value)
    assert args.resume and args.download and args.channels_last and args.compile
    from engine.cli.train import passed_config

    top, nested = passed_config(parser.parse_args(["train", "--lr", "1e-5", "--no-compile", "--T", "50"]))
    assert top == {"lr": 1e-5, "compile": False} and nested == {"model": {}, "diffusion": {"T": 50}}


def test_config_rules_live_in_the_config():
    cfg = preset_train_config("tiny", grad_clip=0, ema_decay=0)
    assert cfg.grad_clip is None and cfg.ema_decay is None  # "0 disables"
    for over, needle in (({"batch_size": 0}, "batch_size must be ≥ 1"), ({"lr": 0}, "lr must be > 0"),
                         ({"lr_min_ratio": 1.5}, "lr_min_ratio must be ≤ 1"),
                         ({"ema_decay": 1.0}, "ema_decay must be < 1"), ({"lr_decay": "step"}, "lr_decay must be one"),
                         ({"dataset": "imagenet"}, "dataset must be one"),
                         ({"batch_size": 16, "grad_accum": 3}, "divisible by grad_accum")):
        with pytest.raises(ValueError, match=needle):
            preset_train_config("tiny", **over)


def test_init_from_an_unconditional_file_trains_a_class_conditional_model(tmp_path):
    """--init-from plus --num-classes converts: every shared tensor is copied, the class embedding (zero at
    first) learns, and the exported file is class-conditional."""
    _cli("train", "--preset", "tiny", "--run-dir", str(tmp_path / "u"), "--max-steps", "4", "--sample-every", "0",
         "--num-classes", "0")
    _cli("export", str(tmp_path / "u"), "--out", str(tmp_path / "u.safetensors"))
    _cli("train", "--preset", "tiny", "--run-dir", str(tmp_path / "c"), "--init-from", str(tmp_path / "u.safetensors"),
         "--num-classes", "10", "--max-steps", "6", "--sample-every", "0", "--lr", "1e-2", "--ema-decay", "0")
    _cli("export", str(tmp_path / "c"), "--out", str(tmp_path / "c.safetensors"))
    from engine import load_model_file

    m = load_model_file(tmp_path / "c.safetensors")
    assert m.num_classes == 10 and m.net.class_emb.weight.abs().sum() > 0
    r = _cli("train", "--preset", "tiny", "--run-dir", str(tmp_path / "bad"), "--num-classes", "3", "--max-steps", "1",
             check=False)
    assert r.returncode == 2 and "--num-classes 10" in r.stderr


def test_num_classes_comes_from_the_dataset_unless_given(tmp_path):
    """Labelled data trains a class-conditional model by default: 10 for MNIST-5k, an image folder's
    subfolders (a flat folder has one class, so none); --num-classes 0 asks for an unconditional one."""
    from engine.cli import build_parser
    from engine.cli.train import _new_config
    from engine.data.datasets import dataset_classes

    parser, _ = build_parser()

    def classes(*args: str) -> int:
        return _new_config(parser.parse_args(["train", "--preset", "tiny", *args])).model.num_classes

    assert classes() == 10 and classes("--num-classes", "0") == 0 and classes("--num-classes", "4") == 4
    assert classes("--class-lr-scale", "20") == 10  # the scale needs the classes the dataset gives
    from PIL import Image

    for sub, n in (("cats", 2), ("dogs", 2), ("owls", 1)):
        (tmp_path / "tree" / sub).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8)).save(tmp_path / "tree" / sub / f"{i}.png")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    assert dataset_classes("folder", tmp_path / "tree") == 3 and dataset_classes("folder", tmp_path / "flat") == 0
    assert classes("--dataset", "folder", "--data-root", str(tmp_path / "tree")) == 3
