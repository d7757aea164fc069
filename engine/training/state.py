"""Run-directory checkpoints: atomic, resumable, and loadable without executing pickle code.

Layout of ``RUN/checkpoints/step_000123/``: ``model.safetensors``, ``ema.safetensors`` (when the
run keeps an EMA) and ``state.pt`` (optimizer, LR schedule, GradScaler, RNG states and data
position; read back with ``torch.load(weights_only=True)``). A checkpoint is built in a temp
directory, fsynced and renamed into place; ``RUN/checkpoints/latest`` names the newest one and is
itself replaced atomically. A kill at any moment leaves the previous checkpoint intact, and a save
that fails (a full disk, a read-only directory) raises :class:`CheckpointError` naming the cause
and the checkpoint that is still good.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..io.atomic import atomic_write_text, fsync_dir, fsync_file


class CheckpointError(OSError):
    """A checkpoint could not be written; the message names the cause and the last good checkpoint."""


def _tensors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor] | None,
    state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it and prune to ``keep_last``.

    Raises :class:`CheckpointError` when anything cannot be written; the previous checkpoint and
    ``latest`` are then untouched.
    """
    ckpt_root = run_dir / "checkpoints"
    final = ckpt_root / f"step_{step:07d}"
    try:
        _write_checkpoint(ckpt_root, final, model, ema, state)
    except (OSError, RuntimeError, SafetensorError) as e:  # torch.save reports a failed write as RuntimeError
        raise CheckpointError(f"could not save checkpoint {final.name} in {ckpt_root}: {_reason(e)}; "
                              f"{_still_good(run_dir)}") from e
    kept = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in kept[:-keep_last]:
        with contextlib.suppress(OSError):  # pruning is best effort: an old checkpoint left over harms nothing
            _discard(old)
    return final


def _discard(path: Path) -> None:
    """Remove a checkpoint so that a kill midway never leaves a half-deleted ``step_*`` behind."""
    aside = path.with_name(f".{path.name}.old")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(path, aside)
    shutil.rmtree(aside, ignore_errors=True)


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror} (errno {e.errno})"
    return str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__


def _still_good(run_dir: Path) -> str:
    good = latest_checkpoint(run_dir)
    return f"the last good checkpoint, {good.name}, is intact" if good else "no earlier checkpoint exists"


def _remove_stale_temps(ckpt_root: Path) -> None:
    """Drop what a kill mid-save left behind; one process saves per run, so no temp here is live."""
    for p in ckpt_root.glob(".step_*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in ckpt_root.glob(".latest.*"):
        p.unlink(missing_ok=True)


def _write_checkpoint(ckpt_root: Path, final: Path, model: dict[str, torch.Tensor],
                      ema: dict[str, torch.Tensor] | None, state: dict[str, Any]) -> None:
    ckpt_root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(ckpt_root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=ckpt_root))
    try:
        save_file(_tensors(model), tmp / "model.safetensors")
        if ema is not None:
            save_file(_tensors(ema), tmp / "ema.safetensors")
        torch.save(state, tmp / "state.pt")
        for f in tmp.iterdir():
            fsync_file(f)
        fsync_dir(tmp)
        if final.exists():  # a re-save of the same step after a resume: replace it whole
            _discard(final)
        os.replace(tmp, final)
        fsync_dir(ckpt_root)
        atomic_write_text(ckpt_root / "latest", final.name + "\n")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint directory, or None.

    ``latest`` is trusted when it points at a complete checkpoint; otherwise (a kill between the
    rename and the pointer update) the newest complete ``step_*`` directory is used.
    """
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None
    pointer = root / "latest"
    if pointer.exists():
        cand = root / pointer.read_text().strip()
        if _complete(cand):
            newest = _newest_complete(root)
            return newest if newest is not None and newest.name > cand.name else cand
    return _newest_complete(root)


def _complete(path: Path) -> bool:
    return path.is_dir() and (path / "model.safetensors").exists() and (path / "state.pt").exists()


def _newest_complete(root: Path) -> Path | None:
    done = sorted(p for p in root.glob("step_*") if _complete(p))
    return done[-1] if done else None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict[str, Any]]:
    """``(model, ema or None, state)`` from a checkpoint directory, with no pickle code run."""
    model = load_file(path / "model.safetensors")
    ema = load_file(path / "ema.safetensors") if (path / "ema.safetensors").exists() else None
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    return model, ema, state
