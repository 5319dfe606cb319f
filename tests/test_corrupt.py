"""Corrupt and hostile files: every reader fails with an error naming the file (and line or key), never a
traceback and never a silent skip; through the library as a TinyrmError subclass, through the CLI as one
line `error: ...` with exit 2. Nothing is ever unpickled outside weights_only=True."""
from __future__ import annotations

import gzip
import json
import re
import shutil
from dataclasses import fields
from pathlib import Path

import pytest
import torch

import tinyrm.data
import tinyrm.train as tr
from tinyrm.adapters import load_adapter
from tinyrm.cli import main
from tinyrm.data import read_pairs
from tinyrm.errors import CheckpointError, DataError, RecipeError, TinyrmError
from tinyrm.recipe import TrainConfig, load_recipe, load_run_config
from tinyrm.weights import load_encoder
from test_faults import SMALL, cfg_for, data, one_error_line, tiny_bert, write_recipe  # noqa: F401 (fixtures)
from test_train import repeat_task

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tiny_bert, data, tmp_path_factory):   # noqa: F811
    """A run stopped at step 3: last/ (with trainer.pt) and best/."""
    base = tmp_path_factory.mktemp("trained")
    tr.train(cfg_for(base, tiny_bert, data, max_steps=6), run_dir=base / "run", stop_after=3)
    return base / "run"


def _garble_header(b: bytes) -> bytes:
    return b[:8] + b"\xff" * 32 + b[40:]


CORRUPT = {                     # name -> bytes of the file -> corrupted bytes
    "truncated": lambda b: b[: len(b) // 2],
    "empty": lambda b: b"",
    "garbled": _garble_header,
    "nul": lambda b: b"\x00" * 256,
    "not-utf8": lambda b: b"\xff\xfe" + b[2:],
}
JSON_ONLY = {
    "nested": lambda b: b"[" * 100_000 + b"]" * 100_000,
    "a-list": lambda b: b"[1, 2, 3]",
}


def _corrupt(path: Path, how: str) -> None:
    path.write_bytes({**CORRUPT, **JSON_ONLY}[how](path.read_bytes()))


def _expect_cli_error(capsys, argv, *names) -> str:
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert any(n in line for n in names), (line, names)
    return line


def damage(names: list[str]) -> list[tuple[str, str]]:
    """(file, kind of damage) for every file, JSON-only damage for the JSON files alone."""
    return [(n, h) for n in names for h in [*CORRUPT, *(JSON_ONLY if n.endswith(".json") else [])]]


@pytest.mark.parametrize("name, how", damage(["last/adapter.safetensors", "last/adapter.json", "last/trainer.pt",
                                              "config.json"]))
def test_corrupt_run_files_on_resume(trained, tmp_path, capsys, name, how):
    """A run folder whose checkpoint or config is damaged: resuming it names the damaged file."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    _corrupt(run / name, how)
    with pytest.raises(TinyrmError, match=re.escape(str(run / name))):
        tr.train(load_run_config(run), run_dir=run)
    _expect_cli_error(capsys, ["train", "--resume", str(run)], str(run / name))


def test_a_consistent_but_unreadable_adapter_is_named(trained, tmp_path):
    """Garbled safetensors header with the sidecar's sha256 updated to match: the parse error names the file."""
    import hashlib
    ckpt = tmp_path / "last"
    shutil.copytree(trained / "last", ckpt)
    _corrupt(ckpt / "adapter.safetensors", "garbled")
    side = json.loads((ckpt / "adapter.json").read_text())
    side["sha256"] = hashlib.sha256((ckpt / "adapter.safetensors").read_bytes()).hexdigest()
    (ckpt / "adapter.json").write_text(json.dumps(side))
    enc = tr.prepare_model(load_run_config(trained), torch.device("cpu"))
    with pytest.raises(CheckpointError, match=re.escape(f"{ckpt / 'adapter.safetensors'}: not a readable safetensors")):
        load_adapter(enc, ckpt / "adapter.safetensors")


@pytest.mark.parametrize("key,value", [("rank", "4"), ("rank", 0), ("alpha", [8]), ("use_dora", "yes"),
                                       ("targets", "query"), ("modules", [1]), ("sha256", 5), ("dropout", 2.0)])
def test_wrong_types_in_the_adapter_sidecar(trained, tmp_path, key, value):
    ckpt = tmp_path / "last"
    shutil.copytree(trained / "last", ckpt)
    side = json.loads((ckpt / "adapter.json").read_text())
    side[key] = value
    (ckpt / "adapter.json").write_text(json.dumps(side))
    enc = tr.prepare_model(load_run_config(trained), torch.device("cpu"))
    with pytest.raises(CheckpointError, match=re.escape(f"{ckpt / 'adapter.json'}: key {key!r}")):
        load_adapter(enc, ckpt / "adapter.safetensors")


@pytest.mark.parametrize("state", [{"step": "3"}, [1, 2], {"step": 3, "optimizer": {}, "scheduler": {}, "rng": {},
                                                           "best": {}}])
def test_a_trainer_state_of_the_wrong_shape(trained, tmp_path, capsys, state):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    torch.save(state, run / "last" / "trainer.pt")
    _expect_cli_error(capsys, ["train", "--resume", str(run)], f"{run / 'last' / 'trainer.pt'}: ")


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path(_Evil.marker),))


