"""Model files: round trip, and refusal of anything that is not ours or does not match."""

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from engine import ModelCard, ModelFileError, build_model, load_model_file, preset_config, read_card, save_model_file
from engine.io.modelfile import META_KEY


def _card(**kw):
    return ModelCard(model=preset_config("tiny", **kw), data={"dataset": "test", "value_range": [-1, 1]})


def test_round_trip(tmp_path):
    torch.manual_seed(0)
    net = build_model(preset_config("tiny"))
    path = save_model_file(tmp_path / "m.safetensors", net, _card())
    loaded = load_model_file(path)
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[k], v)
    assert loaded.card.model == preset_config("tiny")
    assert loaded.diffusion.T == 1000 and loaded.sample_shape == (1, 8, 8)
    assert not loaded.net.training
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temp file


def test_refuses_pickle(tmp_path):
    p = tmp_path / "evil.safetensors"
    p.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ModelFileError, match="pickle"):
        load_model_file(p)
    torch.save({"w": torch.zeros(1)}, tmp_path / "ckpt.pt")
    with pytest.raises(ModelFileError, match="pickle"):
        load_model_file(tmp_path / "ckpt.pt")


def test_header_length_starting_with_pickle_byte_is_still_safetensors(tmp_path):
    # A 6528-byte header is b"\x80\x19..." on disk, the same first byte as a pickle.
    net = build_model(preset_config("tiny"))
    for pad in range(0, 512):
        card = ModelCard(model=preset_config("tiny"), data={"dataset": "t" * (pad + 1), "value_range": [-1, 1]})
        p = save_model_file(tmp_path / "m.safetensors", net, card)
        if p.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no padding produced a header length whose low byte is 0x80")
    loaded = load_model_file(p)
    assert torch.equal(loaded.net.state_dict()["conv_in.weight"], net.state_dict()["conv_in.weight"])


def test_refuses_truncated_file(tmp_path):
    path = save_model_file(tmp_path / "m.safetensors", build_model(preset_config("tiny")), _card())
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match=r"cut\.safetensors"):
        load_model_file(tmp_path / "cut.safetensors")


def test_refuses_missing_or_wrong_metadata(tmp_path):
    w = {k: v.contiguous() for k, v in build_model(preset_config("tiny")).state_dict().items()}
    save_file(w, tmp_path / "bare.safetensors")
    with pytest.raises(ModelFileError, match=r"no .ddpm\.config."):
        read_card(tmp_path / "bare.safetensors")
    save_file(w, tmp_path / "json.safetensors", metadata={META_KEY: "{not json"})
    with pytest.raises(ModelFileError, match="not valid JSON"):
        read_card(tmp_path / "json.safetensors")
    save_file(w, tmp_path / "fmt.safetensors", metadata={META_KEY: json.dumps({"format": "other"})})
    with pytest.raises(ModelFileError, match="format"):
        read_card(tmp_path / "fmt.safetensors")
    bad = json.loads(_card().to_json())
    bad["diffusion"]["prediction"] = "score"
    save_file(w, tmp_path / "pred.safetensors", metadata={META_KEY: json.dumps(bad)})
    with pytest.raises(ModelFileError, match="prediction"):
        read_card(tmp_path / "pred.safetensors")


def test_refuses_shapes_that_do_not_match(tmp_path):
    net = build_model(preset_config("tiny", ch=16))
    path = save_model_file(tmp_path / "m.safetensors", net, _card())  # card says ch=8
    with pytest.raises(ModelFileError, match="shape"):
        load_model_file(path)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model_file(tmp_path / "nope.safetensors")


class _Payload:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_never_executes(tmp_path):
    marker = tmp_path / "pwned"
    for name, blob in (("a.safetensors", pickle.dumps(_Payload(str(marker)))),):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ModelFileError):
            load_model_file(tmp_path / name)
    torch.save({"x": _Payload(str(marker))}, tmp_path / "b.safetensors")
    with pytest.raises(ModelFileError):
        load_model_file(tmp_path / "b.safetensors")
    # a safetensors header that claims to be something else entirely
    (tmp_path / "c.safetensors").write_bytes((2**40).to_bytes(8, "little") + b"{}")
    with pytest.raises(ModelFileError):
        load_model_file(tmp_path / "c.safetensors")
    assert not marker.exists()
