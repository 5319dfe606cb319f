"""Faults: a training run killed with SIGKILL and resumed, non-finite losses, a full disk, corrupt and
hostile files. Each fault ends in the same weights as an undisturbed run, or in one clear error line
(`error: FILE[:LINE]: reason`, exit 2) with the last good checkpoint intact. The 20-kill version of the
kill test is in test_faults_heavy.py."""
from __future__ import annotations

import copy
import errno
import gzip
import json
import random
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tinyrm.atomic
import tinyrm.data
import tinyrm.objective as objective
import tinyrm.train as tr
from tinyrm.checkpoint import find_resumable, load_trainer_state, trim_metrics
from tinyrm.cli import main
from tinyrm.data import read_pairs
from tinyrm.errors import CheckpointError, DataError, RecipeError, TinyrmError, TrainingDiverged
from tinyrm.mix import MixEntry
from tinyrm.recipe import TrainConfig, load_recipe, load_run_config
from conftest import write_tiny_bert
from faultkit import attempt, check_checkpoints, metric_rows, same_result
from test_train import _write, repeat_task

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, minilm_path):
    return write_tiny_bert(tmp_path_factory.mktemp("bert-tiny"), minilm_path, seed=0, layers=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("data") / "d.jsonl", repeat_task(80, 1))


SMALL = dict(max_len=48, rank=4, alpha=8.0, targets=["query", "value", "dense"], freeze_layers=1, batch_pairs=4,
             micro_tokens=200, lr=3e-3, max_steps=12, eval_every=4, save_every=3, val_frac=0.15,
             val_max_pairs=12, threads=1, device="cpu", drop_rewardbench_overlap=False)


def write_recipe(path: Path, model, data, **kw) -> Path:
    """A TOML recipe for the tiny model (absolute paths, so runs in different folders have equal configs)."""
    vals = {"model": str(model), **SMALL, **kw}
    lines = [f"{k} = {json.dumps(v)}" for k, v in vals.items()]      # JSON scalars and lists are TOML too
    path.write_text("\n".join(lines) + f'\n\n[[data]]\npath = "{data}"\n')
    return path


def cfg_for(tmp_path, model, data, **kw) -> TrainConfig:
    return TrainConfig(model=str(model), data=[MixEntry(path=data)], runs_dir=str(tmp_path / "runs"), **{**SMALL, **kw})


