"""Test helpers: tiny model files and process facts, plus the local-server client every suite shares
(:mod:`app.local_server`, which benchmarks and scripts use too)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from app.local_server import ROOT, SSE, Server, decode_png, free_port, sse_events, start_server, stream_seconds
from engine import DiffusionConfig, ModelCard, build_model, preset_config, save_model_file

__all__ = ["ROOT", "SSE", "Server", "decode_png", "free_port", "metric", "proc_status", "sse_events", "start_server",
           "stream_seconds", "tiny_model_file"]


def tiny_model_file(path: Path, image_size: int = 8, seed: int = 0, T: int = 1000, num_classes: int = 0) -> Path:
    """An untrained tiny UNet; a small ``T`` bounds how long any request to its server can run.

    With ``num_classes`` it is class-conditional, with a random class embedding so that labels matter."""
    import torch

    torch.manual_seed(seed)
    cfg = preset_config("tiny", image_size=image_size, num_classes=num_classes)
    card = ModelCard(model=cfg, diffusion=DiffusionConfig(T=T), data={"dataset": "test", "value_range": [-1, 1]},
                     name="tiny-test")
    net = build_model(cfg)
    if num_classes:
        with torch.no_grad():
            net.class_emb.weight.normal_()
    return save_model_file(path, net, card)


def proc_status(pid: int) -> dict[str, int]:
    """Numeric fields of /proc/<pid>/status (VmRSS and VmHWM in kB, Threads) plus open fds."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def metric(url: str, name: str) -> float:
    """One unlabelled Prometheus sample from the server's /metrics (0 when absent)."""
    import re

    text = httpx.get(url + "/metrics", timeout=10).text
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0