def test_a_pickle_with_code_is_never_run(trained, tmp_path, capsys):
    """trainer.pt holding a pickled call (Path.touch of a marker file): refused by weights_only=True; the
    marker is never created."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    _Evil.marker = str(tmp_path / "pwned")
    torch.save({"step": 3, "x": _Evil()}, run / "last" / "trainer.pt")
    _expect_cli_error(capsys, ["train", "--resume", str(run)], f"{run / 'last' / 'trainer.pt'}: not a readable")
    assert not (tmp_path / "pwned").exists()


def test_no_unpickling_outside_weights_only():
    """The package never imports pickle and every torch.load passes weights_only=True."""
    for f in [*(ROOT / "tinyrm").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")]:
        src = f.read_text()
        assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib)\b", src, re.M), f
        for call in re.findall(r"torch\.load\([^)]*\)", src):
            assert "weights_only=True" in call, (f, call)
        assert "pickle.load" not in src and "numpy.load" not in src and "allow_pickle=True" not in src, f


@pytest.mark.parametrize("name, how", damage(["config.json", "tokenizer.json", "model.safetensors"]))
def test_corrupt_model_folder(tiny_bert, data, tmp_path, capsys, name, how):  # noqa: F811
    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    _corrupt(model / name, how)
    with pytest.raises(CheckpointError, match=re.escape(str(model / name))):
        load_encoder(model)
    recipe = write_recipe(tmp_path / "r.toml", model, data, runs_dir=str(tmp_path / "runs"))
    _expect_cli_error(capsys, ["train", "--recipe", str(recipe)], str(model / name))


@pytest.mark.parametrize("key,value", [("vocab_size", "30522"), ("hidden_size", 0), ("num_hidden_layers", None),
                                       ("num_attention_heads", 3), ("layer_norm_eps", "small"),
                                       ("max_position_embeddings", [128]), ("pad_token_id", 0.5)])
def test_wrong_types_in_the_model_config(tiny_bert, tmp_path, key, value):
    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg[key] = value
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=re.escape(f"{model / 'config.json'}: ") + f".*key.*'{key}'"):
        load_encoder(model)


# ---------------------------------------------------------------- data files

def _rows_file(tmp_path, rows: list[bytes], name="d.jsonl") -> Path:
    p = tmp_path / name
    good = [json.dumps(r).encode() for r in repeat_task(10, 3)]
    p.write_bytes(b"\n".join(good[:5] + rows + good[5:]) + b"\n")
    return p


BAD_LINES = {
    "not-utf8": (b'{"prompt": "\xff", "chosen": "a", "rejected": "b"}', "not UTF-8"),
    "nul": (b'{"prompt": "a\x00", "chosen": "a", "rejected": "b"}', "bad JSON"),
    "nested": (b"[" * 100_000 + b"]" * 100_000, "bad JSON"),
    "garbled": (b'{"prompt": "a", "chosen": ', "bad JSON"),
    "a-list": (b"[1, 2]", "wrong type"),
}


@pytest.mark.parametrize("how", BAD_LINES)
def test_bad_lines_name_file_and_line(tiny_bert, tmp_path, capsys, how):  # noqa: F811
    line, reason = BAD_LINES[how]
    p = _rows_file(tmp_path, [line])
    with pytest.raises(DataError, match=re.escape(f"{p}:6: {reason}")):
        read_pairs(p)
    pairs, rep = read_pairs(p, skip_bad=True)            # skip_bad counts it by reason, never silently
    assert len(pairs) == 10 and rep.total == 11 and rep.reasons == {reason: 1}
    recipe = write_recipe(tmp_path / "r.toml", tiny_bert, p, runs_dir=str(tmp_path / "runs"))
    assert main(["train", "--recipe", str(recipe)]) == 2
    assert one_error_line(capsys).startswith(f"error: {p}:6: {reason}")


def test_a_line_longer_than_the_cap(tmp_path, monkeypatch):
    """A line over MAX_LINE (here lowered to 1 KiB; test_faults_heavy reads a real 100 MB line) is a
    DataError at its own line number, and the lines after it keep their numbers."""
    monkeypatch.setattr(tinyrm.data, "MAX_LINE", 1024)
    p = _rows_file(tmp_path, [json.dumps({"prompt": "x" * 5000, "chosen": "a", "rejected": "b"}).encode()])
    with pytest.raises(DataError, match=re.escape(f"{p}:6: line too long")):
        read_pairs(p)
    pairs, rep = read_pairs(p, skip_bad=True)
    assert len(pairs) == 10 and rep.reasons == {"line too long": 1}


def test_a_gzip_cut_in_half(tmp_path, capsys):
    p = tmp_path / "d.jsonl.gz"
    p.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in repeat_task(2000, 4)).encode()))
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(DataError, match=re.escape(f"{p}:") + r"\d+: truncated or corrupt gzip stream"):
        read_pairs(p)
    with pytest.raises(DataError, match="truncated or corrupt gzip"):
        read_pairs(p, skip_bad=True)                      # a cut stream is never skipped quietly


FIELDS = ("prompt", "chosen", "rejected", "domain", "source")


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value", [1, 1.5, True, [], {}, None])
def test_wrong_type_in_every_row_field(tmp_path, field, value):
    row = {"prompt": "p", "chosen": "a", "rejected": "b", "domain": "chat", "source": "s", field: value}
    p = _rows_file(tmp_path, [json.dumps(row).encode()])
    if value is None and field in ("domain", "source"):
        assert len(read_pairs(p)[0]) == 11                 # optional fields may be null
        return
    with pytest.raises(DataError, match=re.escape(f"{p}:6: ")):
        read_pairs(p)
    pairs, rep = read_pairs(p, skip_bad=True)
    assert len(pairs) == 10 and rep.skipped == 1


# ---------------------------------------------------------------- recipes

def _wrong(typ):
    """TOML values of the wrong type for a field whose default has type `typ`."""
    return {str: ["1", "[1]"], int: ['"x"', "1.5", "true", "[1]"], float: ['"x"', "true", "[1.0]", "nan", "inf"],
            bool: ["1", '"maybe"', "[true]"], list: ["1", "[1]", '"a,"'], tuple: ['"x"', "[1]", '["a", "b"]', "1"]}[typ]


CASES = [(f.name, v) for f in fields(TrainConfig) if f.name not in ("data", "val")
         for v in _wrong(type(getattr(TrainConfig(), f.name)))]


@pytest.mark.parametrize("key,value", CASES)
def test_wrong_types_in_every_recipe_field(tmp_path, capsys, key, value):
    p = tmp_path / "r.toml"
    p.write_text(f"{key} = {value}\n[[data]]\npath = \"x.jsonl\"\n")
    if key == "targets" and value == '"a,"':
        return                                             # a string splits like the command line: ["a"]
    with pytest.raises(RecipeError, match=re.escape(f"{p}: {key}")):
        load_recipe(str(p))
    _expect_cli_error(capsys, ["train", "--recipe", str(p)], f"{p}: {key}")


@pytest.mark.parametrize("text", ['lr = 0', 'lr = -1e-3', 'eval_every = 0', 'save_every = 0', 'batch_pairs = 0',
                                  'val_frac = 1.0', 'betas = [0.9, 1.5]', 'betas = [0.9]', 'mode = "both"',
                                  'max_bad_steps = 0', 'targets = []', 'epochs = -1.0', 'truncate = "start"',
                                  'label_smoothing = 0.5', 'label_smoothing = -0.1', 'hidden_dropout = 1.0',
                                  '[[data]]\npath = "x"\nweight = "2"', '[[data]]\npath = "x"\nweight = -1',
                                  '[[data]]\npath = "x"\nmax_rows = 1.5', '[[data]]\npath = 5',
                                  '[[data]]\npath = "x"\ndomain = 3'])
def test_values_the_trainer_cannot_use(tmp_path, capsys, text):
    p = tmp_path / "r.toml"
    p.write_text(text + "\n")
    with pytest.raises(RecipeError, match=re.escape(f"{p}: ")):
        load_recipe(str(p))
    _expect_cli_error(capsys, ["train", "--recipe", str(p)], f"{p}: ")


@pytest.mark.parametrize("raw", [b"\xff\xfelr = 1", b"lr = 1\x00", b"[[data]\n", b"a = [" * 5000])
def test_garbage_recipe_files(tmp_path, raw):
    p = tmp_path / "r.toml"
    p.write_bytes(raw)
    with pytest.raises(RecipeError, match=re.escape(f"{p}: ")):
        load_recipe(str(p))


@pytest.mark.parametrize("override", [["--lr", "nan"], ["--lr", "-1"], ["--betas", "0.9"], ["--betas", "a,b"],
                                      ["--eval-every", "0"], ["--mode", "x"], ["--max-bad-steps", "many"],
                                      ["--truncate", "head"], ["--label-smoothing", "0.7"],
                                      ["--hidden-dropout", "-0.1"]])
def test_bad_overrides(override):
    with pytest.raises(RecipeError, match=f"override {override[0]}"):
        load_recipe("default", override)


@pytest.mark.parametrize("key,value", [("lr", "fast"), ("lr", float("nan")), ("max_steps", -1), ("targets", [1]),
                                       ("betas", [0.9]), ("mode", 3)])
def test_wrong_values_in_a_runs_config(trained, tmp_path, capsys, key, value):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg[key] = value
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RecipeError, match=re.escape(f"{run / 'config.json'}: key {key!r}")):
        load_run_config(run)
    _expect_cli_error(capsys, ["train", "--resume", str(run)], str(run / "config.json"))
