"""Data-parallel training and scoring: 2 gloo processes on the CPU against 1 process.

Each test starts its ranks the way torchrun does (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
in the environment of fresh Python processes) and compares what they write with a single process.
"""
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tinyrm.mix import MixEntry
from tinyrm.recipe import TrainConfig
from tinyrm.rewardbench import EXPECTED_COUNTS
from tinyrm.train import train
from conftest import ROOT, write_tiny_bert
from tolerance import f32_bound

WORDS = "apple river stone cloud piano garden rocket violet candle mirror forest ladder pepper silver tiger".split()

# One rank: a config.json-style file -> train(cfg, run_dir or None, stop_after or None). Rank 1 may run
# with its clock an hour ahead, so a run folder named by each rank's own clock would differ.
TRAIN = """
import sys, time
from tinyrm.recipe import load_run_config
from tinyrm.train import train
cfg_dir, run_dir, stop, skew = sys.argv[1], sys.argv[2] or None, int(sys.argv[3]) or None, sys.argv[4] == "skew"
if skew and int(__import__("os").environ.get("RANK", "0")) == 1:
    real = time.strftime
    time.strftime = lambda fmt, t=None: real(fmt, time.localtime(time.time() + 3600 if t is None else t))
train(load_run_config(cfg_dir), run_dir=run_dir, stop_after=stop)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list[str], world: int, timeout: float = 600) -> list[str]:
    """Run `python argv` as `world` ranks (world=1: no launcher variables at all); all must exit 0. A rank
    that fails takes the others down, as torchrun does. Returns each rank's output."""
    port, procs = _free_port(), []
    for r in range(world):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        if world > 1:
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r), WORLD_SIZE=str(world),
                       LOCAL_RANK=str(r), LOCAL_WORLD_SIZE=str(world))
        env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        procs.append(subprocess.Popen([sys.executable, *argv], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    end = time.time() + timeout
    while any(p.poll() is None for p in procs) and time.time() < end:
        if any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.kill()
    outs = [p.communicate()[0] for p in procs]
    for r, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {r} exited {p.returncode}:\n{out[-3000:]}"
    return outs


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, minilm_path):
    return write_tiny_bert(tmp_path_factory.mktemp("bert-tiny"), minilm_path, seed=0, layers=3)


def _data(tmp_path, n=60, seed=1) -> str:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        w, v = rng.sample(WORDS, 2)
        rows.append({"prompt": f"Repeat the word: {w}", "chosen": w, "rejected": v, "domain": "chat"})
    f = tmp_path / "d.jsonl"
    tmp_path.mkdir(parents=True, exist_ok=True)
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(f)


def _cfg(tmp_path, model, **kw) -> TrainConfig:
    """A tiny float32 run; batch_pairs = 3 gives the ranks unequal shares (2 and 1 pairs), and micro_tokens
    cuts the single process's step into more micro-batches than either rank's."""
    base = dict(model=str(model), data=[MixEntry(path=_data(tmp_path))], max_len=64, rank=4, alpha=8.0,
                targets=["query", "value", "dense"], freeze_layers=1, batch_pairs=3, micro_tokens=120, lr=1e-3,
                eval_every=2, save_every=100, val_frac=0.1, val_max_pairs=20, threads=1, amp="off",
                max_steps=4, eps=1e-4, runs_dir=str(tmp_path / "runs"), drop_rewardbench_overlap=False)
    base.update(kw)
    return TrainConfig(**base)


def _write_cfg(cfg: TrainConfig, folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg.to_dict()))
    return str(folder)


