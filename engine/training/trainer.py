"""The trainer: AdamW + warmup, EMA, AMP, a NaN guard, budgets, DDP and exact resume.

Determinism: one CPU ``torch.Generator`` (saved in every checkpoint) draws the data order, flips,
timesteps and noise for the *global* batch; under DDP each rank slices its share, so a run on
N processes follows the same trajectory as one process with the same global batch.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..data.datasets import EpochSampler, ImageData, load_dataset
from ..devices import resolve_device
from ..diffusion.losses import sample_timesteps, simple_loss
from ..io.atomic import atomic_write_text
from ..io.images import make_grid, to_pil, to_uint8
from ..io.modelfile import ModelCard
from ..models.unet import build_model, load_shared_weights
from ..sampling import SamplingPlan, sample_iter
from .config import TrainConfig, resume_changes
from .state import latest_checkpoint, load_checkpoint, save_checkpoint


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps; the last good checkpoint is left intact."""


class EMA:
    """An fp32 exponential moving average of a model's parameters and buffers.

    With ``warmup`` the decay after n updates is min(decay, (1 + n) / (10 + n)), so a short run is
    not dominated by the random initial weights.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        d = self.current_decay()
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if v.dtype.is_floating_point:
                s.lerp_(v.detach().float(), 1.0 - d)
            else:
                s.copy_(v)
        self.updates += 1
        return d

    def state_dict(self) -> dict[str, Tensor]:
        return self.shadow


@dataclass
class RunResult:
    step: int
    images_seen: int
    stopped_by: str
    last_checkpoint: Path | None


class Trainer:
    """Trains ``config`` into ``run_dir``; with ``resume`` it continues from the latest checkpoint.

    The loop follows improved-diffusion's ``TrainLoop``: :meth:`run` calls :meth:`run_step` (a batch,
    :meth:`forward_backward`, then :meth:`optimize` or a skipped step), :meth:`log_step` and :meth:`save`.
    """

    def __init__(self, config: TrainConfig, run_dir: str | Path, resume: bool = False, progress: bool = True) -> None:
        self.cfg, self.run_dir, self.progress = config, Path(run_dir), progress
        self.config_changes = self._check_resumed_config() if resume else {}
        self._setup_processes()
        self.data: ImageData = self._load_data()
        self.diffusion = config.diffusion.build()
        self._build_model(init_weights=not resume)
        self._build_optimizer()
        self.gen = torch.Generator().manual_seed(config.seed)
        self.sampler = EpochSampler(len(self.data), config.batch_size, config.seed)
        self.step, self.images_seen, self.bad_steps, self.attempts = 0, 0, 0, 0
        self.last_ckpt: Path | None = None
        self.last_ckpt_step = -1
        if resume:
            self._resume()
        elif self.is_main and (self.run_dir / "checkpoints").exists() and latest_checkpoint(self.run_dir):
            raise ValueError(f"{self.run_dir} already holds checkpoints; pass --resume or choose another --run-dir")
        self.net = self._wrap_model()

    # ------------------------------------------------------------------ setup
    def _check_resumed_config(self) -> dict[str, list[Any]]:
        """What this config changes in the run's saved one; refuses (ValueError) what a resume cannot change."""
        path = self.run_dir / "config.json"
        if not path.exists():
            return {}
        saved = TrainConfig.from_dict(json.loads(path.read_text()))
        # Facts about where the run started, recorded when it did; never settings of this session.
        self.cfg.init_steps, self.cfg.init_images_seen = saved.init_steps, saved.init_images_seen
        return resume_changes(saved, self.cfg)

    def _setup_processes(self) -> None:
        """Rank, world size and device; joins the process group under torchrun."""
        cfg = self.cfg
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.is_main = self.rank == 0
        self.device = resolve_device(cfg.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if cfg.batch_size % (self.world * cfg.grad_accum):
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by world size × grad_accum "
                             f"({self.world} × {cfg.grad_accum})")

    def _load_data(self) -> ImageData:
        cfg = self.cfg
        data = load_dataset(cfg.dataset, "train", cfg.data_root, cfg.download, cfg.model.image_size)
        if data.shape[0] != cfg.model.in_channels:
            raise ValueError(f"dataset {cfg.dataset} has {data.shape[0]} channels, the model expects "
                             f"{cfg.model.in_channels}")
        found = int(data.labels.max()) + 1 if len(data.labels) else 0
        if cfg.model.num_classes and found > cfg.model.num_classes:
            raise ValueError(f"num_classes {cfg.model.num_classes}: dataset {cfg.dataset} has labels up to "
                             f"{found - 1}; use --num-classes {found}")
        return data

    def _build_model(self, init_weights: bool) -> None:
        """The network (seeded), its starting weights and its EMA."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.init_from and init_weights:
            self._init_weights(cfg.init_from)
        # The EMA warmup exists to forget a random init; a fine-tuning run starts from good weights.
        ema_warmup = cfg.ema_warmup and not cfg.init_from
        self.ema = EMA(self.model, cfg.ema_decay, ema_warmup) if cfg.ema_decay else None

    def _build_optimizer(self) -> None:
        """AdamW, the learning-rate schedule, and the loss scaler (on only for fp16)."""
        cfg = self.cfg
        groups = [{"params": params, "lr": cfg.lr * scale} for params, scale in self._param_groups()]
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
        # lr_factor reads self.cfg at each step, so a schedule changed on resume applies from then on.
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(self.cfg, s))
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def _param_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """The optimizer's groups, each with its rate as a multiple of lr: the network, then (class-conditional
        models) its class embedding at ``class_lr_scale``."""
        emb = getattr(self.model, "class_emb", None)
        if emb is None:
            return [(list(self.model.parameters()), 1.0)]
        own = {id(p) for p in emb.parameters()}
        return [([p for p in self.model.parameters() if id(p) not in own], 1.0),
                (list(emb.parameters()), self.cfg.class_lr_scale)]

    def _wrap_model(self) -> nn.Module:
        """The module the steps call: the model, under DDP with several processes, compiled if asked."""
        net: nn.Module = self.model
        if self.world > 1:
            net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.cfg.compile:
            net = torch.compile(net)
        return net

    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.cfg.amp
        if self.device.type != "cuda" or amp == "off":
            return None
        if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
            return torch.bfloat16
        return torch.float16

    def _init_weights(self, path: str) -> None:
        """Start from a model file's weights; its network and diffusion must be this run's."""
        from ..io.loader import load_model_file

        loaded = load_model_file(path)
        for what, theirs, ours in (("model", loaded.card.model.to_dict(), self.cfg.model.to_dict()),
                                   ("diffusion", asdict(loaded.card.diffusion), asdict(self.cfg.diffusion))):
            # Dropout is a training choice, not part of the network's shape; classes may be added to an
            # unconditional network (its class embedding starts at zero, see load_shared_weights).
            added = what == "model" and not theirs.get("num_classes")
            diff = sorted(k for k in set(theirs) | set(ours) if k != "dropout" and theirs.get(k) != ours.get(k)
                          and not (added and k == "num_classes"))
            if diff:
                k = diff[0]
                raise ValueError(f"init_from {path}: its {what} config differs from this run's in {diff} "
                                 f"(e.g. {k}: {theirs.get(k)!r} vs {ours.get(k)!r})")
        load_shared_weights(self.model, loaded.net.state_dict())
        # Copied now, into config.json, because the file may be overwritten or gone by export time.
        # The whole history, so a fine-tune of a fine-tune keeps it.
        self.cfg.init_steps = loaded.card.trained_total("steps") or 0
        self.cfg.init_images_seen = loaded.card.trained_total("images_seen") or 0

    def _resume(self) -> None:
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            raise ValueError(f"--resume: no complete checkpoint in {self.run_dir / 'checkpoints'}")
        model_sd, ema_sd, state = load_checkpoint(ckpt)
        self.model.load_state_dict(model_sd)
        if self.ema is not None:
            if ema_sd is None:
                raise ValueError(f"{ckpt}: the run uses EMA but the checkpoint has none")
            self.ema.shadow = {k: v.float().to(self.device) for k, v in ema_sd.items()}
            self.ema.updates = int(state["ema_updates"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["lr_schedule"])
        self._apply_lr_schedule()
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if torch.cuda.is_available() and "cuda_rng" in state:
            torch.cuda.set_rng_state_all(list(state["cuda_rng"]))
        self.sampler = EpochSampler(len(self.data), self.cfg.batch_size, self.cfg.seed,
                                    int(state["data_epoch"]), int(state["data_cursor"]))
        self.step, self.images_seen = int(state["step"]), int(state["images_seen"])
        self.last_ckpt, self.last_ckpt_step = ckpt, self.step

    def _apply_lr_schedule(self) -> None:
        """Set the optimizer's rate from this config at the restored step, as LambdaLR computes it
        (base × factor), so an lr or schedule changed on resume holds from the first step; when
        nothing changed this is the very value the checkpoint holds."""
        self.sched.base_lrs = [self.cfg.lr * scale for _, scale in self._param_groups()]
        for group, base in zip(self.opt.param_groups, self.sched.base_lrs, strict=True):
            group["initial_lr"] = base
            group["lr"] = base * lr_factor(self.cfg, self.sched.last_epoch)

    # ------------------------------------------------------------------ one step
    def _batch(self) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """The rank's slice of the global batch: images, timesteps, noise and labels, all drawn globally.

        A class-conditional model gets each label replaced by "no label" with probability label_dropout
        (Ho & Salimans 2022, Algorithm 1), so the same network also learns the unconditional ε."""
        idx = self.sampler.next_indices()
        x0 = self.data.images[idx]
        y = None
        classes = self.cfg.model.num_classes
        if classes:
            drop = torch.rand(len(idx), generator=self.gen) < self.cfg.label_dropout
            y = torch.where(drop, torch.full((len(idx),), classes), self.data.labels[idx].long())
        if self.data.hflip:
            flip = torch.rand(len(idx), generator=self.gen) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        t = sample_timesteps(self.diffusion, len(idx), self.cfg.timestep_sampling, generator=self.gen)
        noise = torch.randn(x0.shape, generator=self.gen)
        per = len(idx) // self.world
        sl = slice(self.rank * per, (self.rank + 1) * per)
        return x0[sl], t[sl], noise[sl], None if y is None else y[sl]

    def run_step(self) -> dict[str, float]:
        """One optimizer step on the next batch; a non-finite loss or gradient skips it (``skipped``)."""
        x0, t, noise, y = self._batch()
        loss = self.forward_backward(x0, t, noise, y)
        self.attempts += 1
        self.scaler.unscale_(self.opt)
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip or float("inf"))
        if not self._all_finite(loss, grad_norm):
            return self._skip_step()
        return self.optimize(loss, grad_norm)

    def forward_backward(self, x0: Tensor, t: Tensor, noise: Tensor, y: Tensor | None = None) -> float:
        """Accumulate the gradients of L_simple over ``grad_accum`` micro-batches; the batch's mean loss."""
        cfg = self.cfg
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        micro = max(1, x0.shape[0] // cfg.grad_accum)
        total = 0.0
        for i in range(0, x0.shape[0], micro):
            xb = x0[i : i + micro].to(self.device, non_blocking=True)
            if cfg.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            tb, nb = t[i : i + micro].to(self.device), noise[i : i + micro].to(self.device)
            net = self.net
            if y is not None:
                yb = y[i : i + micro].to(self.device)
                net = lambda x, tt, yb=yb: self.net(x, tt, yb)  # noqa: E731
            amp = self.amp_dtype is not None
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=amp):
                loss = simple_loss(self.diffusion, net, xb, tb, nb, cfg.weighting, cfg.min_snr_gamma).mean()
            if self.attempts + 1 in cfg.fault_nan_steps:
                loss = loss * float("nan")
            self.scaler.scale(loss / cfg.grad_accum).backward()
            total += loss.detach().float().item() / cfg.grad_accum
        return total

    def _all_finite(self, loss: float, grad_norm: Tensor) -> bool:
        finite = math.isfinite(loss) and bool(torch.isfinite(grad_norm))
        if self.world > 1:  # every rank must agree to skip, or the replicas would diverge
            flag = torch.tensor([1.0 if finite else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = bool(flag.item() == 1.0)
        return finite

    def _skip_step(self) -> dict[str, float]:
        """Drop this step's gradients; stop with :class:`TrainingDiverged` after ``nan_patience`` in a row."""
        self.opt.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():
            self.scaler.update()
        self.bad_steps += 1
        patience = self.cfg.nan_patience
        warnings.warn(f"step {self.step + 1}: non-finite loss or gradient; step skipped "
                      f"({self.bad_steps}/{patience} in a row)", RuntimeWarning, stacklevel=3)
        if self.bad_steps >= patience:
            where = f"; last good checkpoint: {self.last_ckpt}" if self.last_ckpt else ""
            raise TrainingDiverged(f"{self.bad_steps} consecutive non-finite steps at step {self.step + 1}; "
                                   f"stopping (lower --lr or check the data){where}")
        return {"loss": float("nan"), "grad_norm": float("nan"), "skipped": 1.0}

    def optimize(self, loss: float, grad_norm: Tensor) -> dict[str, float]:
        """Apply the step: optimizer, learning-rate schedule, EMA and counters."""
        self.bad_steps = 0
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        decay = self.ema.update(self.model) if self.ema is not None else 0.0
        self.step += 1
        self.images_seen += self.cfg.batch_size
        return {"loss": loss, "grad_norm": float(grad_norm), "ema_decay": decay}

    # ------------------------------------------------------------------ outputs
    def sampling_weights(self) -> dict[str, Tensor]:
        """EMA weights when the run keeps an EMA, else the raw weights."""
        return self.ema.state_dict() if self.ema is not None else self.model.state_dict()

    def checkpoint(self) -> Path | None:
        if self.is_main:
            state: dict[str, Any] = {
                "step": self.step,
                "images_seen": self.images_seen,
                "optimizer": self.opt.state_dict(),
                "lr_schedule": self.sched.state_dict(),
                "generator": self.gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "data_epoch": self.sampler.epoch,
                "data_cursor": self.sampler.cursor,
                "ema_updates": self.ema.updates if self.ema is not None else 0,
            }
            if self.scaler.is_enabled():
                state["scaler"] = self.scaler.state_dict()
            if torch.cuda.is_available():
                state["cuda_rng"] = torch.cuda.get_rng_state_all()
            self.last_ckpt = save_checkpoint(self.run_dir, self.step, self.model.state_dict(),
                                             self.ema.state_dict() if self.ema is not None else None,
                                             state, self.cfg.keep_last)
        self.last_ckpt_step = self.step
        if self.world > 1:
            dist.barrier()
        return self.last_ckpt

    @torch.no_grad()
    def write_samples(self, n: int = 16) -> Path:
        """A 4×4 grid from the sampling weights, and a strip of one sample's x_t from noise to image."""
        net = build_model(self.cfg.model).to(self.device)
        net.load_state_dict(self.sampling_weights())
        net.eval()
        plan = SamplingPlan.build(self.diffusion, "ddim", min(50, self.diffusion.T), 0.0)
        shape = (n, *self.data.shape)
        marks = {round(k * (plan.K - 1) / 7) + 1 for k in range(8)}
        strip, final = [], None
        for fr in sample_iter(net, self.diffusion, plan, shape, torch.Generator().manual_seed(0), self.device):
            if fr.step in marks:
                strip.append(fr.x_t[:1])
            final = fr.x_t
        out = self.run_dir / "samples"
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"step_{self.step:07d}.png"
        to_pil(make_grid(to_uint8(final), nrow=4)).save(path)
        to_pil(make_grid(to_uint8(torch.cat(strip)), nrow=len(strip))).save(out / f"strip_{self.step:07d}.png")
        return path

    def _log(self, row: dict[str, Any]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    # ------------------------------------------------------------------ the loop
    def run(self) -> RunResult:
        """Train until ``max_steps`` or ``max_minutes``, then checkpoint (and sample) at the final step."""
        cfg = self.cfg
        self._start_run()
        deadline = time.monotonic() + cfg.max_minutes * 60 if cfg.max_minutes else None
        bar = self._progress_bar()
        stopped_by = "max_steps"
        try:
            while self.step < cfg.max_steps:
                if deadline is not None and self._agree(time.monotonic() >= deadline):
                    stopped_by = "max_minutes"
                    break
                out = self.run_step()
                if out.get("skipped"):
                    continue
                _show_step(bar, out, deadline)
                self.log_step(out)
                self.save()
        finally:
            if bar is not None:
                bar.close()
        if self.last_ckpt_step != self.step:
            self.checkpoint()
        if self.is_main and cfg.sample_every:
            self.write_samples()
        return RunResult(self.step, self.images_seen, stopped_by, self.last_ckpt)

    def _start_run(self) -> None:
        """Write config.json (and a ``config_change`` row for what a resume changed); start the clocks."""
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.json", json.dumps(self.cfg.to_dict(), indent=2) + "\n")
            if self.config_changes:
                self._log({"event": "config_change", "step": self.step, "changes": self.config_changes})
        self._rate_mark = (time.perf_counter(), self.images_seen)
        self._ckpt_time = time.monotonic()

    def _progress_bar(self) -> Any:
        if not (self.progress and self.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.cfg.max_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)

    def log_step(self, out: dict[str, float]) -> None:
        """A metrics.jsonl row every ``log_every`` steps, with the images/s since the last row."""
        if not (self.is_main and self.step % self.cfg.log_every == 0):
            return
        now = time.perf_counter()
        t_last, seen_last = self._rate_mark
        ips = (self.images_seen - seen_last) / max(now - t_last, 1e-9)
        self._rate_mark = (now, self.images_seen)
        self._log({"step": self.step, "loss": out["loss"], "lr": self.sched.get_last_lr()[0],
                   "grad_norm": out["grad_norm"], "img_per_s": round(ips, 2),
                   "ema_decay": out["ema_decay"], "images_seen": self.images_seen})

    def save(self) -> None:
        """A checkpoint every ``ckpt_every`` steps or ``ckpt_minutes``; a sample grid every ``sample_every``."""
        cfg = self.cfg
        timed = time.monotonic() - self._ckpt_time > cfg.ckpt_minutes * 60
        if self.step % cfg.ckpt_every == 0 or self._agree(timed):
            self.checkpoint()
            self._ckpt_time = time.monotonic()
        if self.is_main and cfg.sample_every and self.step % cfg.sample_every == 0:
            self.write_samples()

    def _agree(self, flag: bool) -> bool:
        """All ranks take time-based decisions together (rank 0's clock decides)."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.broadcast(t, src=0)
        return bool(t.item())


def _show_step(bar: Any, out: dict[str, float], deadline: float | None) -> None:
    """The step's loss on the progress bar, and the time left when minutes are the budget."""
    if bar is None:
        return
    bar.update(1)
    post = {"loss": f"{out['loss']:.4f}"}
    if deadline is not None:  # the step ETA is moot when time is the budget
        post["time_left"] = f"{max(0.0, deadline - time.monotonic()) / 60:.1f}min"
    bar.set_postfix(post)


def lr_factor(config: TrainConfig, step: int) -> float:
    """The learning-rate multiplier after ``step`` optimizer steps: linear warmup, then constant or cosine."""
    warm = config.warmup_steps
    f = min(1.0, (step + 1) / warm) if warm else 1.0
    if config.lr_decay == "cosine":
        progress = min(step, config.max_steps) / config.max_steps
        f *= config.lr_min_ratio + (1.0 - config.lr_min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


def model_card_for_run(run_dir: Path, config: TrainConfig, step: int, images_seen: int) -> ModelCard:
    """The ``ddpm.config`` of a model exported from a run."""
    return ModelCard(
        model=config.model,
        diffusion=config.diffusion,
        data={"dataset": config.dataset, "channels": config.model.in_channels, "image_size": config.model.image_size,
              "value_range": [-1.0, 1.0]},
        training={"steps": step, "images_seen": images_seen, "preset": config.preset, "ema": config.ema_decay,
                  "batch_size": config.batch_size, "lr": config.lr, "lr_decay": config.lr_decay,
                  "run_dir": run_dir.name, **_init_record(config)},
        name=f"{config.preset}-{config.dataset}",
    )


def _init_record(config: TrainConfig) -> dict[str, Any]:
    """Where a fine-tuning run started: the model file and the steps and images behind it."""
    if not config.init_from:
        return {}
    return {"init_from": Path(config.init_from).name, "init_steps": config.init_steps,
            "init_images_seen": config.init_images_seen}
