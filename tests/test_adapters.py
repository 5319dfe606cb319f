"""Adapter files: exact round trips and errors that name the file and the key (the PEFT export is
tinyrm/export.py's, tested in test_export.py)."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tinyrm.adapters import checkpoint_hash, load_adapter, save_adapter
from tinyrm.config import CheckpointError
from tinyrm.dora import adapted_modules, add_dora, freeze_layers

from test_dora import StandIn, randomize_adapters
from tolerance import f32_tol  # float32 bounds from the computation (tests/tolerance.py)


def _adapted_standin(seed=0, train_base=None, k=1):
    torch.manual_seed(seed)
    m = StandIn()
    add_dora(m, 2, 4)
    freeze_layers(m, k, train_base=train_base)
    randomize_adapters(m, seed)
    with torch.no_grad():  # stand-in for training: trainable base weights move too
        for n, p in m.named_parameters():
            if p.requires_grad and not any(t in n for t in ("lora_", "magnitude")):
                p.add_(0.1 * torch.randn_like(p))
    return m


def _fresh_base(seed=0):
    torch.manual_seed(seed)
    return StandIn()  # same seed -> same base weights as _adapted_standin's


IDS = torch.randint(0, 50, (3, 6), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("train_base", [False, True])
def test_round_trip_is_exact(tmp_path, train_base):
    m = _adapted_standin(train_base=train_base)
    path = save_adapter(m, tmp_path / "a.safetensors", {"base_hash": "sha256:abc", "note": "x"})
    info = json.loads((tmp_path / "a.json").read_text())
    assert info["rank"] == 2 and info["alpha"] == 4 and info["use_dora"] and info["frozen_layers"] == 1
    assert info["base_hash"] == "sha256:abc" and info["note"] == "x"
    assert info["targets"] == ["Wi", "Wo", "Wqkv", "decoder", "dense"]
    saved = load_file(path)
    assert "model.layers.0.attn.Wqkv.lora_A" in saved            # frozen layers' adapters too
    assert not any(k.endswith("Wqkv.weight") for k in saved)       # never the frozen base
    assert any("norm" in k for k in saved) == train_base
    assert not list(tmp_path.glob("*.tmp"))
    m2 = _fresh_base()
    got = load_adapter(m2, path, base_hash="sha256:abc")
    assert got["frozen_layers"] == 1
    m.eval(), m2.eval()
    with torch.no_grad():
        assert torch.equal(m2(IDS), m(IDS))
    # onto a model that already has the adapters: values replaced, merged weights refreshed
    m3 = _fresh_base()
    add_dora(m3, 2, 4)
    m3.eval()
    for mod in adapted_modules(m3).values():
        mod.merge()
    load_adapter(m3, path)
    with torch.no_grad():               # merged vs unmerged, both float32: 4 layers + head, sums of <= 2h
        torch.testing.assert_close(m3(IDS), m(IDS), **f32_tol(m(IDS), n_terms=32, steps=5, sides=2))


def test_round_trip_full_finetune_without_adapters(tmp_path):
    torch.manual_seed(0)
    m = StandIn()
    freeze_layers(m, 2)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    save_adapter(m, tmp_path / "ft.safetensors")
    assert "rank" not in json.loads((tmp_path / "ft.json").read_text())
    m2 = _fresh_base()
    load_adapter(m2, tmp_path / "ft.safetensors")
    with torch.no_grad():
        assert torch.equal(m2(IDS), m(IDS))


def _fix_sha(path):
    """Make the sidecar's sha256 agree with the file, so only the later checks can object."""
    side = path.with_suffix(".json")
    info = json.loads(side.read_text())
    info["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    side.write_text(json.dumps(info))


def _rewrite(path, tensors):
    save_file(tensors, str(path))
    _fix_sha(path)


def test_errors_name_file_and_key(tmp_path):
    path = save_adapter(_adapted_standin(), tmp_path / "a.safetensors", {"base_hash": "sha256:abc"})
    good = load_file(path)
    key = "model.layers.2.mlp.Wi.lora_B"

    with pytest.raises(CheckpointError, match=r"a\.json.*base_hash"):
        load_adapter(_fresh_base(), path, base_hash="sha256:other")

    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF                                     # one flipped bit in a value
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"a\.safetensors.*sha256"):
        load_adapter(_fresh_base(), path)

    _rewrite(path, {k: v for k, v in good.items() if k != key})
    with pytest.raises(CheckpointError, match=rf"a\.safetensors: missing key '{key}'"):
        load_adapter(_fresh_base(), path)

    _rewrite(path, {**good, "model.layers.9.attn.Wqkv.lora_A": torch.zeros(2, 16)})
    with pytest.raises(CheckpointError, match=r"a\.safetensors: unexpected key 'model\.layers\.9"):
        load_adapter(_fresh_base(), path)

    _rewrite(path, {**good, key: torch.zeros(3, 2)})
    with pytest.raises(CheckpointError, match=rf"a\.safetensors: key '{key}' has shape \(3, 2\)"):
        load_adapter(_fresh_base(), path)

    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    _fix_sha(path)                                      # so the safetensors reader itself must object
    with pytest.raises(CheckpointError, match=r"a\.safetensors: not a readable safetensors"):
        load_adapter(_fresh_base(), path)

    other = _fresh_base()
    add_dora(other, 2, 8)                               # same shapes, different alpha: silent otherwise
    _rewrite(path, good)
    with pytest.raises(CheckpointError, match=r"a\.json: key 'alpha'"):
        load_adapter(other, path)

    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match=r"a\.json: adapter sidecar not found"):
        load_adapter(_fresh_base(), path)
    with pytest.raises(ValueError, match="must end in .safetensors"):
        save_adapter(_adapted_standin(), tmp_path / "a.bin")


def test_checkpoint_hash(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"abc")
    h = checkpoint_hash(tmp_path)
    assert h == checkpoint_hash(tmp_path) and h.startswith("sha256:")
    (tmp_path / "model.safetensors").write_bytes(b"abd")
    assert checkpoint_hash(tmp_path) != h
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        checkpoint_hash(tmp_path / "nothing")


def test_real_round_trip(tmp_path, tiny_modernbert):
    import tinyrm
    from conftest import padded_batch
    folder, _ = tiny_modernbert
    enc = tinyrm.load_encoder(folder)
    add_dora(enc, 4, 8)
    freeze_layers(enc, 1)
    randomize_adapters(enc)
    h = checkpoint_hash(folder)
    path = save_adapter(enc, tmp_path / "adapter.safetensors", {"base_hash": h})
    assert path.stat().st_size < sum(p.numel() for p in enc.parameters()) * 4 / 5
    enc2 = tinyrm.load_encoder(folder)
    load_adapter(enc2, path, base_hash=checkpoint_hash(folder))
    ids, mask = padded_batch([5, 8])
    with torch.no_grad():
        assert torch.equal(enc2(ids, mask), enc(ids, mask))