def _rows(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _only_run(runs: Path) -> Path:
    made = sorted(p for p in runs.iterdir() if p.is_dir())
    assert len(made) == 1, made                     # one run folder, named alike on both ranks
    assert (runs / "LATEST").read_text().strip() == made[0].name
    return made[0]


@pytest.mark.parametrize("kind", ["pairwise", "pointwise_length_expert"])
def test_two_processes_train_what_one_process_trains(tiny_bert, tmp_path, kind):
    """4 float32 steps on 2 ranks (each a fixed slice of every step's pairs, gradients summed) equal 1
    process with the same global batch up to float32 summation order; exactly one run folder is written."""
    kw = dict(mode="pointwise", length_expert=True) if kind != "pairwise" else {}
    one = train(_cfg(tmp_path / "one", tiny_bert, **kw), run_dir=tmp_path / "one" / "run")
    cfg2 = _cfg(tmp_path / "two", tiny_bert, **kw)
    launch(["-c", TRAIN, _write_cfg(cfg2, tmp_path / "two" / "cfg"), "", "0", "skew"], world=2)
    run2 = _only_run(tmp_path / "two" / "runs")
    summary = json.loads((run2 / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == one["steps"] == 4

    # the metrics rows hold every rank's pairs: the same loss and the same gradient norm per step. Float32
    # order alone moves a gradient sum over ~1e2 tokens by ~2e-5 relative (f32_bound, sides=2); a wrong
    # normalisation (a rank's own count instead of the step's: shares of 2 and 1 pairs) is >= 1/3 off
    r1, r2 = _rows(tmp_path / "one" / "run"), _rows(run2)
    assert [r["step"] for r in r1] == [r["step"] for r in r2] == [1, 2, 3, 4]
    for a, b in zip(r1, r2):
        assert a["tokens"] == b["tokens"]
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        if kind != "pairwise":
            assert b["length_beta_chat"] == pytest.approx(a["length_beta_chat"], abs=1e-6)

    w1 = load_file(tmp_path / "one" / "run" / "last" / "adapter.safetensors")
    w2 = load_file(run2 / "last" / "adapter.safetensors")
    assert w1.keys() == w2.keys() and len(w1) > 0
    assert max(float(w1[k].abs().max()) for k in w1 if "lora_B" in k) > 1e-4     # B starts at 0: it moved
    diff = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    assert diff <= adapter_bound(cfg2, r1, layers=3), diff


def adapter_bound(cfg: TrainConfig, rows: list[dict], layers: int) -> float:
    """How far two float32 runs of the same steps may drift apart when they sum the same terms in another
    order (other micro-batches, two partial sums). A gradient entry is a sum over the step's tokens through
    the backward's chain of layers: it differs by |Δg| <= λ·2·√(steps·n)·u·S (tests/tolerance.py, sides=2)
    with n the step's tokens and S the gradient's scale (its norm). AdamW's step lr·m̂/(√v̂+ε) moves by at
    most lr·|Δg|/ε when g moves by Δg, and the steps add up: Σ_t lr·|Δg_t|/ε. (With ε = 1e-6 an entry whose
    gradient cancels to ~0 -- pointwise: the shared head's gradient is r_chosen's minus r_rejected's -- would
    have Adam divide rounding by itself; one process cut into other micro-batches then already differs by
    5e-5, so these runs take ε = 1e-4.)"""
    dg = f32_bound(max(r["grad_norm"] for r in rows), n_terms=max(r["tokens"] for r in rows), steps=layers + 1,
                   sides=2)
    return len(rows) * cfg.lr * dg / cfg.eps


def test_two_process_resume_equals_the_uninterrupted_two_process_run(tiny_bert, tmp_path):
    """stop_after=3 then --resume on 2 ranks gives, bit for bit, the uninterrupted 2-rank run: each rank's
    RNG (adapter dropout is on) and the data position come back from trainer.pt."""
    cfg = _cfg(tmp_path, tiny_bert, max_steps=6, dropout=0.1, eval_every=3)
    c = _write_cfg(cfg, tmp_path / "cfg")
    launch(["-c", TRAIN, c, str(tmp_path / "full"), "0", ""], world=2)
    launch(["-c", TRAIN, c, str(tmp_path / "part"), "3", ""], world=2)
    st = torch.load(tmp_path / "part" / "last" / "trainer.pt", weights_only=True)
    assert st["step"] == 3 and len(st["rng_ranks"]) == 2
    assert not torch.equal(st["rng_ranks"][0]["torch"], st["rng_ranks"][1]["torch"])   # each rank its own
    launch(["-c", TRAIN, c, str(tmp_path / "part"), "0", ""], world=2)
    a = load_file(tmp_path / "full" / "last" / "adapter.safetensors")
    b = load_file(tmp_path / "part" / "last" / "adapter.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la, lb = _rows(tmp_path / "full"), _rows(tmp_path / "part")
    assert [r["loss"] for r in la] == [r["loss"] for r in lb] and len(la) == 6


def test_two_rank_checkpoint_resumes_in_one_process(tiny_bert, tmp_path):
    """A run stopped on 2 ranks continues in 1 process (the step number is the data position; rank 0's RNG
    state goes on) and ends where the uninterrupted 2-rank run ends, within the float32 bound."""
    cfg = _cfg(tmp_path, tiny_bert, max_steps=6, eval_every=3)
    c = _write_cfg(cfg, tmp_path / "cfg")
    launch(["-c", TRAIN, c, str(tmp_path / "full"), "0", ""], world=2)
    launch(["-c", TRAIN, c, str(tmp_path / "part"), "3", ""], world=2)
    train(cfg, run_dir=tmp_path / "part")
    rows = _rows(tmp_path / "part")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    a = load_file(tmp_path / "full" / "last" / "adapter.safetensors")
    b = load_file(tmp_path / "part" / "last" / "adapter.safetensors")
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff <= adapter_bound(cfg, rows, layers=3), diff


def _rewardbench_like(path: Path) -> Path:
    """Rows with the official split's per-subset counts (check_counts) and short texts, in a fixed order."""
    rng, rows = random.Random(3), []
    for subset, n in EXPECTED_COUNTS.items():
        for i in range(n):
            w, v = rng.sample(WORDS, 2)
            rows.append({"prompt": f"Repeat the word: {w}", "chosen": w, "rejected": f"{v} {w}"[: rng.randint(3, 12)],
                         "subset": subset, "id": i, "chosen_model": "a", "rejected_model": "b"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sharded_eval_writes_what_one_process_writes(tiny_bert, tmp_path):
    """`tinyrm eval` on 2 ranks: each scores rows[rank::2], rank 0 gathers them in input order and alone
    writes the JSON, identical to one process's apart from the timing."""
    data = _rewardbench_like(tmp_path / "rb.jsonl")
    outs = {}
    for world in (1, 2):
        out = tmp_path / f"w{world}" / "rewardbench.json"
        launch(["-m", "tinyrm.cli", "eval", "--model", str(tiny_bert), "--data", str(data), "--out", str(out)],
               world=world)
        outs[world] = json.loads(out.read_text())
        assert sorted(p.name for p in out.parent.iterdir() if p.suffix == ".json") == ["rewardbench.json"]
    for doc in outs.values():
        doc.pop("seconds")
    assert outs[1] == outs[2]
    assert outs[1]["pairs"] == sum(EXPECTED_COUNTS.values())


# The helpers on two ranks: uneven shares, a rank without gradients, gathering in input order.
HELPERS = """
import torch
from tinyrm import distributed as dp
assert dp.init(torch.device("cpu")).type == "cpu" and dp.world() == 2
r = dp.rank()
items = list(range(7))
assert dp.shard(items) == items[r::2] and dp.gather_in_order([x * 10 for x in dp.shard(items)], 7) == [x * 10 for x in items]
a, b, c = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
a.grad = torch.tensor([1.0, 2.0, 3.0]) * (r + 1)          # both ranks
if r == 0:
    b.grad = torch.tensor([0.5, 0.25, 4.0])                  # rank 0 only: rank 1 counts zeros
dp.sum_grads([a, b, c])
assert a.grad.tolist() == [3.0, 6.0, 9.0] and b.grad.tolist() == [0.5, 0.25, 4.0] and c.grad is None
d = dp.gather_cat([torch.tensor([1.0, 2.0])] if r == 0 else [], torch.device("cpu"))
assert d.tolist() == [1.0, 2.0] and dp.sum_int(r + 5) == 11
assert dp.broadcast_object(f"name-{r}") == "name-0"
try:
    dp.check_same(r, "a value")
    raise SystemExit("check_same did not raise")
except ValueError as e:
    assert "ranks disagree on a value (ranks [1] differ from rank 0)" in str(e)
print("ok", r)
"""


def test_helpers_on_two_ranks():
    outs = launch(["-c", HELPERS], world=2, timeout=120)
    assert "ok 0" in outs[0] and "ok 1" in outs[1]


def test_no_launcher_no_process_group(monkeypatch):
    """Without the launcher's variables (or with WORLD_SIZE=1) nothing joins a group: one process as ever."""
    from tinyrm import distributed as dp

    monkeypatch.delenv("RANK", raising=False)
    assert not dp.launched() and dp.init(torch.device("cpu")) == torch.device("cpu")
    assert not torch.distributed.is_initialized() and dp.world() == 1 and dp.rank() == 0
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    assert not dp.launched() and dp.init(torch.device("cpu")) == torch.device("cpu") and dp.is_main_process()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert dp.launched() and not dp.is_main_process()      # rank 1 of a launcher, before any group exists
    assert dp.shard([1, 2, 3]) == [1, 2, 3] and dp.unshard([[1, 3], [2]], 3) == [1, 2, 3]
