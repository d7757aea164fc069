"""The engine's small shared helpers: devices, atomic writes, uint8 conversion and centre crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine import resolve_device
from engine.evaluation.classifier import DigitClassifier, load_classifier, save_classifier
from engine.io.atomic import atomic_write, atomic_write_text
from engine.io.images import center_crop_resize, from_uint8, to_uint8


def test_resolve_device_names_and_refusals():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu7'"):
        resolve_device("tpu7")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    atomic_write_text(path, "one\n")
    assert path.read_text() == "one\n"

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "one\n"  # the old file, whole
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]  # and no temp file left


def test_atomic_writes_get_the_mode_a_plain_open_would(tmp_path):
    """Not mkstemp's private 0600: an exported model must stay readable by a server's (or image's) user."""
    import os

    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "m.txt", "x")
    finally:
        os.umask(umask)
    assert (tmp_path / "m.txt").stat().st_mode & 0o777 == 0o644


def test_classifier_weights_are_saved_atomically_and_load_back(tmp_path):
    torch.manual_seed(0)
    model = DigitClassifier()
    path = tmp_path / "clf.safetensors"
    save_classifier(model, path, {"held_out_accuracy": 0.5})
    loaded, facts = load_classifier(path)
    assert facts == {"held_out_accuracy": 0.5} and [p.name for p in tmp_path.iterdir()] == ["clf.safetensors"]
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_from_uint8_inverts_to_uint8_on_the_8_bit_grid():
    u = torch.randint(0, 256, (3, 5, 4, 2), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for vr in ((-1.0, 1.0), (0.0, 1.0)):
        x = from_uint8(u, vr)
        assert x.shape == (3, 2, 5, 4) and x.dtype == torch.float32 and x.is_contiguous()
        assert x.min() >= vr[0] and x.max() <= vr[1]
        assert torch.equal(to_uint8(x, vr), u)  # NCHW float → NHWC uint8 → the same bytes
    grey = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)  # a NumPy batch works too
    assert from_uint8(grey)[0, 0, 0].tolist() == pytest.approx([-1, -1 + 2 / 255, -1 + 4 / 255, -1 + 6 / 255])
    with pytest.raises(ValueError, match=r"uint8 \(N, H, W, C\)"):
        from_uint8(torch.zeros(1, 1, 4, 4))


def test_center_crop_resize_keeps_the_centred_square():
    arr = np.zeros((20, 30), np.uint8)  # 30 wide: the square is columns 5 … 24
    arr[:, 5:25] = 255
    out = center_crop_resize(Image.fromarray(arr), 10)
    assert out.size == (10, 10) and np.asarray(out).min() == 255
    tall = center_crop_resize(Image.fromarray(arr.T.copy()), 20)  # 20 wide, 30 tall: rows 5 … 24
    assert np.array_equal(np.asarray(tall), arr.T[5:25])
