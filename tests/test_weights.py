"""Checkpoint loading: sharded files, clear errors for bad folders, the download path (against a
server on 127.0.0.1, never the internet) and the offline MiniLM copy."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import tinyrm
from tinyrm import CheckpointError
from tinyrm.hub import download, fetch_weights
from conftest import padded_batch
from hub_server import HubServer


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _logits(folder):
    enc = tinyrm.load_encoder(folder)
    ids, mask = padded_batch([12, 5], seed=7)
    with torch.no_grad():
        return enc(ids, mask)


def test_sharded_checkpoint_loads_the_same(tiny_modernbert, tmp_path):
    folder = _copy(tiny_modernbert[0], tmp_path / "sharded")
    sd = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    keys = sorted(sd)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for fname, ks in halves.items():
        save_file({k: sd[k].contiguous() for k in ks}, folder / fname)
        weight_map.update({k: fname for k in ks})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    torch.testing.assert_close(_logits(folder), _logits(tiny_modernbert[0]), atol=0, rtol=0)


def _edit(folder, fn):
    sd = load_file(folder / "model.safetensors")
    fn(sd)
    save_file(sd, folder / "model.safetensors")


def test_missing_key_names_the_key(tiny_modernbert, tmp_path):
    folder = _copy(tiny_modernbert[0], tmp_path / "m")
    _edit(folder, lambda sd: sd.pop("model.layers.2.mlp.Wi.weight"))
    with pytest.raises(CheckpointError, match=r"missing key 'model\.layers\.2\.mlp\.Wi\.weight'"):
        tinyrm.load_encoder(folder)


def test_wrong_shape_names_file_and_key(tiny_modernbert, tmp_path):
    folder = _copy(tiny_modernbert[0], tmp_path / "m")
    _edit(folder, lambda sd: sd.__setitem__("model.layers.1.attn.Wo.weight", torch.zeros(64, 32)))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: key 'model\.layers\.1\.attn\.Wo\.weight' has shape \(64, 32\), expected \(64, 64\)"):
        tinyrm.load_encoder(folder)


def test_unexpected_key(tiny_modernbert, tmp_path):
    folder = _copy(tiny_modernbert[0], tmp_path / "m")
    _edit(folder, lambda sd: sd.__setitem__("model.layers.9.attn.Wo.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"unexpected key 'model\.layers\.9\.attn\.Wo\.weight'"):
        tinyrm.load_encoder(folder)


def test_missing_config_and_unknown_architecture(tiny_modernbert, tmp_path):
    folder = _copy(tiny_modernbert[0], tmp_path / "m")
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json not found"):
        tinyrm.load_encoder(folder)
    folder2 = _copy(tiny_modernbert[0], tmp_path / "m2")
    cfg = json.loads((folder2 / "config.json").read_text())
    cfg["model_type"] = "llama"
    (folder2 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json: unknown architecture model_type='llama'"):
        tinyrm.load_encoder(folder2)
    with pytest.raises(CheckpointError, match="not a folder"):
        tinyrm.load_encoder(tmp_path / "nowhere")


def test_missing_shard_is_named(tiny_modernbert, tmp_path):
    folder = _copy(tiny_modernbert[0], tmp_path / "m")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "shard-1.safetensors"}}))
    with pytest.raises(CheckpointError, match="shard 'shard-1.safetensors' not found"):
        tinyrm.load_encoder(folder)


@pytest.fixture
def hub_server(tmp_path, tiny_modernbert, monkeypatch):
    """A local stand-in for the hub (tests/hub_server.py) serving one model repository on 127.0.0.1."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    server = HubServer()
    for f in sorted(tiny_modernbert[0].iterdir()):
        server.add_hub("answerdotai/ModernBERT-tiny", "main", f.name, f.read_bytes(), repo_type="model")
    yield server
    server.close()


def test_download_from_local_hub(hub_server, tmp_path, tiny_modernbert):
    dest = download("answerdotai/ModernBERT-tiny", tmp_path / "dl", endpoint=hub_server.url, progress=False)
    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == \
        ["config.json", "model.safetensors", "tokenizer.json"]
    torch.testing.assert_close(_logits(dest), _logits(tiny_modernbert[0]), atol=0, rtol=0)
    with pytest.raises(FileNotFoundError, match="HTTP 404"):
        download("answerdotai/nothing-here", tmp_path / "dl2", endpoint=hub_server.url, progress=False)


def test_download_resumes_a_dropped_connection(hub_server, tmp_path, tiny_modernbert, monkeypatch):
    """The server cuts the weights file off halfway once; huggingface_hub asks for the rest with a Range
    (it resumes from the last whole chunk written, 10 MB by default: 64 kB here, for an 8 MB file)."""
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 1 << 16)
    path = "/answerdotai/ModernBERT-tiny/resolve/main/model.safetensors"
    hub_server.drop_once.add(path)
    dest = download("answerdotai/ModernBERT-tiny", tmp_path / "dl", endpoint=hub_server.url, progress=False)
    assert (dest / "model.safetensors").read_bytes() == (tiny_modernbert[0] / "model.safetensors").read_bytes()
    assert any(p == path and r and r.startswith("bytes=") and r != "bytes=0-" for _, p, r in hub_server.log)


def test_fetch_weights_through_env_endpoint(hub_server, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)   # read at call time, not at huggingface_hub's import
    dest = fetch_weights("answerdotai/ModernBERT-tiny", tmp_path / "weights")
    assert dest == tmp_path / "weights" / "ModernBERT-tiny" and (dest / "model.safetensors").is_file()


def test_offline_minilm_copy_turns_padding_off(tmp_path, minilm_path):
    dest = fetch_weights("minilm-l6", tmp_path)
    tok = json.loads((dest / "tokenizer.json").read_text())
    assert tok["padding"] is None and json.loads((minilm_path / "tokenizer.json").read_text())["padding"]
    enc = tinyrm.load_encoder(dest)
    assert len(enc.tokenizer.encode("hello").ids) == 3  # [CLS] hello [SEP], not 128