def one_error_line(capsys) -> str:
    """The one `error:` line on stderr, its last line (progress bars may come before it), no traceback."""
    err = capsys.readouterr().err
    lines = [x for x in err.strip().splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err[-3000:]
    return errors[0]


# ---------------------------------------------------------------- SIGKILL and resume

def test_sigkill_mid_checkpoint_and_at_random_then_resume_is_exact(tiny_bert, data, tmp_path):
    """Three SIGKILLs: inside the very first checkpoint write (best/ at step 0, adapter in best.tmp/, before
    any last/), between the two renames that swap in last/ (last.old/ is all that is left), and at a random
    moment after a random step; each attempt resumes with `tinyrm train --resume RUN`. The finished run's
    last/ and best/ are byte-identical to the same run left alone, and no checkpoint was ever half-written."""
    recipe = write_recipe(tmp_path / "r.toml", tiny_bert, data)
    (tmp_path / "ref").mkdir()
    ref = attempt(["train", "--recipe", str(recipe)], cwd=tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    ref_run = next((tmp_path / "ref" / "runs").glob("*/summary.json")).parent
    assert json.loads((ref_run / "summary.json").read_text())["best_step"] > 0     # best/ moved during training

    rng = random.Random(7)
    work = tmp_path / "faulted"
    work.mkdir()
    faults = ["tmp:best:1", "old:last:1", f"step:{rng.randrange(5, 9)}:{rng.randrange(0, 120)}"]
    run = None
    for i, fault in enumerate(faults):
        args = ["train", "--resume", str(run)] if run else ["train", "--recipe", str(recipe)]
        p = attempt(args, cwd=work, fault=fault)
        assert p.returncode == -9, (fault, p.returncode, p.stderr[-2000:])
        run = run or next((work / "runs").glob("*/config.json")).parent
        seen = check_checkpoints(run)
        if i == 0:      # killed while writing the first checkpoint of all: nothing to resume, debris only
            assert find_resumable(run) is None and "best" not in seen and seen["tmp"] == ["best.tmp"]
        if i == 1:      # killed mid-swap: last/ is gone, last.old/ (step 3) is what resume takes
            assert "last" not in seen and seen["last.old"] == 3 and find_resumable(run).name == "last.old"
    p = attempt(["train", "--resume", str(run)], cwd=work)
    assert p.returncode == 0, p.stderr
    same_result(run, ref_run)


def _loss_rows(run):
    return [r for r in metric_rows(run) if "loss" in r]


def test_trim_metrics_drops_a_dead_attempts_rows(tmp_path):
    """Rows after the resumed checkpoint's step go, as does a line torn by the kill; from step 0 every row
    goes (the step-0 validation is written again)."""
    rows = [{"step": 0, "val_score": 0.5}] + [{"step": s, "loss": 0.1 * s} for s in range(1, 7)]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 7, "lo'
    (tmp_path / "metrics.jsonl").write_text(text)
    assert trim_metrics(tmp_path, 3) == 4
    assert [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == rows[:4]
    assert trim_metrics(tmp_path, 0) == 4 and (tmp_path / "metrics.jsonl").read_text() == ""


def test_resume_leaves_no_dead_attempt_rows_in_metrics(tiny_bert, data, tmp_path):
    ref = tr.train(cfg_for(tmp_path, tiny_bert, data, max_steps=6), run_dir=tmp_path / "ref")
    run = tmp_path / "run"
    tr.train(cfg_for(tmp_path, tiny_bert, data, max_steps=6), run_dir=run, stop_after=3)
    with open(run / "metrics.jsonl", "a") as f:        # what an attempt killed after step 4 leaves behind
        f.write(json.dumps({"step": 4, "loss": 9.0}) + "\n")
    tr.train(cfg_for(tmp_path, tiny_bert, data, max_steps=6), run_dir=run)
    assert _loss_rows(run) == _loss_rows(Path(ref["run_dir"]))


# ---------------------------------------------------------------- non-finite loss and gradients

def _poison(monkeypatch, how: str):
    """From now on every step's loss (how='nan_loss') or one gradient entry ('inf_grad', 'nan_grad') is
    non-finite; returns a function that removes the poison."""
    if how == "nan_loss":
        real = objective.bradley_terry_loss
        monkeypatch.setattr(objective, "bradley_terry_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    else:
        real = tr.step_loss

        def step_loss(enc, *a, **k):
            out = real(enc, *a, **k)
            g = next(p.grad for p in enc.parameters() if p.grad is not None)
            g.view(-1)[0] = float("inf") if how == "inf_grad" else float("nan")
            return out
        monkeypatch.setattr(tr, "step_loss", step_loss)
    return monkeypatch.undo


@pytest.mark.parametrize("how", ["nan_loss", "inf_grad", "nan_grad"])
def test_nonfinite_step_leaves_weights_and_optimizer_untouched(tiny_bert, data, tmp_path, monkeypatch, how):
    """A step whose gradient norm is not finite changes no weight and no optimiser state (bitwise); the
    learning-rate schedule still advances (it follows the step plan); the row says so; the next clean
    step trains as usual."""
    run = tr.setup(cfg_for(tmp_path, tiny_bert, data), tmp_path / "run")
    run.enc.train()
    for s in range(2):
        assert tr.train_step(run, s)["skipped"] is False
    params = {n: p.detach().clone() for n, p in run.enc.named_parameters() if p.requires_grad}
    opt_state = copy.deepcopy(run.opt.state_dict())
    clean = _poison(monkeypatch, how)
    row = tr.train_step(run, 2)
    clean()
    assert row["skipped"] is True and row["skipped_steps"] == 1 and row["step"] == 3
    for n, p in run.enc.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, params[n]), n
            assert p.grad is None, n                               # no poisoned gradient carries over
    after = run.opt.state_dict()["state"]
    for k, st in opt_state["state"].items():
        assert all(torch.equal(st[x], after[k][x]) for x in st), k
    assert run.sched.last_epoch == 3
    row = tr.train_step(run, 3)
    assert row["skipped"] is False and row["skipped_steps"] == 1 and run.bad_in_row == 0
    moved = [n for n, p in run.enc.named_parameters() if p.requires_grad and not torch.equal(p, params[n])]
    assert moved and all(torch.isfinite(p).all() for p in run.enc.parameters())


def test_bad_steps_in_a_row_stop_the_run_and_it_resumes_from_the_last_good_checkpoint(
        tiny_bert, data, tmp_path, monkeypatch, capsys):
    """Steps 5, 6 and 7 give NaN gradients: the run stops at step 7 with TrainingDiverged (one error line
    through the CLI, exit 2); last/ (saved at step 6, inside the bad streak) holds exactly the weights of
    step 4; resumed without the fault, the run finishes with finite weights. Isolated bad steps never stop it."""
    cfg = cfg_for(tmp_path, tiny_bert, data, save_every=2, max_steps=10)
    ref = tmp_path / "ref"
    tr.train(cfg, run_dir=ref, stop_after=4)
    run = tmp_path / "run"
    real = tr.step_loss
    state = {"bad": {4, 5, 6}}

    def step_loss(enc, cfg_, examples, pair_ids, *a, **k):
        out = real(enc, cfg_, examples, pair_ids, *a, **k)
        if current[0] in state["bad"]:
            next(p.grad for p in enc.parameters() if p.grad is not None).view(-1)[0] = float("nan")
        return out
    current = [0]
    real_step = tr.train_step

    def train_step(run_, step):
        current[0] = step
        return real_step(run_, step)
    monkeypatch.setattr(tr, "step_loss", step_loss)
    monkeypatch.setattr(tr, "train_step", train_step)
    with pytest.raises(TrainingDiverged, match=r"^step 7: .* 3 steps in a row \(max_bad_steps = 3\)"):
        tr.train(cfg, run_dir=run)
    assert json.loads((run / "last" / "adapter.json").read_text())["step"] == 6
    assert (run / "last" / "adapter.safetensors").read_bytes() == (ref / "last" / "adapter.safetensors").read_bytes()
    rows = {r["step"]: r for r in _loss_rows(run)}
    assert [rows[s]["skipped"] for s in (4, 5, 6)] == [False, True, True] and rows[6]["skipped_steps"] == 2

    state["bad"] = {6, 7, 8}
    assert main(["train", "--resume", str(run)]) == 2             # the same fault through the CLI
    assert re.fullmatch(r"error: step 9: .* in a row .*--resume .*", one_error_line(capsys))

    state["bad"] = {8}                                             # one bad step: skipped, not fatal
    assert main(["train", "--resume", str(run)]) == 0
    rows = {r["step"]: r for r in _loss_rows(run)}
    assert rows[9]["skipped"] and not rows[10]["skipped"]
    w = load_file(run / "last" / "adapter.safetensors")
    assert json.loads((run / "last" / "adapter.json").read_text())["step"] == 10
    assert all(torch.isfinite(t).all() for t in w.values())


# ---------------------------------------------------------------- a full disk

class FullDisk:
    """Replaces `open` inside tinyrm.atomic (every checkpoint and report file is written through it): from
    the `fail_at`-th file written on, the disk is full: half the bytes go out, then ENOSPC."""

    def __init__(self, monkeypatch, fail_at: int = 1, names: tuple[str, ...] = ()):
        self.calls, self.fail_at, self.names, self.failed = 0, fail_at, names, []
        monkeypatch.setattr(tinyrm.atomic, "open", self._open, raising=False)

    def _open(self, path, mode="r", *a, **k):
        f = open(path, mode, *a, **k)
        if "w" not in mode or (self.names and not any(Path(path).name.endswith(n) for n in self.names)):
            return f
        self.calls += 1
        if self.calls < self.fail_at:
            return f
        disk = self

        class Full:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def write(self, data):
                f.write(data[:len(data) // 2])
                disk.failed.append(str(path))
                raise OSError(errno.ENOSPC, "No space left on device")
        return Full()


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tiny_bert, data, tmp_path, monkeypatch, capsys, fail_at):
    """ENOSPC on the checkpoint's 1st (adapter.safetensors), 2nd (adapter.json) or 3rd file (trainer.pt):
    one line `error: PATH: No space left on device` and exit 2; last/ is still the step-3 checkpoint, whole;
    no .tmp file or folder is left; with space again the run resumes and ends byte-identical to one that
    never saw a full disk."""
    recipe = write_recipe(tmp_path / "r.toml", tiny_bert, data, max_steps=7, eval_every=100,
                          runs_dir=str(tmp_path / "runs"))
    ref = tr.train(load_recipe(str(recipe)), run_dir=tmp_path / "ref")
    run = tmp_path / "run"
    tr.train(load_recipe(str(recipe)), run_dir=run, stop_after=3)
    before = {f.name: f.read_bytes() for f in (run / "last").iterdir()}
    disk = FullDisk(monkeypatch, fail_at=fail_at, names=(".adapter.safetensors.tmp", ".adapter.json.tmp", "trainer.pt"))
    assert main(["train", "--resume", str(run)]) == 2
    target = re.sub(r"/\.([^/]+)\.tmp$", r"/\1", disk.failed[0])     # a file's temporary name -> its own
    assert one_error_line(capsys) == f"error: {target}: No space left on device"
    assert target == str(run / "last.tmp" / ("adapter.safetensors", "adapter.json", "trainer.pt")[fail_at - 1])
    assert {f.name: f.read_bytes() for f in (run / "last").iterdir()} == before
    assert check_checkpoints(run)["tmp"] == [] and not list(run.rglob("*.tmp"))
    monkeypatch.undo()
    assert main(["train", "--resume", str(run)]) == 0
    for name in ("last", "best"):
        assert (run / name / "adapter.safetensors").read_bytes() == \
            (Path(ref["run_dir"]) / name / "adapter.safetensors").read_bytes()


@pytest.mark.parametrize("name", ["config.json", "summary.json"])
def test_full_disk_on_report_files(tiny_bert, data, tmp_path, monkeypatch, capsys, name):
    """config.json (written at setup) and summary.json (at the end) failing with ENOSPC: one line naming
    the file, exit 2, and no temporary file left beside it."""
    recipe = write_recipe(tmp_path / "r.toml", tiny_bert, data, max_steps=3, runs_dir=str(tmp_path / "runs"))
    FullDisk(monkeypatch, names=(f".{name}.tmp",))
    assert main(["train", "--recipe", str(recipe)]) == 2
    line = one_error_line(capsys)
    assert re.fullmatch(rf"error: {re.escape(str(tmp_path / 'runs'))}/r-[0-9-]+/{name}: No space left on device", line)
    assert not list((tmp_path / "runs").rglob("*.tmp"))


def test_full_disk_on_metrics_names_the_file(tiny_bert, data, tmp_path, monkeypatch, capsys):
    recipe = write_recipe(tmp_path / "r.toml", tiny_bert, data, max_steps=3, runs_dir=str(tmp_path / "runs"))

    class Full:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(tr, "open", Full, raising=False)
    assert main(["train", "--recipe", str(recipe)]) == 2
    assert re.fullmatch(r"error: .*metrics\.jsonl: No space left on device", one_error_line(capsys))


def test_a_failed_swap_puts_the_previous_folder_back(tmp_path, monkeypatch):
    """The second rename of a folder swap failing (EIO, ENOSPC on a metadata block) restores the old folder."""
    final, tmp = tmp_path / "last", tmp_path / "last.tmp"
    final.mkdir()
    (final / "a").write_text("old")
    tmp.mkdir()
    (tmp / "a").write_text("new")
    real = tinyrm.atomic.os.replace

    def replace(src, dst):
        if Path(src) == tmp:
            raise OSError(errno.EIO, "Input/output error", str(dst))
        return real(src, dst)
    monkeypatch.setattr(tinyrm.atomic.os, "replace", replace)
    with pytest.raises(OSError, match="Input/output error"):
        tinyrm.atomic.replace_dir(tmp, final)
    assert (final / "a").read_text() == "old" and not (tmp_path / "last.old").exists()
