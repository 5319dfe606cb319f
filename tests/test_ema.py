"""The weight averages (ema.py): each recurrence in float64 by hand, the swap, and exact resume with them."""
import json

import pytest
import torch
from safetensors.torch import load_file

from tinyrm.adapters import load_adapter
from tinyrm.ema import Ema
from tinyrm.train import train
from test_train import _cfg, _write, full_and_resumed_agree, repeat_task, tiny_bert  # noqa: F401  (tiny_bert: the fixture)


def test_average_follows_the_recurrence():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    lin.bias.requires_grad_(False)                          # only trainable tensors are averaged
    ema = Ema.of(lin, 0.9)
    assert set(ema.avg) == {"weight"}
    ref = lin.weight.detach().double().clone()
    for t in range(25):
        with torch.no_grad():
            lin.weight.add_(torch.randn_like(lin.weight))
        ema.update()
        d = min(0.9, (1 + t) / (10 + t))                     # the warm-up of the decay, then the decay
        ref = d * ref + (1 - d) * lin.weight.detach().double()
    # 25 float32 multiply-adds of O(1) values: a few ulps each
    assert torch.allclose(ema.avg["weight"].double(), ref, rtol=0, atol=25 * 4 * 2 ** -24 * ref.abs().max().item())


def test_tail_average_is_the_plain_mean_of_the_steps_from_start():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    swa = Ema.tail(lin, 4)
    seen = []
    for t in range(12):
        with torch.no_grad():
            lin.weight.add_(torch.randn_like(lin.weight))
            lin.bias.add_(torch.randn_like(lin.bias))
        swa.update()
        seen.append({n: p.detach().double().clone() for n, p in lin.named_parameters()})
        # up to and including its first averaged step (update 4), the average is exactly the live weights
        assert swa.is_live == (t <= 4)
        if t <= 4:
            assert all(torch.equal(swa.avg[n], p) for n, p in lin.named_parameters())
    for n in ("weight", "bias"):
        ref = torch.stack([s[n] for s in seen[4:]]).mean(0)     # the mean of updates 4..11, in float64
        # 8 running-mean float32 updates of O(1) values: a few ulps each
        tol = 8 * 4 * 2 ** -24 * max(1.0, ref.abs().max().item())
        assert torch.allclose(swa.avg[n].double(), ref, rtol=0, atol=tol)
        assert not torch.allclose(swa.avg[n].double(), seen[-1][n], rtol=0, atol=1e-3)
    with pytest.raises(ValueError):
        Ema.tail(lin, -1)


def test_swapped_puts_the_average_in_and_the_live_weights_back():
    lin = torch.nn.Linear(4, 4)
    ema = Ema.of(lin, 0.5)
    with torch.no_grad():
        lin.weight.mul_(3)
    ema.update()
    live = {n: p.detach().clone() for n, p in lin.named_parameters()}
    with ema.swapped():
        assert torch.equal(lin.weight, ema.avg["weight"]) and not torch.equal(lin.weight, live["weight"])
    assert all(torch.equal(p, live[n]) for n, p in lin.named_parameters())
    with pytest.raises(RuntimeError):
        with ema.swapped():
            raise RuntimeError("validation failed")
    assert all(torch.equal(p, live[n]) for n, p in lin.named_parameters())
    with pytest.raises(ValueError):
        Ema.of(lin, 1.0)


def test_run_with_average_resumes_exactly_and_keeps_the_average(tiny_bert, tmp_path):
    data = _write(tmp_path / "d.jsonl", repeat_task(60, 1))
    kw = dict(max_steps=8, ema=0.8, ema_compare=True, eval_every=8, save_every=2, lr=3e-3)
    full_and_resumed_agree(tmp_path, tiny_bert, data, kw, stop_after=3)
    # the average never touches training: the live weights equal those of a run without it
    train(_cfg(tmp_path, tiny_bert, data, **{**kw, "ema": 0.0, "ema_compare": False}), run_dir=tmp_path / "plain")
    live = load_file(tmp_path / "full" / "last" / "adapter.safetensors")
    plain = load_file(tmp_path / "plain" / "last" / "adapter.safetensors")
    assert all(torch.equal(live[k], plain[k]) for k in live)
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "live_val_score" in r] == [0, 8]


def test_run_with_tail_average_resumes_exactly(tiny_bert, tmp_path):
    """swa_from 0.5 of 8 steps averages steps 5-8: a run stopped inside the tail resumes to the same bits;
    at step 4 (before the tail) the live record is the average's own, not a second validation."""
    from tinyrm.recipe import RecipeError
    data = _write(tmp_path / "d.jsonl", repeat_task(60, 1))
    kw = dict(max_steps=8, swa_from=0.5, ema_compare=True, eval_every=4, save_every=2, lr=3e-3,
              eval_untrained=False)
    full_and_resumed_agree(tmp_path, tiny_bert, data, kw, stop_after=6)
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r for r in rows if "live_val_score" in r}
    assert sorted(val) == [4, 8] and val[4]["live_val_score"] == val[4]["val_score"]
    with pytest.raises(RecipeError, match="ema and swa_from"):
        train(_cfg(tmp_path, tiny_bert, data, **{**kw, "ema": 0.9}), run_dir=tmp_path / "both")


def test_best_is_written_from_the_average(tiny_bert, tmp_path):
    """validate_and_keep validates the average and writes it to best/; the live weights come back after."""
    from tinyrm.train import loop, setup, validate_and_keep
    data = _write(tmp_path / "d.jsonl", repeat_task(60, 1))
    run = setup(_cfg(tmp_path, tiny_bert, data, max_steps=6, ema=0.5, eval_every=100, lr=1e-2), tmp_path / "r")
    loop(run)
    live = {n: p.detach().clone() for n, p in run.enc.named_parameters() if p.requires_grad}
    assert any(not torch.equal(live[n], run.ema.avg[n]) for n in live)
    validate_and_keep(run, 6)
    assert all(torch.equal(p, live[n]) for n, p in run.enc.named_parameters() if p.requires_grad)
    load_adapter(run.enc, tmp_path / "r" / "best" / "adapter.safetensors")    # what best/ holds
    assert all(torch.equal(p, run.ema.avg[n]) for n, p in run.enc.named_parameters() if p.requires_grad)
